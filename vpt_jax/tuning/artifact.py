"""Per-task artifacts: only what a strategy trained, in a small file that loads on the shared base.

VPT's point is storage: one backbone serves every task, and a task needs only its prompts and head.
`export_artifact` writes the leaves trained in any stage of the strategy (prompts, head, LoRA
factors; everything for FT) plus the metadata that rebuilds the model, as an `.npz` (no pickles).
`load_artifact` rebuilds the model, loads the base checkpoint and puts the task's leaves on top,
refusing a base whose weights differ from the one the task was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import atomic_write_npz, load_pretrained, read_npz, save_npz
from vpt_jax.models.lora import merge_lora
from vpt_jax.models.vit import VisionTransformer, ViTConfig
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import Strategy

META_KEY = "__vpt_jax_meta__"
FORMAT_VERSION = 1
# Leaves that identify a backbone cheaply (hashing all 86M parameters at every load is not needed).
_FINGERPRINT_KEYS = ("cls", "embedding/kernel", "Transformer/encoder_norm/scale")


def tuned_paths(strategy: Strategy, params: Mapping[str, Any]) -> list[str]:
    """Paths of the leaves trained in any stage of `strategy`."""
    keys = list(paths.flatten(params))
    tuned: set[str] = set()
    for stage in strategy.stages or (strategy,):
        stage_keys = [k for k in keys if _exists_in(stage, k)]
        labels = label_paths(stage_keys, stage.rules)
        tuned.update(k for k, label in labels.items() if label != FROZEN)
    return [k for k in keys if k in tuned]


def _exists_in(stage: Strategy, key: str) -> bool:
    # A stage of a multi-stage strategy may lack the final model's additions (FT before prompts).
    if key.startswith("Transformer/prompt/"):
        return stage.num_prompts > 0
    if "_lora/" in key:
        return stage.lora_rank > 0
    return True


def fingerprint(params: Mapping[str, Any]) -> str:
    """A short hash of a few backbone leaves, identifying the base checkpoint."""
    flat = paths.flatten(params)
    digest = hashlib.sha256()
    for key in _FINGERPRINT_KEYS:
        digest.update(np.ascontiguousarray(np.asarray(flat[key], np.float32)).tobytes())
    return digest.hexdigest()[:16]


def strategy_to_dict(strategy: Strategy) -> dict[str, Any]:
    return dataclasses.asdict(strategy)


def strategy_from_dict(data: Mapping[str, Any]) -> Strategy:
    fields = dict(data)
    fields["rules"] = tuple(tuple(rule) for rule in fields["rules"])
    fields["head_mlp_dims"] = tuple(fields.get("head_mlp_dims", ()))
    fields["stages"] = tuple(strategy_from_dict(s) for s in fields.get("stages", ()))
    return Strategy(**fields)


def export_artifact(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    strategy: Strategy,
    config: ViTConfig,
    num_classes: int | None,
    base_params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the tuned leaves of `params` and the model's description to `path` (atomically).

    Args:
      path: the artifact file (`.npz`).
      params: the trained model's full parameter tree.
      strategy: the strategy that trained it.
      config: the backbone's architecture.
      num_classes: the task's classes.
      base_params: the frozen base (default: `params`), fingerprinted so loads can check it.
      extra: JSON-serialisable facts to keep with it (task name, scores).

    Returns:
      The metadata written.
    """
    flat = {k: np.asarray(jax.device_get(v)) for k, v in paths.flatten(params).items()}
    keep = tuned_paths(strategy, params)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "num_classes": num_classes,
        "strategy": strategy_to_dict(strategy),
        "base_fingerprint": fingerprint(base_params if base_params is not None else params),
        "tuned_parameters": int(sum(flat[k].size for k in keep)),
        "total_parameters": int(sum(v.size for v in flat.values())),
        "extra": dict(extra or {}),
    }
    arrays = {k: flat[k] for k in keep}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write_npz(path, arrays)
    return meta


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads an artifact's arrays (flat) and metadata."""
    flat = read_npz(path)
    if META_KEY not in flat:
        raise UserError(
            f"{os.fspath(path)} is not a vpt_jax task artifact (no metadata); pass the file a run "
            "exported (artifact.npz in its workdir)"
        )
    meta = json.loads(flat.pop(META_KEY).tobytes().decode())
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{os.fspath(path)} has artifact format {meta.get('format_version')}")
    return flat, meta


def load_artifact(
    path: str | os.PathLike, base_checkpoint: str | os.PathLike | Mapping[str, Any]
) -> tuple[VisionTransformer, dict[str, Any], dict[str, Any]]:
    """Rebuilds a task's model from its artifact on top of the shared base checkpoint.

    Args:
      path: the artifact file.
      base_checkpoint: the backbone `.npz` the task was trained from, or its loaded parameters.

    Returns:
      `(model, params, metadata)`, ready for `model.apply({"params": params}, images)`.
    """
    flat, meta = read_artifact(path)
    strategy = strategy_from_dict(meta["strategy"]).final
    model = strategy.build_model(ViTConfig(**meta["config"]), meta["num_classes"])
    if isinstance(base_checkpoint, Mapping):
        base = paths.flatten(base_checkpoint)
    else:
        base = paths.flatten(load_pretrained(base_checkpoint, model))
    if any(k not in flat for k in _FINGERPRINT_KEYS):
        got = fingerprint(paths.unflatten(base))
        if got != meta["base_fingerprint"]:
            raise UserError(
                f"{os.fspath(path)} was trained on another base checkpoint (fingerprint "
                f"{meta['base_fingerprint']}, this base {got}); load it on the backbone it was tuned from"
            )
    merged = dict(base)
    for key, value in flat.items():
        if key in merged and merged[key].shape != value.shape:
            raise UserError(
                f"{os.fspath(path)}: {key} has shape {value.shape}, the model {merged[key].shape}"
            )
        merged[key] = value
    missing = [k for k in paths.flatten(_shapes(model)) if k not in merged]
    if missing:
        raise UserError(f"{os.fspath(path)} lacks {', '.join(missing)}; the artifact is incomplete")
    return model, paths.unflatten(merged), meta


def _shapes(model: VisionTransformer) -> dict[str, Any]:
    from vpt_jax.models.vit import param_shapes

    return param_shapes(model)


def export_merged_checkpoint(
    path: str | os.PathLike, params: Mapping[str, Any], strategy: Strategy
) -> None:
    """Writes a plain-ViT `.npz` (original layout) with LoRA factors merged into the kernels.

    The file loads in any tool that reads google-research checkpoints (keep the head with
    `load_pretrained(..., keep_head=True)`). Prompted models cannot be merged: they are not a plain ViT.
    """
    if strategy.final.num_prompts:
        raise UserError("a prompted model cannot be merged into a plain ViT; export its artifact")
    if strategy.final.head_mlp_dims:
        raise UserError("a model with an MLP head is not a plain ViT; export its artifact")
    plain = merge_lora(params, strategy.final.lora_alpha) if strategy.final.lora_rank else params
    save_npz(path, plain)
