"""Strategies as rule tables: what trains, what stays bit-identical, optimizer state, dropout rules."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models.additions import Prompts
from vpt_jax.models.vit import init_params
from vpt_jax.train.step import TrainState, train_step
from vpt_jax.tuning.budget import count
from vpt_jax.tuning.rules import (
    FROZEN,
    RuleError,
    label_paths,
    label_tree,
    masked_optimizer,
    split,
)
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy

KW = dict(num_prompts=2, num_layers=2, partial_k=1, mlp_hidden=(16,), lora_rank=2)


def sgd(lr, wd):
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))


def adamw(lr, wd):
    return optax.adamw(lr, weight_decay=wd)


def setup(strategy: Strategy, config, lr=0.05, wd=1e-4, seed=0):
    model = strategy.final.build_model(config, 4)
    params = init_params(model, seed)
    labels = label_tree(params, strategy.final.rules)
    make = adamw if strategy.final.optimizer == "adamw" else sgd
    tx = masked_optimizer(labels, make, lr, wd)
    step = jax.jit(
        functools.partial(
            train_step,
            apply_fn=model.apply,
            tx=tx,
            labels=labels,
            backbone_train=strategy.final.backbone_dropout,
        )
    )
    return model, params, labels, tx, step


def batch(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, 16, 16, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 4, n), jnp.int32),
    }


@pytest.mark.parametrize("name", STRATEGIES)
def test_frozen_leaves_identical_trainable_leaves_get_gradients(name, tiny_config):
    strategy = get_strategy(name, **KW)
    config = dataclasses.replace(tiny_config, dropout_rate=0.1)
    model, params, labels, tx, step = setup(strategy, config)
    state = TrainState.create(params, tx, jax.random.key(0))
    for i in range(4):
        state, metrics = step(state, batch(i))
        assert np.isfinite(float(metrics["loss"]))
    before, after = paths.flatten(params), paths.flatten(state.params)
    flat_labels = paths.flatten(labels)
    trainable = [k for k, v in flat_labels.items() if v != FROZEN]
    assert trainable, name
    for key, label in flat_labels.items():
        if label == FROZEN:
            np.testing.assert_array_equal(before[key], after[key], err_msg=f"{name}: {key} moved")
        else:
            assert not np.array_equal(before[key], after[key]), f"{name}: {key} did not train"

    # Every trainable leaf has a non-zero gradient at the trained state.
    train_part, frozen_part = split(state.params, labels)

    def loss(t):
        logits, _ = model.apply({"params": {**_merge(t, frozen_part)}}, batch(9)["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch(9)["label"]).mean()

    grads = paths.flatten(jax.grad(loss)(train_part))
    assert sorted(grads) == sorted(trainable)
    for key, g in grads.items():
        assert float(jnp.max(jnp.abs(g))) > 0, f"{name}: zero gradient for {key}"

    # Optimizer state holds arrays for trainable leaves only (momentum: 1 per leaf; AdamW: 2).
    moments = 2 if strategy.final.optimizer == "adamw" else 1
    state_size = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0)
    assert state_size == moments * count(train_part)


def _merge(a, b):
    from vpt_jax.tuning.rules import merge

    return merge(a, b)


def test_weight_decay_applies_exactly_to_decay_leaves():
    params = {"w": jnp.ones(3), "b": jnp.ones(2), "f": jnp.ones(4)}
    labels = label_tree(params, [("w", "decay"), ("b", "no_decay"), ("f", "frozen")])
    tx = masked_optimizer(
        labels, lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr)), 0.5, 0.1
    )
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05)
    np.testing.assert_array_equal(updates["b"], 0)
    np.testing.assert_array_equal(updates["f"], 0)


def test_vpt_prompts_are_decayed_and_head_bias_is_not(tiny_config):
    strategy = get_strategy("vpt_deep", num_prompts=2)
    params = init_params(strategy.build_model(tiny_config, 3), 0)
    labels = paths.flatten(label_tree(params, strategy.rules))
    assert labels["Transformer/prompt/embeddings"] == "decay"
    assert labels["head/kernel"] == "decay" and labels["head/bias"] == "no_decay"
    assert labels["Transformer/encoderblock_0/LayerNorm_0/scale"] == "frozen"


def test_rule_errors_name_the_leaf_or_rule():
    keys = ["a/kernel", "a/bias", "b/kernel"]
    with pytest.raises(RuleError, match=r"parameter 'b/kernel' matches no rule"):
        label_paths(keys, [("a/.*", "decay")])
    with pytest.raises(RuleError, match=r"rule 'c/.*' matches no parameter"):
        label_paths(keys, [("a/.*", "decay"), ("c/.*", "decay"), (".*", "frozen")])
    with pytest.raises(RuleError, match=r"rule 'a/.\*' has label 'train'; use one of frozen"):
        label_paths(keys, [("a/.*", "train")])
    with pytest.raises(RuleError, match="not a valid regex"):
        label_paths(keys, [("a/(", "decay")])
    # Partial matches do not count: 'a' does not fully match 'a/kernel'.
    with pytest.raises(RuleError, match="rule 'a' matches no parameter"):
        label_paths(keys, [("a/bias", "no_decay"), ("a", "decay"), (".*", "frozen")])
    # First full match wins.
    assert label_paths(keys, [("a/bias", "no_decay"), ("a/.*", "decay"), (".*", "frozen")]) == {
        "a/kernel": "decay",
        "a/bias": "no_decay",
        "b/kernel": "frozen",
    }


def test_a_user_strategy_is_just_a_rule_table(tiny_config):
    # Train only the LayerNorms and the head: no change to the model or the trainer.
    layernorms = Strategy(
        "layernorm",
        (
            (r".*LayerNorm_\d/.*|Transformer/encoder_norm/.*", "no_decay"),
            (r"head/.*", "decay"),
            (r".*", "frozen"),
        ),
    )
    model, params, labels, tx, step = setup(layernorms, tiny_config)
    state, _ = step(TrainState.create(params, tx, jax.random.key(0)), batch())
    state, _ = step(state, batch(1))
    flat = paths.flatten(labels)
    assert sum(v != "frozen" for v in flat.values()) == 2 * 2 * 2 + 2 + 2


def test_unknown_strategy_and_bad_arguments():
    with pytest.raises(UserError, match=r"unknown strategy 'vpt'; use one of: full, linear"):
        get_strategy("vpt")
    with pytest.raises(UserError, match="needs a prompt length >= 1"):
        get_strategy("vpt_deep", num_prompts=0)
    with pytest.raises(UserError, match=r"1 <= k <= 12"):
        get_strategy("partial", partial_k=13)


def test_ft_then_pt_has_two_stages(tiny_config):
    strategy = get_strategy("ft_then_pt", num_prompts=2)
    assert [s.name for s in strategy.stages] == ["full", "vpt_deep"]
    assert strategy.final.additions == (Prompts(2, deep=True),)
    assert not strategy.final.backbone_dropout
    assert strategy.stages[0].backbone_dropout


@pytest.mark.parametrize("name", STRATEGIES)
def test_dropout_rules_hold_in_every_strategy(name, tiny_config):
    strategy = get_strategy(name, **KW).final
    config = dataclasses.replace(tiny_config, dropout_rate=0.3)
    model = strategy.build_model(config, 4)
    params = init_params(model, 0)
    images = batch()["image"]
    det = model.apply({"params": params}, images)[1]["pre_logits"]
    trained = model.apply(
        {"params": params},
        images,
        train=True,
        backbone_train=strategy.backbone_dropout,
        rngs={"dropout": jax.random.key(1)},
    )[1]["pre_logits"]
    # Frozen-backbone strategies run the backbone deterministic; FT-like ones use its dropout.
    assert np.array_equal(det, trained) == (not strategy.backbone_dropout), name


def test_vpt_step_skips_weight_gradients(tiny_config):
    """At the same token count, the VPT step costs clearly fewer FLOPs than the FT step."""
    config = dataclasses.replace(tiny_config, num_layers=4)
    flops = {}
    for name in ("mixed", "vpt_deep"):  # both have 2 prompts per block; mixed trains everything
        strategy = get_strategy(name, num_prompts=2)
        model, params, labels, tx, step = setup(strategy, config)
        state = TrainState.create(params, tx, jax.random.key(0))
        compiled = step.lower(state, batch(n=8)).compile()
        flops[name] = compiled.cost_analysis()["flops"]
    assert flops["vpt_deep"] < 0.8 * flops["mixed"], flops
