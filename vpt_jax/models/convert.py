"""Converts a weight file once, so that running never needs torch.

    python -m vpt_jax.models.convert mae_pretrain_vit_base.pth mae_vit_base.safetensors
    python -m vpt_jax.models.convert linear-vit-b-300ep.pth.tar moco_v3.safetensors
    python -m vpt_jax.models.convert swin_base_patch4_window7_224_22k.pth swin_b_22k.safetensors
    python -m vpt_jax.models.convert vit.safetensors vit.npz     # a ViT into the google layout
    python -m vpt_jax.models.convert ViT-B_16.npz vit.safetensors  # a google ViT in timm names

`IN` is any file `vpt_jax.models.checkpoint.read_checkpoint` reads (a `.pth` is read with
`torch.load(weights_only=True)`, so torch must be installed for it). `OUT.safetensors` keeps a
PyTorch file's own names (timm still reads it, and vpt_jax detects the same layout from it: a MoCo
file keeps its `module.` prefix); an `.npz` input is written in timm's names (a Swin: the official
ones). `--layout timm` writes timm's names whatever the input (a MoCo file loses its prefix and
reads back as a plain timm ViT). `OUT.npz` is written in vpt_jax's names (`--layout original`: the
google-research original layout for a ViT; a Swin in vpt_jax's Swin names). The output is written
atomically and an existing one is kept unless `--force`.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from vpt_jax import cli
from vpt_jax.errors import UserError
from vpt_jax.models import checkpoint as checkpoint_lib
from vpt_jax.models import timm_vit, torch_files

SUFFIXES = (".safetensors", ".npz")
# --layout: auto (the default of each output kind), or the names to write.
LAYOUT_CHOICES = ("auto", "original", "timm")
_LAYOUT_SUFFIX = {"original": ".npz", "timm": ".safetensors"}


def convert(
    source: str, target: str, *, force: bool = False, layout: str = "auto"
) -> checkpoint_lib.Checkpoint:
    """Writes `source` to `target` (`.safetensors` or `.npz`); returns what was read.

    Args:
      source: any weight file vpt_jax reads.
      target: the output, ending in `.safetensors` or `.npz`.
      force: replace an existing `target`.
      layout: `auto`, `original` (`.npz` only) or `timm` (`.safetensors` only); module docstring.

    Raises:
      UserError: a bad output name or layout, an existing output, or an unreadable input.
    """
    if not target.endswith(SUFFIXES):
        raise UserError(f"{target}: the output must end in .safetensors or .npz")
    if layout not in LAYOUT_CHOICES:
        raise UserError(f"--layout={layout}: use one of {', '.join(LAYOUT_CHOICES)}")
    if layout != "auto" and not target.endswith(_LAYOUT_SUFFIX[layout]):
        raise UserError(
            f"--layout={layout} writes an {_LAYOUT_SUFFIX[layout]} file, not {target}; change the "
            "output's suffix or drop --layout"
        )
    if os.path.exists(target) and not force:
        raise UserError(f"{target} exists; pass --force to replace it, or choose another name")
    if os.path.abspath(source) == os.path.abspath(target):
        raise UserError("the input and the output are the same file; choose another output")
    read = checkpoint_lib.read_checkpoint(source)  # checks the file is one vpt_jax understands
    if target.endswith(".npz"):
        if read.layout in ("mae", "moco_v3"):
            raise UserError(
                f"{source} is a {read.layout} backbone, which an .npz would not record (it would "
                "read back as a supervised ViT); write OUT.safetensors instead"
            )
        checkpoint_lib.atomic_write_npz(target, {k: np.asarray(v) for k, v in read.flat.items()})
    elif read.format != "npz" and layout == "auto":
        state_dict, _ = torch_files.read_state_dict(source)
        torch_files.write_safetensors(target, state_dict)
    else:
        torch_files.write_safetensors(target, _torch_names(read, layout))
    return read


def _torch_names(read: checkpoint_lib.Checkpoint, layout: str) -> dict[str, np.ndarray]:
    """The checkpoint in timm's names (a Swin from an `.npz`: the official Swin names)."""
    if read.family == "swin":
        from vpt_jax.models import swin_checkpoint

        if layout == "timm":
            return swin_checkpoint.from_canonical(read.flat, "swin_timm")
        own = read.layout if read.layout in swin_checkpoint.LAYOUTS else "swin_official"
        return swin_checkpoint.from_canonical(read.flat, own)
    return timm_vit.from_canonical(read.flat, "mae" if read.layout == "mae" else "timm")


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_bool("force", False, "replace an existing output file", flag_values=values)
    flags.DEFINE_enum(
        "layout",
        "auto",
        LAYOUT_CHOICES,
        "names to write: original (.npz, google layout), timm (.safetensors), auto: see above",
        flag_values=values,
    )


def _convert(values: flags.FlagValues, rest: list[str]) -> checkpoint_lib.Checkpoint:
    if len(rest) != 2:
        raise UserError(
            "usage: python -m vpt_jax.models.convert IN OUT.safetensors|OUT.npz "
            f"[--layout {'|'.join(LAYOUT_CHOICES)}] [--force]"
        )
    read = convert(rest[0], rest[1], force=values.force, layout=values.layout)
    print(f"wrote {rest[1]}: {len(read.flat)} arrays of a {read.family} ({read.layout} layout)")
    return read


def main(argv: list[str] | None = None) -> None:
    cli.run(__doc__, _define, _convert, argv, prog="python -m vpt_jax.models.convert")


if __name__ == "__main__":
    main()
