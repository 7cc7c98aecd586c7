"""The compiled steps of runs trained together (`vpt_jax.train.grid`), and how many fit.

The members' trainable leaves, optimizer states, step counters and keys are stacked on a leading
axis (`GridState`); the frozen part of the tree is one copy. Each step is `jax.vmap` of the
single-run step (`step.indices_step`, `step.eval_sums`), so a member computes exactly what its
single run computes, batched with the others.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax
import jax
import numpy as np

from vpt_jax.models.additions import Prompts
from vpt_jax.train import step
from vpt_jax.train.setup import RunSetup
from vpt_jax.tuning.rules import merge, split

MEMORY_FRACTION = 0.6  # of the device's memory a chunk of members may use


def members_that_fit(setup: RunSetup, params, labels, batch_size: int, mesh) -> int:
    """How many members' state and activations fit in `MEMORY_FRACTION` of a device's memory
    (an estimate: trainable leaves with gradients and two optimizer slots, and a backward pass's
    activations at the run's batch and token count; the frozen part is held once)."""
    device = mesh.devices.flat[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        budget = stats["bytes_limit"] * MEMORY_FRACTION
    else:  # CPU: host memory
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_FRACTION / 2
    trainable, frozen = split(params, labels)
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
    backbone = setup.backbone
    prompts = sum(a.count for a in setup.strategy.additions if isinstance(a, Prompts))
    width = 2 if backbone.precision == "bf16" else 4
    per_device_batch = -(-batch_size // mesh.size)
    activations = per_device_batch * activation_elements(backbone, prompts) * width
    per_member = 4 * nbytes(trainable) + activations
    return max(1, int((budget - nbytes(frozen)) // per_member))


def activation_elements(backbone, prompts: int) -> int:
    """Activations one example keeps for the backward pass (an estimate per block: 14 widths per
    token, and two attention maps per head over the tokens each token attends to)."""
    if isinstance(backbone.num_heads, tuple):  # Swin: stages of windowed attention
        total, side = 0, backbone.image_size // backbone.patch_size
        for stage, (depth, heads) in enumerate(
            zip(backbone.depths, backbone.num_heads, strict=True)
        ):
            grid = side >> stage
            window = min(backbone.window_size, grid) ** 2 + prompts
            tokens = grid * grid + prompts
            width = backbone.embed_dim * 2**stage
            total += depth * tokens * (14 * width + 2 * heads * window)
        return total
    tokens = backbone.num_patches + 1 + prompts
    per_token = 14 * backbone.hidden_size + 2 * backbone.num_heads * tokens
    return tokens * per_token * backbone.num_layers


@flax.struct.dataclass
class GridState:
    """Members' `TrainState`s without their frozen leaves, stacked on a leading member axis."""

    step: jax.Array
    trainable: Any
    opt_state: Any
    rng: jax.Array


def stack(trees: list[Any]) -> Any:
    """Trees stacked leaf by leaf on a new leading axis, on the host (no compilation per shape)."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def member(host_tree: Any, i: int) -> Any:
    """Member `i` of a stacked tree fetched to the host (`jax.device_get`)."""
    return jax.tree_util.tree_map(lambda x: x[i], host_tree)


@functools.partial(jax.jit, static_argnames="program", donate_argnums=(0, 1))
def grid_train_on_indices(
    state: GridState, sums, frozen, train_arrays, indices, mask, *, program: step.TrainProgram
):
    """Every member's step (`step.indices_step`, vmapped): `indices`/`mask` are [members, batch]."""
    labels = program.label_tree()

    def one(count, trainable, opt_state, rng, sums, indices, mask):
        single = step.TrainState(count, merge(trainable, frozen), opt_state, rng)
        single, sums = step.indices_step(single, sums, train_arrays, indices, mask, program)
        trained, _ = split(single.params, labels)
        return GridState(single.step, trained, single.opt_state, single.rng), sums

    return jax.vmap(one)(
        state.step, state.trainable, state.opt_state, state.rng, sums, indices, mask
    )


@functools.partial(jax.jit, static_argnames="program", donate_argnums=(0,))
def grid_accumulate_eval(sums, trainable, frozen, batch, *, program: step.EvalProgram):
    """Every member's `step.eval_sums` on one shared batch; `sums` is [members, 3]."""
    one = lambda s, t: step.eval_sums(s, merge(t, frozen), batch, program)
    return jax.vmap(one)(sums, trainable)
