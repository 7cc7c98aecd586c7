"""Command: the FT vs VPT GradCAM and Integrated Gradients figures from two task artifacts.

    python -m vpt_jax.analysis.attribution_figures --ft_artifact ft/artifact.npz \
        --vpt_artifact vpt/artifact.npz --base ViT-B_16.npz --dataset vtab/cifar100 \
        --split test --out figures/

Both artifacts must come from the same task and base checkpoint (`vpt_jax.tuning.artifact`). The
split is read batch by batch (memory: one batch plus the rows kept for drawing); both models
predict every image; the images exactly one of them gets right are counted in both directions and
up to `--max_rows` of them are drawn as rows of (input, FT map, VPT map) in `gradcam.png` and
`integrated_gradients.png`; `summary.json` lists the counts, accuracies, drawn rows and IG's
completeness error. The drawing itself is `vpt_jax.analysis.attribution_plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from vpt_jax.analysis import attribution
from vpt_jax.analysis.attribution_plots import (
    FIGURES,
    TARGETS,
    Run,
    atomic_write,
    check_found,
    check_options,
    draw_comparison,
    find_disagreements,
    predict,
)
from vpt_jax.data import DataSource, get_dataset
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import load_pretrained
from vpt_jax.models.vit import VisionTransformer, ViTConfig


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
    # Loading the backbone is the slow part: do it once and put each task on top of it.
    backbone = load_pretrained(base, VisionTransformer(ViTConfig(**ft_meta["config"]), None))
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Loads both artifacts, scans the split, draws the figures and writes `summary.json`.

    Args:
      args: the parsed command line (see `main`).

    Returns:
      The summary written.
    """
    ig_options = dict(
        n_steps=args.ig_steps,
        method=args.ig_method,
        baseline=args.ig_baseline,
        blur_sigma=args.blur_sigma,
    )
    kinds = args.figures.split(",")
    check_options(kinds, args.target, args.normalization, ig_options)
    if args.max_rows < 1 or args.batch_size < 1:
        raise UserError("--max_rows and --batch_size must be >= 1")
    ft, vpt, ft_meta, vpt_meta = load_runs(args.ft_artifact, args.vpt_artifact, args.base)
    image_size = args.image_size or ft[0].config.image_size
    source = get_dataset(args.dataset, args.split, data_dir=args.data_dir, image_size=image_size)
    if source.num_classes != ft[0].num_classes:
        raise UserError(
            f"{args.dataset} has {source.num_classes} classes but the models "
            f"{ft[0].num_classes}; pass the dataset the runs were trained on"
        )
    options = dict(normalization=args.normalization, batch_size=args.batch_size)
    found_in = scan(
        source, ft, vpt, max_rows=args.max_rows, max_examples=args.max_examples, **options
    )
    labels, ft_pred, vpt_pred = found_in.labels, found_in.ft_predictions, found_in.vpt_predictions
    found = find_disagreements(ft_pred, vpt_pred, labels, args.max_rows)
    check_found(found, ft_pred, vpt_pred, labels)
    rows = found.selected
    figures, deltas = draw_comparison(
        ft,
        vpt,
        np.stack([found_in.kept[int(i)] for i in rows]),
        labels[rows],
        (ft_pred[rows], vpt_pred[rows]),
        args.out,
        normalization=args.normalization,
        class_names=source.class_names,
        target=args.target,
        kinds=kinds,
        **ig_options,
    )
    summary = {
        "dataset": source.name,
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
            for i in rows
        ],
        "target": args.target,
        "figures": figures,
        "ig_relative_delta": deltas,
        "ft": {"artifact": os.fspath(args.ft_artifact), "strategy": ft_meta["strategy"]["name"]},
        "vpt": {"artifact": os.fspath(args.vpt_artifact), "strategy": vpt_meta["strategy"]["name"]},
    }
    atomic_write(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1).encode())
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: draws the FT vs VPT GradCAM / IG comparison figures.

    Args:
      argv: arguments without the program name; None reads `sys.argv`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--ft_artifact", required=True, help="task artifact (.npz) of the finetuned run")
    add("--vpt_artifact", required=True, help="task artifact (.npz) of the prompt-tuned run")
    add("--base", required=True, help="the base checkpoint (.npz) both runs started from")
    add("--dataset", required=True, help="vtab/<task>, tfds:<name>, folder:<path>, procedural:<t>")
    add("--split", default="test", help="the split to search for disagreements")
    add("--data_dir", default=None, help="TFDS data directory (default: TFDS's)")
    add("--image_size", type=int, default=None, help="default: the runs' image size")
    add("--normalization", default="inception", help="inception ([-1, 1]) or imagenet")
    add("--out", required=True, help="output directory for the PNGs and summary.json")
    add("--max_rows", type=int, default=8, help="most rows per figure")
    add("--max_examples", type=int, default=None, help="read at most this many (default: all)")
    add("--target", default="true", choices=TARGETS, help="explain the true or predicted class")
    add("--figures", default=",".join(FIGURES), help="comma-separated: gradcam, ig")
    add("--ig_steps", type=int, default=50, help="Integrated Gradients interpolation points")
    add("--ig_method", default="gausslegendre", help=f"one of {', '.join(attribution.METHODS)}")
    add("--ig_baseline", default="black", choices=attribution.BASELINES, help="IG baseline")
    add("--blur_sigma", type=float, default=5.0, help="blur baseline sigma in pixels")
    add("--batch_size", type=int, default=64, help="images per forward pass when predicting")
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(
        f"{summary['examples']} images: {len(summary['ft_right_vpt_wrong'])} FT right / VPT "
        f"wrong, {len(summary['vpt_right_ft_wrong'])} VPT right / FT wrong; drew "
        f"{len(summary['rows'])} rows: {', '.join(summary['figures'].values())}"
    )


if __name__ == "__main__":
    from vpt_jax.runtime import use_fast_allocator

    use_fast_allocator()  # before JAX starts: see vpt_jax/runtime.py
    main()
