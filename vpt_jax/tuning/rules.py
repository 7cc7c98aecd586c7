"""Rule tables: `(regex, label)` pairs over `/`-joined parameter paths decide what trains.

Each leaf takes the label of the first rule whose regex fully matches its path (`re.fullmatch`); a
leaf no rule matches is an error naming it, and so is a rule that matches no leaf (a typo guard).
Labels: `frozen` (no update, no optimizer state, no gradient computed), `decay` (trained with weight
decay) and `no_decay` (trained without it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import optax

from vpt_jax import paths
from vpt_jax.errors import UserError

FROZEN, DECAY, NO_DECAY = "frozen", "decay", "no_decay"
LABELS = (FROZEN, DECAY, NO_DECAY)
Rule = tuple[str, str]  # (regex, label)
Rules = Sequence[Rule]


class RuleError(UserError):
    """A rule table that does not label every parameter exactly once."""


def check_rules(rules: Rules) -> None:
    """Validates labels and regexes of a rule table before it meets a parameter tree."""
    if not rules:
        raise RuleError("a strategy needs at least one (regex, label) rule")
    for rule in rules:
        if len(rule) != 2:
            raise RuleError(f"rule {rule!r} is not a (regex, label) pair")
        pattern, label = rule
        if label not in LABELS:
            raise RuleError(f"rule {pattern!r} has label {label!r}; use one of {', '.join(LABELS)}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise RuleError(f"rule {pattern!r} is not a valid regex: {e}") from None


def label_paths(keys: Sequence[str], rules: Rules) -> dict[str, str]:
    """Labels flat parameter paths by the first fully matching rule."""
    check_rules(rules)
    compiled = [(re.compile(p), p, label) for p, label in rules]
    labels: dict[str, str] = {}
    used: set[str] = set()
    for key in keys:
        for regex, pattern, label in compiled:
            if regex.fullmatch(key):
                labels[key] = label
                used.add(pattern)
                break
        else:
            raise RuleError(
                f"parameter {key!r} matches no rule; add a rule for it (a final ('.*', 'frozen') "
                "freezes everything not named before)"
            )
    unused = [p for _, p, _ in compiled if p not in used]
    if unused:
        raise RuleError(
            f"rule {unused[0]!r} matches no parameter (or only ones an earlier rule took); "
            "check its spelling against the parameter paths"
        )
    return labels


def label_tree(params: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """A tree of labels with the structure of `params`, for `optax.multi_transform`."""
    return paths.unflatten(label_paths(list(paths.flatten(params)), rules))


def split(params: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[dict, dict]:
    """Splits `params` into `(trainable, frozen)` nested dicts by a label tree."""
    flat, flat_labels = paths.flatten(params), paths.flatten(labels)
    trainable = {k: v for k, v in flat.items() if flat_labels[k] != FROZEN}
    frozen = {k: v for k, v in flat.items() if flat_labels[k] == FROZEN}
    return paths.unflatten(trainable), paths.unflatten(frozen)


def merge(*trees: Mapping[str, Any]) -> dict[str, Any]:
    """Merges disjoint nested dicts (the inverse of `split`)."""
    flat: dict[str, Any] = {}
    for tree in trees:
        flat.update(paths.flatten(tree))
    return paths.unflatten(flat)


def masked_optimizer(
    labels: Mapping[str, Any],
    make: Any,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float,
) -> optax.GradientTransformation:
    """One optimizer over the whole tree: `multi_transform` by label, frozen leaves set to zero.

    Args:
      labels: the label tree (from `label_tree`).
      make: `make(learning_rate, weight_decay) -> GradientTransformation` for the trained leaves.
      learning_rate: a float or an optax schedule.
      weight_decay: applied to `decay` leaves; `no_decay` leaves get 0.

    Returns:
      A transformation whose state holds arrays only for trainable leaves.
    """
    transforms = {
        FROZEN: optax.set_to_zero(),
        DECAY: make(learning_rate, weight_decay),
        NO_DECAY: make(learning_rate, 0.0),
    }
    return optax.multi_transform(transforms, labels)


def vpt_decay_labels(labels: Mapping[str, Any], optimizer: str, head: str) -> dict[str, Any]:
    """The official VPT code's weight-decay sets over a label tree's trained leaves.

    Its `make_optimizer` decides by parameter name, whatever the method: with SGD every trained
    leaf decays except the head's bias (`last_layer.bias`); with AdamW every trained leaf whose
    name lacks `bias` (its `LayerNorm.*` exclusions match no name of its ViT, whose norms are
    `attention_norm`, `ffn_norm`, `encoder_norm`). Frozen leaves stay frozen.

    Args:
      labels: a label tree (`label_tree`).
      optimizer: `sgd` or `adamw`.
      head: the classifier's scope in the tree (the family layout's `head`).
    """
    head_bias = f"{head}/bias"

    def official(path: str) -> str:
        if optimizer == "sgd":
            return NO_DECAY if path == head_bias else DECAY
        return NO_DECAY if "bias" in path else DECAY

    flat = paths.flatten(labels)
    return paths.unflatten({k: v if v == FROZEN else official(k) for k, v in flat.items()})
