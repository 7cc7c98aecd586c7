"""The study's optimizer: same updates as the plain optax recipe, lr/wd as state, one program."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vpt_jax.models.vit import ViTConfig, init_params
from vpt_jax.train.optimizer import make_optimizer, schedule
from vpt_jax.train.step import TrainState, train_step
from vpt_jax.tuning.rules import label_tree, masked_optimizer
from vpt_jax.tuning.strategies import get_strategy

CONFIG = ViTConfig(
    patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, image_size=8
)


def _setup(strategy_name: str):
    strategy = get_strategy(strategy_name, num_prompts=2)
    model = strategy.build_model(CONFIG, 3)
    params = init_params(model, 0)
    return strategy, model, params, label_tree(params, strategy.rules)


def _batch():
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32),
        "label": jnp.arange(4) % 3,
    }


def _step(model, labels, tx, strategy):
    return jax.jit(
        functools.partial(
            train_step,
            apply_fn=model.apply,
            tx=tx,
            labels=labels,
            backbone_train=strategy.backbone_dropout,
        )
    )


@pytest.mark.parametrize("strategy_name, opt", [("vpt_deep", "sgd"), ("full", "adamw")])
def test_updates_match_the_plain_optax_recipe_with_a_schedule(strategy_name, opt):
    strategy, model, params, labels = _setup(strategy_name)
    peak, wd, warmup, total = 0.3, 1e-3, 2, 6
    ours = make_optimizer(
        labels, name=opt, lr=peak, weight_decay=wd, schedule_shape=schedule(1.0, warmup, total)
    )
    if opt == "sgd":
        make = lambda rate, w: optax.chain(
            optax.add_decayed_weights(w), optax.sgd(rate, momentum=0.9)
        )
    else:
        make = lambda rate, w: optax.adamw(rate, weight_decay=w)
    plain = masked_optimizer(labels, make, schedule(peak, warmup, total), wd)
    states = {}
    for name, tx in (("ours", ours), ("plain", plain)):
        state, step = (
            TrainState.create(params, tx, jax.random.key(0)),
            _step(model, labels, tx, strategy),
        )
        for _ in range(5):  # through the warmup and into the cosine decay
            state, _ = step(state, _batch())
        states[name] = state.params
    for a, b in zip(
        jax.tree_util.tree_leaves(states["ours"]),
        jax.tree_util.tree_leaves(states["plain"]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_runs_that_differ_in_lr_and_weight_decay_compile_to_one_program():
    strategy, model, params, labels = _setup("vpt_deep")
    texts = set()
    for lr, wd in ((0.1, 0.0), (25.0, 1e-4)):
        tx = make_optimizer(
            labels, name="sgd", lr=lr, weight_decay=wd, schedule_shape=schedule(1.0, 2, 10)
        )
        state = TrainState.create(params, tx, jax.random.key(0))
        texts.add(_step(model, labels, tx, strategy).lower(state, _batch()).as_text())
    assert len(texts) == 1  # identical programs: XLA's persistent cache serves the second run
