"""Per-task artifacts: only what a strategy trained, in a small file that loads on the shared base.

VPT's point is storage: one backbone serves every task, and a task needs only its prompts and head.
`export_artifact` writes the leaves trained in any stage of the strategy (prompts, head, LoRA
factors; everything for FT) plus the metadata that rebuilds the model, as an `.npz` (no pickles).
`load_artifact` rebuilds the model, loads the base checkpoint and puts the task's leaves on top,
refusing a base whose weights differ from the one the task was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models import additions
from vpt_jax.models.checkpoint import atomic_write_npz, load_pretrained, read_npz, save_npz
from vpt_jax.models.family import ParamLayout, config_from_dict, config_to_dict, layout_of
from vpt_jax.models.vit import VisionTransformer, ViTConfig, param_shapes
from vpt_jax.tuning.budget import parameter_budget, tuned_paths
from vpt_jax.tuning.strategies import Strategy

META_KEY = "__vpt_jax_meta__"
FORMAT_VERSION = 2  # 2: additions as declarations (1: as strategy fields; still read)


def fingerprint(params: Mapping[str, Any], layout: ParamLayout) -> str:
    """A short hash of a few backbone leaves, identifying the base checkpoint."""
    flat = paths.flatten(params)
    digest = hashlib.sha256()
    for key in layout.identity:  # a few leaves: hashing all 86M parameters at every load is slow
        digest.update(np.ascontiguousarray(np.asarray(flat[key], np.float32)).tobytes())
    return digest.hexdigest()[:16]


def strategy_to_dict(strategy: Strategy) -> dict[str, Any]:
    """The strategy as JSON-ready data (its layout follows from the backbone's config)."""
    return {
        "name": strategy.name,
        "rules": [list(rule) for rule in strategy.rules],
        "additions": [a.to_dict() for a in strategy.additions],
        "backbone_dropout": strategy.backbone_dropout,
        "optimizer": strategy.optimizer,
        "grid": strategy.grid,
        "stages": [strategy_to_dict(stage) for stage in strategy.stages],
    }


def strategy_from_dict(data: Mapping[str, Any], layout: ParamLayout) -> Strategy:
    """The strategy `strategy_to_dict` wrote, on a backbone of `layout`."""
    return Strategy(
        name=data["name"],
        rules=tuple(tuple(rule) for rule in data["rules"]),
        additions=tuple(additions.from_dict(a) for a in data["additions"]),
        layout=layout,
        backbone_dropout=data["backbone_dropout"],
        optimizer=data["optimizer"],
        grid=data["grid"],
        stages=tuple(strategy_from_dict(stage, layout) for stage in data["stages"]),
    )


def _strategy_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """Format 1 held additions as fields (num_prompts, lora_rank, head_mlp_dims)."""
    found: list[dict[str, Any]] = []
    if data.get("num_prompts"):
        prompts = additions.Prompts(
            data["num_prompts"],
            deep=data["deep_prompts"],
            dropout=data["prompt_dropout"],
            dim=data["prompt_dim"],
        )
        found.append(prompts.to_dict())
    if data.get("lora_rank"):
        found.append(additions.LoRA(data["lora_rank"], data["lora_alpha"]).to_dict())
    if data.get("head_mlp_dims"):
        found.append(additions.MLPHead(tuple(data["head_mlp_dims"])).to_dict())
    return {
        "name": data["name"],
        "rules": data["rules"],
        "additions": found,
        "backbone_dropout": data["backbone_dropout"],
        "optimizer": data["optimizer"],
        "grid": "finetune" if data["optimizer"] == "adamw" else "prompt",
        "stages": [_strategy_v1(stage) for stage in data.get("stages", ())],
    }


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
    counted = parameter_budget(strategy, params)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "num_classes": num_classes,
        "strategy": strategy_to_dict(strategy),
        "base_fingerprint": fingerprint(
            base_params if base_params is not None else params, strategy.layout
        ),
        "tuned_parameters": counted.tuned,
        "total_parameters": counted.total,
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
    if meta.get("format_version") == 1:  # as JSON, so both formats read back alike
        upgraded = dict(
            meta, format_version=FORMAT_VERSION, strategy=_strategy_v1(meta["strategy"])
        )
        meta = json.loads(json.dumps(upgraded))
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{os.fspath(path)} has artifact format {meta.get('format_version')}, this vpt_jax "
            f"reads formats 1 and {FORMAT_VERSION}; update vpt_jax"
        )
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
    config = config_from_dict(meta["config"])
    strategy = strategy_from_dict(meta["strategy"], layout_of(config)).final
    model = strategy.build_model(config, meta["num_classes"])
    if isinstance(base_checkpoint, Mapping):
        base = paths.flatten(base_checkpoint)
    else:
        base = paths.flatten(load_pretrained(base_checkpoint, model))
    layout = layout_of(config)
    if any(k not in flat for k in layout.identity):  # the artifact does not carry its backbone
        got = fingerprint(paths.unflatten(base), layout)
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
    missing = [k for k in paths.flatten(param_shapes(model)) if k not in merged]
    if missing:
        raise UserError(f"{os.fspath(path)} lacks {', '.join(missing)}; the artifact is incomplete")
    return model, paths.unflatten(merged), meta


def export_merged_checkpoint(
    path: str | os.PathLike, params: Mapping[str, Any], strategy: Strategy
) -> None:
    """Writes a plain-ViT `.npz` (original layout) with LoRA factors merged into the kernels.

    The file loads in any tool that reads google-research checkpoints (keep the head with
    `load_pretrained(..., keep_head=True)`). Models with other additions (prompts, an MLP head) are
    not a plain ViT and cannot be merged.
    """
    plain = params
    for addition in strategy.final.additions:
        if not isinstance(addition, additions.LoRA):
            what = "a prompted model" if addition.extra_tokens else f"a model with {addition.kind}"
            raise UserError(f"{what} cannot be merged into a plain ViT; export its artifact")
        plain = addition.merge(plain)
    save_npz(path, plain)
