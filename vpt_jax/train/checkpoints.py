"""Orbax checkpoints of the trainable state, one manager per stage of a run.

Only the trainable subtree is saved (with the optimizer state, step, RNG and epoch): the frozen
backbone is the shared base checkpoint and is reloaded from it. Orbax writes each checkpoint to a
temporary directory and renames it when complete, so a kill never leaves a half-written one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class StageCheckpoints:
    """Save / restore `{"trainable", "opt_state", "step", "rng", "epoch"}` by epoch number."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The epochs that have a complete checkpoint, oldest first."""
        return sorted(self.manager.all_steps())

    def delete(self, epoch: int) -> None:
        self.manager.delete(epoch)

    def save(self, epoch: int, tree: dict[str, Any]) -> None:
        tree = dict(tree, rng=jax.random.key_data(tree["rng"]))
        self.manager.save(epoch, args=ocp.args.StandardSave(tree))
        self.manager.wait_until_finished()

    def restore(self, epoch: int, like: dict[str, Any]) -> dict[str, Any]:
        """Restores into the structure (and shardings) of `like`."""
        impl = jax.random.key_impl(like["rng"])
        target = dict(like, rng=jax.random.key_data(like["rng"]))
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        tree = self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        return dict(tree, rng=jax.random.wrap_key_data(tree["rng"], impl=impl))

    def close(self) -> None:
        self.manager.close()
