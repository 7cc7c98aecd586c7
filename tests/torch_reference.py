"""Imports the PyTorch reference stack (dev extra) for parity tests, or skips the test module.

The torchvision wheel that pairs with the local CPU torch is a CUDA build whose custom ops are missing
on the CPU build; registering their schemas lets torchvision (and timm, pytorch-fid) import.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _register_torchvision_ops() -> None:
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _register_torchvision_ops.lib = lib  # keep the library object alive
    except RuntimeError:
        pass  # already defined (a real CPU torchvision, or a second import)


_register_torchvision_ops()
torch.set_num_threads(2)
