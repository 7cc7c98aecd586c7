"""FT vs VPT attribution figures: where one is right and the other wrong, what each looked at.

The paper's Figures 8, 17 and 18: test images that exactly one of a finetuned and a prompt-tuned
model classifies correctly, drawn as rows of (input, FT map, VPT map), for GradCAM and for
Integrated Gradients. Maps explain the true class by default (as the paper does) or each model's
own prediction.

    report = compare_attributions((ft_model, ft_params), (vpt_model, vpt_params),
                                  split.images, split.labels, "figures/")

writes `figures/gradcam.png` and `figures/integrated_gradients.png`. The command that does this
from two task artifacts is `python -m vpt_jax.analysis.attribution.figures`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vpt_jax import atomic
from vpt_jax.analysis.attribution.baselines import BASELINES
from vpt_jax.analysis.attribution.classifier import model_inputs, predict
from vpt_jax.analysis.attribution.gradcam import gradcam
from vpt_jax.analysis.attribution.integrated_gradients import integrated_gradients
from vpt_jax.analysis.attribution.quadrature import integration_points
from vpt_jax.data.preprocess import check_images, check_normalization
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer

FIGURES = {"gradcam": "gradcam.png", "ig": "integrated_gradients.png"}
TITLES = {"gradcam": "GradCAM", "ig": "Integrated Gradients"}
TARGETS = ("true", "predicted")
Run = tuple[VisionTransformer, Any]  # (model, params)


@dataclasses.dataclass(frozen=True)
class Disagreements:
    """Examples exactly one of the two models gets right.

    Attributes:
      ft_only: indices FT classifies correctly and VPT does not.
      vpt_only: indices VPT classifies correctly and FT does not.
      selected: the rows to draw (at most `max_rows`, both directions, FT-right ones first).
    """

    ft_only: np.ndarray
    vpt_only: np.ndarray
    selected: np.ndarray


@dataclasses.dataclass(frozen=True)
class ComparisonReport:
    """What `compare_attributions` found and wrote.

    Attributes:
      disagreements: the disagreeing examples and the chosen rows.
      ft_predictions: FT's class for every image.
      vpt_predictions: VPT's class for every image.
      figures: figure kind (`gradcam`, `ig`) -> PNG path.
      ig_relative_delta: `ft` / `vpt` -> IG's relative completeness error per drawn row.
    """

    disagreements: Disagreements
    ft_predictions: np.ndarray
    vpt_predictions: np.ndarray
    figures: dict[str, str]
    ig_relative_delta: dict[str, list[float]]


def find_disagreements(
    ft_predictions: Any, vpt_predictions: Any, labels: Any, max_rows: int = 8
) -> Disagreements:
    """Finds the examples exactly one model gets right and picks rows from both directions.

    Args:
      ft_predictions: FT's classes, `(N,)`.
      vpt_predictions: VPT's classes, `(N,)`.
      labels: true classes, `(N,)`.
      max_rows: most rows to select; each direction gets half when both have enough, and the
        rows are the first ones of each direction (so a stream needs to keep only those).

    Returns:
      The `Disagreements`.
    """
    if max_rows < 1:
        raise UserError(f"max_rows must be >= 1, got {max_rows}")
    ft_right = np.asarray(ft_predictions) == np.asarray(labels)
    vpt_right = np.asarray(vpt_predictions) == np.asarray(labels)
    ft_only = np.flatnonzero(ft_right & ~vpt_right)
    vpt_only = np.flatnonzero(vpt_right & ~ft_right)
    n_ft = min(len(ft_only), max(max_rows - max_rows // 2, max_rows - len(vpt_only)))
    n_vpt = min(len(vpt_only), max_rows - n_ft)
    return Disagreements(ft_only, vpt_only, np.concatenate([ft_only[:n_ft], vpt_only[:n_vpt]]))


def check_options(
    kinds: Sequence[str], target: str, normalization: str, ig_options: dict[str, Any]
) -> None:
    """Raises `UserError` for an unknown figure kind, target, normalisation, IG rule or baseline.

    Args:
      kinds: figure kinds (`gradcam`, `ig`).
      target: `true` or `predicted`.
      normalization: `inception` or `imagenet`.
      ig_options: keyword arguments meant for `integrated_gradients`.
    """
    check_normalization(normalization)
    unknown = [k for k in kinds if k not in FIGURES]
    if unknown or not kinds:
        raise UserError(f"unknown figures {unknown}; use some of {', '.join(FIGURES)}")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if "ig" in kinds:
        integration_points(ig_options.get("method", "gausslegendre"), ig_options.get("n_steps", 50))
        baseline = ig_options.get("baseline", "black")
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise UserError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")


def attribution_maps(
    model: VisionTransformer,
    params: Any,
    inputs: Any,
    targets: Any,
    kind: str,
    **ig_options: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-pixel maps in [0, 1] for drawing.

    Args:
      model: a classifier.
      params: its parameters.
      inputs: `(B, H, W, C)` model inputs.
      targets: `(B,)` classes to explain.
      kind: `gradcam` (min-max scaled maps) or `ig` (`|attributions|` summed over channels,
        scaled by the 99th percentile).
      **ig_options: keyword arguments of `integrated_gradients` (IG only).

    Returns:
      `(maps (B, H, W), relative completeness error (B,) or None for GradCAM)`.
    """
    if kind == "gradcam":
        return np.asarray(gradcam(model, params, inputs, targets).maps), None
    if kind == "ig":
        result = integrated_gradients(model, params, inputs, targets, **ig_options)
        return np.asarray(result.heatmap()), np.asarray(result.relative_delta)
    raise UserError(f"unknown figure {kind!r}; use one of {', '.join(FIGURES)}")


def render_comparison(
    path: str | os.PathLike,
    pixels: np.ndarray,
    ft_maps: np.ndarray,
    vpt_maps: np.ndarray,
    titles: Sequence[tuple[str, str, str]],
    suptitle: str = "",
) -> None:
    """Draws rows of (input, FT map, VPT map), maps over the input, and writes a PNG atomically.

    Args:
      path: the PNG file.
      pixels: `(R, H, W, 3)` the inputs as uint8, or float in [0, 1].
      ft_maps: `(R, H, W)` FT maps in [0, 1].
      vpt_maps: `(R, H, W)` VPT maps in [0, 1].
      titles: per row, the titles of the three panels.
      suptitle: a title over the figure.
    """
    rows = len(pixels)
    # Maps go over a grey copy of the input: colours then belong to the map alone.
    grey = np.asarray(pixels, np.float32).mean(-1) / (255.0 if pixels.dtype == np.uint8 else 1.0)
    # A bare Figure (no pyplot): no global state, no GUI backend, safe in threads and notebooks.
    figure = Figure(figsize=(3 * 2.8 + 1.0, rows * 2.8 + 0.6), layout="constrained")
    axes = figure.subplots(rows, 3, squeeze=False)
    shown = None
    for row in range(rows):
        for col, overlay in enumerate((None, ft_maps[row], vpt_maps[row])):
            ax = axes[row, col]
            if overlay is None:
                ax.imshow(pixels[row])
            else:
                ax.imshow(grey[row], cmap="gray", vmin=0.0, vmax=1.0)
                shown = ax.imshow(overlay, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_title(titles[row][col], fontsize=10)
            ax.set_axis_off()
    if shown is not None:  # every map is scaled to [0, 1] per image: one bar reads them all
        figure.colorbar(
            shown, ax=axes[:, 1:].ravel().tolist(), shrink=min(0.9, 0.25 + 0.15 * rows),
            label="attribution (per-image min-max scaled)",
        )  # fmt: skip
    if suptitle:
        figure.suptitle(suptitle, fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic.write_bytes(path, buffer.getvalue())


def draw_comparison(
    ft: Run,
    vpt: Run,
    pixels: np.ndarray,
    labels: np.ndarray,
    predictions: tuple[np.ndarray, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    normalization: str = "inception",
    class_names: Sequence[str] | None = None,
    target: str = "true",
    kinds: Sequence[str] = ("gradcam", "ig"),
    **ig_options: Any,
) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Computes both models' maps for the given rows and writes one PNG per figure kind.

    Args:
      ft: `(model, params)` of the finetuned run.
      vpt: `(model, params)` of the prompt-tuned run.
      pixels: `(R, H, W, 3)` the rows' images, uint8 or float in [0, 1].
      labels: `(R,)` their true classes.
      predictions: `(R,)` FT's and `(R,)` VPT's predicted classes.
      out_dir: where the PNGs go.
      normalization: how the models normalise pixels (`inception` or `imagenet`).
      class_names: names for the titles (default: class indices).
      target: explain the `true` class or each model's `predicted` class.
      kinds: figures to draw: `gradcam`, `ig`.
      **ig_options: keyword arguments of `integrated_gradients`.

    Returns:
      `(figure kind -> PNG path, ft/vpt -> IG relative completeness error per row)`.
    """
    inputs = model_inputs(np.asarray(pixels), normalization)
    name = lambda c: class_names[c] if class_names is not None else str(c)
    verdict = lambda who, p, t: f"{who}: {name(p)} ({'right' if p == t else 'wrong'})"
    titles = [
        (f"true: {name(t)}", verdict("FT", f, t), verdict("VPT", v, t))
        for t, f, v in zip(labels, *predictions, strict=True)
    ]
    figures, deltas = {}, {}
    for kind in kinds:
        options = {"normalization": normalization, **ig_options} if kind == "ig" else {}
        maps = []
        for who, (model, params), pred in zip(("ft", "vpt"), (ft, vpt), predictions, strict=True):
            targets = labels if target == "true" else pred
            kind_maps, delta = attribution_maps(model, params, inputs, targets, kind, **options)
            maps.append(kind_maps)
            if delta is not None:
                deltas[who] = [float(d) for d in delta]
        path = os.path.join(os.fspath(out_dir), FIGURES[kind])
        shown = np.clip(pixels, 0.0, 1.0) if pixels.dtype != np.uint8 else pixels
        render_comparison(path, shown, *maps, titles, f"{TITLES[kind]}, {target} class")
        figures[kind] = path
    return figures, deltas


def compare_attributions(
    ft: Run,
    vpt: Run,
    images: Any,
    labels: Any,
    out_dir: str | os.PathLike,
    *,
    normalization: str = "inception",
    class_names: Sequence[str] | None = None,
    target: str = "true",
    kinds: Sequence[str] = ("gradcam", "ig"),
    max_rows: int = 8,
    batch_size: int = 64,
    **ig_options: Any,
) -> ComparisonReport:
    """Finds where FT and VPT disagree on correctness and writes one comparison PNG per kind.

    Args:
      ft: `(model, params)` of the finetuned run.
      vpt: `(model, params)` of the prompt-tuned run on the same task.
      images: `(N, H, W, 3)` pixels, uint8 or float in [0, 1].
      labels: `(N,)` true classes.
      out_dir: where `gradcam.png` and `integrated_gradients.png` go.
      normalization: how the models normalise pixels (`inception` or `imagenet`).
      class_names: names for the titles (default: class indices).
      target: explain the `true` class (the paper) or each model's `predicted` class.
      kinds: figures to draw: `gradcam`, `ig`.
      max_rows: most rows per figure.
      batch_size: images per forward pass when predicting.
      **ig_options: keyword arguments of `integrated_gradients` (`n_steps`,
        `method`, `baseline`, `blur_sigma`, `chunk_size`).

    Returns:
      A `ComparisonReport`.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    check_images(images)
    check_options(kinds, target, normalization, ig_options)
    if labels.shape != (len(images),):
        raise UserError(f"need one label per image: {len(images)} images, {labels.shape} labels")
    options = dict(normalization=normalization, batch_size=batch_size)
    ft_pred, vpt_pred = predict(*ft, images, **options), predict(*vpt, images, **options)
    found = find_disagreements(ft_pred, vpt_pred, labels, max_rows)
    check_found(found, ft_pred, vpt_pred, labels)
    rows = found.selected
    figures, deltas = draw_comparison(
        ft,
        vpt,
        images[rows],
        labels[rows],
        (ft_pred[rows], vpt_pred[rows]),
        out_dir,
        normalization=normalization,
        class_names=class_names,
        target=target,
        kinds=kinds,
        **ig_options,
    )
    return ComparisonReport(found, ft_pred, vpt_pred, figures, deltas)


def check_found(
    found: Disagreements, ft_pred: np.ndarray, vpt_pred: np.ndarray, labels: np.ndarray
) -> None:
    """Raises `UserError` when no image is classified correctly by exactly one model."""
    if not len(found.selected):
        both = int(np.sum((ft_pred == labels) & (vpt_pred == labels)))
        raise UserError(
            f"FT and VPT are right on the same images: none of {len(labels)} is classified "
            f"correctly by exactly one ({both} by both); pass more images"
        )
