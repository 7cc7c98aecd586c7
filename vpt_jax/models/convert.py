"""Converts a PyTorch weight file once, so that running never needs torch.

    python -m vpt_jax.models.convert mae_pretrain_vit_base.pth mae_vit_base.safetensors
    python -m vpt_jax.models.convert linear-vit-b-300ep.pth.tar moco_v3.safetensors
    python -m vpt_jax.models.convert swin_base_patch4_window7_224_22k.pth swin_b_22k.safetensors
    python -m vpt_jax.models.convert vit.safetensors vit.npz     # a ViT into the google layout

`IN` is any file `vpt_jax.models.checkpoint.read_checkpoint` reads (a `.pth` is read with
`torch.load(weights_only=True)`, so torch must be installed for it). `OUT.safetensors` keeps the
file's own names (timm still reads it, and vpt_jax detects the same layout from it: a MoCo file
keeps its `module.` prefix); `OUT.npz` is written in vpt_jax's names (the google-research original
layout for a ViT). The output is written atomically and an existing one is kept unless `--force`.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from vpt_jax import cli
from vpt_jax.errors import UserError
from vpt_jax.models import checkpoint as checkpoint_lib
from vpt_jax.models import torch_files

SUFFIXES = (".safetensors", ".npz")


def convert(source: str, target: str, *, force: bool = False) -> checkpoint_lib.Checkpoint:
    """Writes `source` to `target` (`.safetensors` or `.npz`); returns what was read."""
    if not target.endswith(SUFFIXES):
        raise UserError(f"{target}: the output must end in .safetensors or .npz")
    if os.path.exists(target) and not force:
        raise UserError(f"{target} exists; pass --force to replace it, or choose another name")
    if os.path.abspath(source) == os.path.abspath(target):
        raise UserError("the input and the output are the same file; choose another output")
    read = checkpoint_lib.read_checkpoint(source)  # checks the file is one vpt_jax understands
    if target.endswith(".npz") and read.layout in ("mae", "moco_v3"):
        raise UserError(
            f"{source} is a {read.layout} backbone, which an .npz would not record (it would read "
            "back as a supervised ViT); write OUT.safetensors instead"
        )
    if target.endswith(".npz"):
        checkpoint_lib.atomic_write_npz(target, {k: np.asarray(v) for k, v in read.flat.items()})
    elif read.format == "npz":
        torch_files.write_safetensors(target, read.flat)
    else:
        state_dict, _ = torch_files.read_state_dict(source)
        torch_files.write_safetensors(target, state_dict)
    return read


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_bool("force", False, "replace an existing output file", flag_values=values)


def _convert(values: flags.FlagValues, rest: list[str]) -> checkpoint_lib.Checkpoint:
    if len(rest) != 2:
        raise UserError("usage: python -m vpt_jax.models.convert IN OUT.safetensors|OUT.npz")
    read = convert(rest[0], rest[1], force=values.force)
    print(f"wrote {rest[1]}: {len(read.flat)} arrays of a {read.family} ({read.layout} layout)")
    return read


def main(argv: list[str] | None = None) -> None:
    cli.run(__doc__, _define, _convert, argv, prog="python -m vpt_jax.models.convert")


if __name__ == "__main__":
    main()
