"""Tuning strategies as data: a rule table plus the additions it trains.

A `Strategy` says which parameters train (its rule table, see `rules.py`), what it adds to the
backbone (`vpt_jax.models.additions`: prompts, LoRA factors, an MLP head), whether the backbone's
dropout runs while training, the optimizer and hyperparameter grid the paper used for it, and, for
two-stage methods, its stages. Rule tables name parameters through the backbone family's
`ParamLayout` (the head, the blocks, the final norm, the additions' paths), never through a
family's module names. Neither the model, the trainer nor the study branches on strategy names:
they read these fields. `get_strategy(name, ...)` builds the study's strategies; `Strategy(...)`
with a custom rule table (e.g. from a config) adds a new one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from vpt_jax.errors import UserError
from vpt_jax.models.additions import Addition, LoRA, MLPHead, Prompts
from vpt_jax.models.family import VIT_LAYOUT, ParamLayout, family_of
from vpt_jax.tuning.rules import DECAY, FROZEN, NO_DECAY, Rule, Rules, check_rules

FINETUNE_GRID, PROMPT_GRID = "finetune", "prompt"  # the study's grids (study.grids.<name>)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What trains, what the model gains for it, and how the paper tuned it."""

    name: str
    rules: Rules  # (regex, label) pairs, first full match wins; labels frozen/decay/no_decay
    additions: tuple[Addition, ...] = ()  # what it attaches to the backbone
    layout: ParamLayout = VIT_LAYOUT  # the family layout its rules and additions' paths refer to
    # False: the backbone runs deterministic while training. As the VPT code: only finetuning
    # (end2end) runs its dropout; every method with a frozen or partly frozen encoder, and the
    # prompt methods (Mixed too), run it in eval mode.
    backbone_dropout: bool = True
    optimizer: str = "sgd"  # the paper's optimizer for it: sgd (momentum 0.9) or adamw
    grid: str = PROMPT_GRID  # the lr x wd grid the paper searched for it: prompt or finetune
    stages: tuple[Strategy, ...] = ()  # run in order (each starting from the last); () = itself

    def __post_init__(self):
        # What the family never trains comes first, whatever the strategy (MoCo v3's position
        # embedding stays frozen even when finetuning, as in the official code).
        pinned = tuple((pattern, FROZEN) for pattern in self.layout.frozen)
        if pinned and self.rules[: len(pinned)] != pinned:
            object.__setattr__(self, "rules", (*pinned, *self.rules))
        check_rules(self.rules)

    def build_model(self, config: Any, num_classes: int | None):
        """The model this strategy trains: the backbone of `config` with its additions."""
        family = family_of(config)
        if family.layout_of(config) != self.layout:
            raise UserError(
                f"strategy {self.name!r} was built for another backbone family than {family.name}"
            )
        return family.build_model(config, num_classes, self.additions)

    @property
    def final(self) -> Strategy:
        """The strategy whose model and parameters a run ends with."""
        return self.stages[-1] if self.stages else self

    def owned(self, addition: Addition) -> str:
        """The full-path regex of an addition's leaves in this strategy's backbone."""
        return self.layout.owned(addition)

    def stage_keys(self, stage: Strategy, keys: list[str]) -> list[str]:
        """The parameter paths (of this strategy's final model) that `stage`'s model has.

        An earlier stage may lack additions of the final model (FT before the prompts).
        """
        absent = [self.owned(a) for a in self.final.additions if a not in stage.additions]
        return [k for k in keys if not any(re.fullmatch(p, k) for p in absent)]


def head_rules(layout: ParamLayout) -> tuple[Rule, ...]:
    """The classifier trains; its bias without weight decay (torch SGD in the VPT code)."""
    head = re.escape(layout.head)
    return ((rf"{head}/kernel", DECAY), (rf"{head}/bias", NO_DECAY))


def _biases_undecayed(pattern: str) -> tuple[Rule, Rule]:
    """The leaves of a `<scope>/.*` pattern train, its biases without weight decay."""
    return ((pattern + "bias", NO_DECAY), (pattern, DECAY))


def _need_prompts(name: str, num_prompts: int) -> None:
    if num_prompts < 1:
        raise UserError(
            f"strategy {name!r} needs a prompt length >= 1 (got {num_prompts}); set num_prompts"
        )


def full(layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """FT: every parameter trains (AdamW; biases without weight decay, as the VPT code does)."""
    return Strategy(
        "full",
        ((r".*bias", NO_DECAY), (r".*", DECAY)),
        layout=layout,
        optimizer="adamw",
        grid=FINETUNE_GRID,
    )


def linear(layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """Linear probe: the head only, on frozen features (the backbone runs deterministic)."""
    return Strategy(
        "linear", (*head_rules(layout), (r".*", FROZEN)), layout=layout, backbone_dropout=False
    )


def mlp(hidden: tuple[int, ...] = (768, 768), layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """MLP probe: a (len(hidden)+1)-layer MLP head on frozen features."""
    head = MLPHead(tuple(hidden))
    return Strategy(
        f"mlp{len(hidden) + 1}",
        (*_biases_undecayed(layout.owned(head)), *head_rules(layout), (r".*", FROZEN)),
        additions=(head,),
        layout=layout,
        backbone_dropout=False,
    )


def vpt(
    num_prompts: int,
    *,
    deep: bool,
    prompt_dropout: float = 0.0,
    prompt_dim: int | None = None,
    layout: ParamLayout = VIT_LAYOUT,
) -> Strategy:
    """VPT: prompts and head train, the backbone is frozen and runs deterministic."""
    name = "vpt_deep" if deep else "vpt_shallow"
    _need_prompts(name, num_prompts)
    prompts = Prompts(num_prompts, deep=deep, dropout=prompt_dropout, dim=prompt_dim)
    return Strategy(
        name,
        ((layout.owned(prompts), DECAY), *head_rules(layout), (r".*", FROZEN)),
        additions=(prompts,),
        layout=layout,
        backbone_dropout=False,
    )


def mixed(
    num_prompts: int,
    *,
    deep: bool = True,
    prompt_dropout: float = 0.0,
    layout: ParamLayout = VIT_LAYOUT,
) -> Strategy:
    """Mixed: prompts and the whole backbone train together (SGD, backbone dropout off)."""
    _need_prompts("mixed", num_prompts)
    head_bias = head_rules(layout)[1]
    return Strategy(
        "mixed",
        (head_bias, (r".*", DECAY)),
        additions=(Prompts(num_prompts, deep=deep, dropout=prompt_dropout),),
        layout=layout,
        backbone_dropout=False,
    )


def ft_then_pt(
    num_prompts: int, *, prompt_dropout: float = 0.0, layout: ParamLayout = VIT_LAYOUT
) -> Strategy:
    """FT-then-PT: stage 1 finetunes everything, stage 2 freezes that backbone and prompt-tunes.

    Stage 1 is the `full` strategy: a study gives it the setting selected for `full`.
    """
    stage2 = vpt(num_prompts, deep=True, prompt_dropout=prompt_dropout, layout=layout)
    return dataclasses.replace(stage2, name="ft_then_pt", stages=(full(layout), stage2))


def partial(k: int, num_layers: int, layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """Partial-k: the last k blocks, the final norm and the head train."""
    if not 1 <= k <= num_layers:
        raise UserError(f"strategy 'partial' needs 1 <= k <= {num_layers} (the depth); got k={k}")
    blocks = layout.blocks(range(num_layers - k, num_layers))
    tuned = rf"({blocks}|{re.escape(layout.final_norm)})/.*"
    return Strategy(
        f"partial{k}",
        (*_biases_undecayed(tuned), *head_rules(layout), (r".*", FROZEN)),
        layout=layout,
        backbone_dropout=False,  # the VPT code runs a partly frozen encoder in eval mode
    )


def bias(layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """Bias tuning (TinyTL-bias): every bias and the head train."""
    return Strategy(
        "bias",
        (*head_rules(layout), (r".*/bias", DECAY), (r".*", FROZEN)),
        layout=layout,
        backbone_dropout=False,  # the VPT code runs a frozen encoder in eval mode
    )


def lora(rank: int, alpha: float | None = None, layout: ParamLayout = VIT_LAYOUT) -> Strategy:
    """LoRA: rank-r updates on attention query and value, and the head."""
    if rank < 1:
        raise UserError(f"strategy 'lora' needs a rank >= 1; got {rank}")
    update = LoRA(rank, float(rank if alpha is None else alpha))
    return Strategy(
        "lora",
        ((layout.owned(update), DECAY), *head_rules(layout), (r".*", FROZEN)),
        additions=(update,),
        layout=layout,
        backbone_dropout=False,
    )


STRATEGIES = (
    "full",
    "linear",
    "mlp",
    "vpt_shallow",
    "vpt_deep",
    "mixed",
    "ft_then_pt",
    "partial",
    "bias",
    "lora",
)


def get_strategy(
    name: str,
    *,
    num_prompts: int = 10,
    prompt_dropout: float = 0.0,
    prompt_dim: int | None = None,
    partial_k: int = 1,
    num_layers: int = 12,
    mlp_hidden: tuple[int, ...] = (768, 768),
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    layout: ParamLayout = VIT_LAYOUT,
) -> Strategy:
    """Builds a named strategy of the study.

    Args:
      name: one of `STRATEGIES`.
      num_prompts: prompt length p (VPT, mixed, ft_then_pt).
      prompt_dropout: dropout on prompt tokens.
      prompt_dim: prompt width before a projection (VPT); None: no projection.
      partial_k: blocks trained by `partial`.
      num_layers: the model's depth (for `partial`).
      mlp_hidden: hidden widths of the `mlp` head.
      lora_rank: rank r of `lora`.
      lora_alpha: LoRA scale numerator (default: the rank, i.e. scale 1).
      layout: the backbone family's parameter layout (default: the ViT's).
    """
    prompts = dict(prompt_dropout=prompt_dropout, layout=layout)
    builders: dict[str, Callable[[], Strategy]] = {
        "full": lambda: full(layout),
        "linear": lambda: linear(layout),
        "mlp": lambda: mlp(tuple(mlp_hidden), layout),
        "vpt_shallow": lambda: vpt(num_prompts, deep=False, prompt_dim=prompt_dim, **prompts),
        "vpt_deep": lambda: vpt(num_prompts, deep=True, prompt_dim=prompt_dim, **prompts),
        "mixed": lambda: mixed(num_prompts, **prompts),
        "ft_then_pt": lambda: ft_then_pt(num_prompts, **prompts),
        "partial": lambda: partial(partial_k, num_layers, layout),
        "bias": lambda: bias(layout),
        "lora": lambda: lora(lora_rank, lora_alpha, layout),
    }
    if name not in builders:
        raise UserError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}")
    return builders[name]()
