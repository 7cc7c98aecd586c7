"""Command: the FT vs VPT GradCAM and Integrated Gradients figures from two task artifacts.

    python -m vpt_jax.analysis.attribution.figures --ft_artifact ft/artifact.npz \
        --vpt_artifact vpt/artifact.npz --base ViT-B_16.npz --dataset vtab/cifar100 \
        --split test --out figures/

Both artifacts must come from the same task and base checkpoint (`vpt_jax.tuning.artifact`). The
split is read batch by batch (memory: one batch plus the rows kept for drawing); both models
predict every image; the images exactly one of them gets right are counted in both directions and
up to `--max_rows` of them are drawn as rows of (input, FT map, VPT map) in `gradcam.png` and
`integrated_gradients.png`; `summary.json` lists the counts, accuracies, drawn rows and IG's
completeness error. The drawing itself is `vpt_jax.analysis.attribution.comparison`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from vpt_jax import atomic, cli
from vpt_jax.analysis.attribution.baselines import BASELINES
from vpt_jax.analysis.attribution.classifier import predict
from vpt_jax.analysis.attribution.comparison import (
    FIGURES,
    TARGETS,
    Disagreements,
    Run,
    check_found,
    check_options,
    draw_comparison,
    find_disagreements,
)
from vpt_jax.analysis.attribution.quadrature import METHODS
from vpt_jax.data import DataSource, get_dataset
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import load_pretrained
from vpt_jax.models.family import config_from_dict, family_of


@dataclasses.dataclass(frozen=True)
class Scan:
    """Both models' predictions over a split, and the images of the first disagreements.

    Attributes:
      labels: `(N,)` true classes.
      ft_predictions: `(N,)` FT's classes.
      vpt_predictions: `(N,)` VPT's classes.
      kept: index -> uint8 image, for the first `max_rows` disagreements of each direction.
    """

    labels: np.ndarray
    ft_predictions: np.ndarray
    vpt_predictions: np.ndarray
    kept: dict[int, np.ndarray]


def trained_normalization(ft_meta: dict[str, Any], vpt_meta: dict[str, Any]) -> str:
    """The input normalisation both runs were trained with (their artifacts record it; artifacts
    without the record are from the clean recipe's `inception`)."""
    used = [m.get("extra", {}).get("normalization") or "inception" for m in (ft_meta, vpt_meta)]
    if used[0] != used[1]:
        raise UserError(
            f"the FT artifact was trained on {used[0]} inputs and the VPT one on {used[1]} (their "
            "recipes differ); compare runs of one recipe, or pass --normalization to force one"
        )
    return used[0]


def load_runs(
    ft_artifact: str | os.PathLike, vpt_artifact: str | os.PathLike, base: str | os.PathLike
) -> tuple[Run, Run, dict[str, Any], dict[str, Any]]:
    """Loads both task artifacts on one base checkpoint, read once.

    Args:
      ft_artifact: the finetuned run's artifact.
      vpt_artifact: the prompt-tuned run's artifact.
      base: the backbone `.npz` both were trained from.

    Returns:
      `((ft_model, ft_params), (vpt_model, vpt_params), ft_metadata, vpt_metadata)`.
    """
    from vpt_jax.tuning.artifact import load_artifact, read_artifact

    ft_meta, vpt_meta = read_artifact(ft_artifact)[1], read_artifact(vpt_artifact)[1]
    for field in ("image_size", "num_classes"):
        ft_value = ft_meta.get(field, ft_meta["config"].get(field))
        vpt_value = vpt_meta.get(field, vpt_meta["config"].get(field))
        if ft_value != vpt_value:
            raise UserError(
                f"the artifacts differ in {field}: {ft_value} (FT), {vpt_value} (VPT); compare "
                "two runs of the same task"
            )
    backbone_config = config_from_dict(ft_meta["config"])
    family = family_of(backbone_config).name
    if family != "vit":
        raise UserError(
            f"{os.fspath(ft_artifact)} was trained on a {family} backbone; GradCAM and Integrated "
            "Gradients figures support ViT backbones (vit, mae, moco_v3): GradCAM reads one "
            "token grid, which Swin's merged, windowed stages do not have"
        )
    # Loading the backbone is the slow part: do it once and put each task on top of it.
    backbone = load_pretrained(base, family_of(backbone_config).build_model(backbone_config, None))
    ft_model, ft_params, _ = load_artifact(ft_artifact, backbone)
    vpt_model, vpt_params, _ = load_artifact(vpt_artifact, backbone)
    return (ft_model, ft_params), (vpt_model, vpt_params), ft_meta, vpt_meta


def scan(
    source: DataSource,
    ft: Run,
    vpt: Run,
    *,
    normalization: str = "inception",
    batch_size: int = 64,
    max_rows: int = 8,
    max_examples: int | None = None,
) -> Scan:
    """Predicts a split with both models, keeping only the images that may be drawn.

    Args:
      source: the split.
      ft: `(model, params)` of the finetuned run.
      vpt: `(model, params)` of the prompt-tuned run.
      normalization: how the models normalise pixels.
      batch_size: images per forward pass.
      max_rows: disagreements kept per direction (`find_disagreements` draws from the first ones).
      max_examples: read at most this many images; None reads the whole split.

    Returns:
      The `Scan`.
    """
    labels, ft_pred, vpt_pred, kept = [], [], [], {}
    per_direction, seen = {True: 0, False: 0}, 0
    for images, batch_labels in source.batches(batch_size):
        if max_examples is not None:
            images, batch_labels = (
                images[: max_examples - seen],
                batch_labels[: max_examples - seen],
            )
        options = dict(normalization=normalization, batch_size=batch_size)
        ft_batch, vpt_batch = predict(*ft, images, **options), predict(*vpt, images, **options)
        ft_right = ft_batch == batch_labels
        for j in np.flatnonzero(ft_right != (vpt_batch == batch_labels)):
            if per_direction[bool(ft_right[j])] < max_rows:
                per_direction[bool(ft_right[j])] += 1
                kept[seen + int(j)] = np.asarray(images[j], np.uint8)
        labels.append(np.asarray(batch_labels, np.int32))
        ft_pred.append(ft_batch)
        vpt_pred.append(vpt_batch)
        seen += len(batch_labels)
        if max_examples is not None and seen >= max_examples:
            break
    if not seen:
        raise UserError(f"{source.name} has no examples")
    return Scan(np.concatenate(labels), np.concatenate(ft_pred), np.concatenate(vpt_pred), kept)


def run(values: flags.FlagValues) -> dict[str, Any]:
    """Loads both artifacts, scans the split, draws the figures and writes `summary.json`.

    Args:
      values: the parsed command line (see `define_flags`).

    Returns:
      The summary written.
    """
    ig_options = dict(
        n_steps=values.ig_steps,
        method=values.ig_method,
        baseline=values.ig_baseline,
        blur_sigma=values.blur_sigma,
    )
    check_options(values.figures, values.target, values.normalization or "inception", ig_options)
    if values.max_rows < 1 or values.batch_size < 1:
        raise UserError("--max_rows and --batch_size must be >= 1")
    ft, vpt, ft_meta, vpt_meta = load_runs(values.ft_artifact, values.vpt_artifact, values.base)
    if values.normalization is None:
        values.normalization = trained_normalization(ft_meta, vpt_meta)
    image_size = values.image_size or ft[0].config.image_size
    source = get_dataset(
        values.dataset, values.split, data_dir=values.data_dir, image_size=image_size
    )
    if source.num_classes != ft[0].num_classes:
        raise UserError(
            f"{values.dataset} has {source.num_classes} classes but the models "
            f"{ft[0].num_classes}; pass the dataset the runs were trained on"
        )
    options = dict(normalization=values.normalization, batch_size=values.batch_size)
    scanned = scan(
        source, ft, vpt, max_rows=values.max_rows, max_examples=values.max_examples, **options
    )
    labels, ft_pred, vpt_pred = scanned.labels, scanned.ft_predictions, scanned.vpt_predictions
    found = find_disagreements(ft_pred, vpt_pred, labels, values.max_rows)
    check_found(found, ft_pred, vpt_pred, labels)
    rows = found.selected
    figures, deltas = draw_comparison(
        ft,
        vpt,
        np.stack([scanned.kept[int(i)] for i in rows]),
        labels[rows],
        (ft_pred[rows], vpt_pred[rows]),
        values.out,
        normalization=values.normalization,
        class_names=source.class_names,
        target=values.target,
        kinds=values.figures,
        **ig_options,
    )
    summary = {
        "dataset": source.name,
        **_counts(scanned, found),
        "target": values.target,
        "figures": figures,
        "ig_relative_delta": deltas,
        "ft": {"artifact": values.ft_artifact, "strategy": ft_meta["strategy"]["name"]},
        "vpt": {"artifact": values.vpt_artifact, "strategy": vpt_meta["strategy"]["name"]},
    }
    atomic.write_text(os.path.join(values.out, "summary.json"), json.dumps(summary, indent=1))
    return summary


def _counts(scanned: Scan, found: Disagreements) -> dict[str, Any]:
    """The summary's counts, accuracies and drawn rows."""
    labels, ft_pred, vpt_pred = scanned.labels, scanned.ft_predictions, scanned.vpt_predictions
    return {
        "examples": len(labels),
        "ft_accuracy": float(np.mean(ft_pred == labels)),
        "vpt_accuracy": float(np.mean(vpt_pred == labels)),
        "ft_right_vpt_wrong": found.ft_only.tolist(),
        "vpt_right_ft_wrong": found.vpt_only.tolist(),
        "rows": [
            {
                "index": int(i),
                "label": int(labels[i]),
                "ft_prediction": int(ft_pred[i]),
                "vpt_prediction": int(vpt_pred[i]),
            }
            for i in found.selected
        ],
    }


def define_flags(values: flags.FlagValues) -> None:
    """Defines the command's flags on `values`."""
    string = functools.partial(flags.DEFINE_string, flag_values=values)
    integer = functools.partial(flags.DEFINE_integer, flag_values=values)
    string("ft_artifact", None, "task artifact (.npz) of the finetuned run", required=True)
    string("vpt_artifact", None, "task artifact (.npz) of the prompt-tuned run", required=True)
    string("base", None, "the base checkpoint (.npz) both runs started from", required=True)
    string(
        "dataset",
        None,
        "vtab/<task>, tfds:<name>, folder:<path>, procedural:<t>",
        required=True,
    )
    string("split", "test", "the split to search for disagreements")
    string("data_dir", None, "TFDS data directory (default: TFDS's)")
    integer("image_size", None, "default: the runs' image size")
    string(
        "normalization", None, "inception ([-1, 1]) or imagenet; default: what the runs trained on"
    )
    string("out", None, "output directory for the PNGs and summary.json", required=True)
    integer("max_rows", 8, "most rows per figure")
    integer("max_examples", None, "read at most this many (default: all)")
    flags.DEFINE_enum(
        "target", "true", TARGETS, "explain the true or predicted class", flag_values=values
    )
    flags.DEFINE_list("figures", list(FIGURES), "comma-separated: gradcam, ig", flag_values=values)
    integer("ig_steps", 50, "Integrated Gradients interpolation points")
    string("ig_method", "gausslegendre", f"one of {', '.join(METHODS)}")
    flags.DEFINE_enum("ig_baseline", "black", BASELINES, "IG baseline", flag_values=values)
    flags.DEFINE_float("blur_sigma", 5.0, "blur baseline sigma in pixels", flag_values=values)
    integer("batch_size", 64, "images per forward pass when predicting")


def _draw(values: flags.FlagValues, rest: list[str]) -> None:
    cli.no_arguments(rest)
    summary = run(values)
    print(
        f"{summary['examples']} images: {len(summary['ft_right_vpt_wrong'])} FT right / VPT "
        f"wrong, {len(summary['vpt_right_ft_wrong'])} VPT right / FT wrong; drew "
        f"{len(summary['rows'])} rows: {', '.join(summary['figures'].values())}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: draws the FT vs VPT GradCAM / IG comparison figures.

    Args:
      argv: the flags, without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, define_flags, _draw, argv)


if __name__ == "__main__":
    from vpt_jax.runtime import use_fast_allocator

    use_fast_allocator()  # before JAX starts: see vpt_jax/runtime.py
    main()
