"""Named feature extractors: a feature space that statistics caches and FID tables can name.

Dataset distances are only comparable within one feature space, so every extractor carries a
`name` that identifies it (the network and a fingerprint of its weight file). The name keys the
statistics caches (`vpt_jax.analysis.fid.distance`) and is written into FID tables, so FIDs from
different feature spaces are never mixed by accident.

* `inception_extractor(weights)`: the FID Inception-v3 (2048-d pool3 features, as pytorch-fid).
* `vit_extractor(checkpoint)`: a ViT checkpoint's own `pre_logits` features, its architecture read
  from the file; no Inception weights needed (the offline path).
* `FeatureExtractor(name, fn, dim, image_size)`: any other callable `fn(images) -> (B, dim)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from absl import flags

from vpt_jax import paths
from vpt_jax.analysis.fid import inception
from vpt_jax.analysis.fid.features import FeaturesFn, inception_features_fn, vit_features_fn
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    describe,
    read_checkpoint,
)
from vpt_jax.models.vit import create_model, param_shapes

FEATURES = ("inception", "vit")
_CONVERT_HINT = (
    "convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
    "python -m vpt_jax.analysis.fid.inception_weights SRC.pth DST.npz"
)


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A feature extractor with the identity a statistics cache needs.

    Attributes:
      name: identifies the feature space (network and weights), e.g. `inception-1a2b3c4d`.
      fn: `fn(images) -> (B, dim)` for NHWC uint8 images.
      dim: feature width, checked against reference statistics before any work.
      image_size: the side images are read at; the extractor may resize again (Inception to 299).
    """

    name: str
    fn: FeaturesFn
    dim: int
    image_size: int


def file_fingerprint(path: str | os.PathLike, length: int = 8) -> str:
    """The first `length` hex digits of the SHA-1 of a file's content."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def inception_extractor(weights: str | os.PathLike) -> FeatureExtractor:
    """The FID feature space: pool3 of the 2015-12-05 Inception-v3 (pytorch-fid's weights).

    Args:
      weights: the `.npz` from `python -m vpt_jax.analysis.fid.inception_weights SRC.pth DST.npz` (or the `.pth`
        itself when torch is installed).

    Returns:
      A 2048-d extractor named `inception-<fingerprint of the weight file>`.

    Raises:
      UserError: a missing file, or one that does not hold the FID Inception weights.
    """
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise UserError(f"FID Inception weights not found: {path}; {_CONVERT_HINT}")
    fn = inception_features_fn(path)
    return FeatureExtractor(
        f"inception-{file_fingerprint(path)}", fn, inception.FEATURE_DIM, inception.INPUT_SIZE
    )


def vit_extractor(
    checkpoint: str | os.PathLike, *, feature: str = "pre_logits"
) -> FeatureExtractor:
    """A ViT checkpoint's own feature space (its `pre_logits` features by default).

    The architecture is read from the file, so any ViT layout loads (google-research `.npz`: the
    ImageNet-21k ViT-B/16, augreg files, the demo's tiny ViT; timm-layout safetensors or PyTorch
    files: timm, MAE, MoCo v3); images are read at the checkpoint's resolution. Swin checkpoints are
    refused: their hierarchical features are not a ViT's `pre_logits`.

    Args:
      checkpoint: a ViT checkpoint file.
      feature: the model output to use (`pre_logits`: the features the head reads).

    Returns:
      An extractor named `vit-<file stem>-<fingerprint>` (plus `-<feature>` for other outputs).

    Raises:
      CheckpointError: a missing or unreadable file, or one that is not a ViT checkpoint.
    """
    read = read_checkpoint(checkpoint)
    if read.family != "vit":
        raise CheckpointError(
            f"{read.path} holds a {read.family} backbone ({read.layout}); --features vit reads ViT "
            "checkpoints only (google-research .npz, timm / MAE / MoCo v3 files): use --features "
            "inception for a distance that does not depend on the backbone"
        )
    flat = read.flat
    config = config_from_checkpoint(flat)
    model = create_model(config, None)
    # The config comes from the file, so its leaves fit by construction; checking them against the
    # traced shapes avoids compiling an initialiser just to overwrite its output (the head, absent
    # from a feature extractor, is the only thing left out).
    shapes = paths.flatten(param_shapes(model))
    misfit = [k for k, s in shapes.items() if k not in flat or flat[k].shape != s.shape]
    if misfit:
        raise CheckpointError(
            f"{os.fspath(checkpoint)} does not hold a consistent ViT ({describe(flat)}): missing or "
            f"mis-shaped {', '.join(misfit[:5])}"
        )
    params = paths.unflatten({k: np.asarray(flat[k], s.dtype) for k, s in shapes.items()})
    dim = config.representation_size or config.hidden_size
    stem = os.path.splitext(os.path.basename(os.fspath(checkpoint)))[0]
    name = f"vit-{stem}-{file_fingerprint(checkpoint)}"
    if feature != "pre_logits":  # another output is another feature space
        name += f"-{feature}"
    return FeatureExtractor(
        name, vit_features_fn(model, params, feature=feature), dim, config.image_size
    )


def define_extractor_flags(values: flags.FlagValues) -> None:
    """Defines `--features`, `--inception` and `--checkpoint` on a command's flags."""
    flags.DEFINE_enum(
        "features",
        "inception",
        FEATURES,
        "feature space: inception (FID, needs --inception) or vit (a ViT checkpoint's "
        "pre-logits features, needs --checkpoint; no Inception weights)",
        flag_values=values,
    )
    flags.DEFINE_string(
        "inception", None, "FID Inception weights .npz (--features inception)", flag_values=values
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "ViT checkpoint: .npz, safetensors or .pth (--features vit)",
        flag_values=values,
    )


def extractor_from_flags(values: flags.FlagValues) -> FeatureExtractor:
    """The extractor `define_extractor_flags`'s flags name, or a one-line `UserError`."""
    if values.features == "inception":
        if not values.inception:
            raise UserError(
                f"--features inception needs --inception WEIGHTS.npz ({_CONVERT_HINT}); or use "
                "--features vit --checkpoint VIT.npz"
            )
        return inception_extractor(values.inception)
    if not values.checkpoint:
        raise UserError(
            "--features vit needs --checkpoint VIT (a ViT checkpoint: google-research .npz, timm safetensors)"
        )
    return vit_extractor(values.checkpoint)
