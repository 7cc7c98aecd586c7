"""Checkpoint I/O: the google-research .npz layouts, head/pre_logits handling, resizing, errors."""

from __future__ import annotations

import dataclasses
import os
import zipfile

import jax
import numpy as np
import pytest
import scipy.ndimage

from vpt_jax import paths
from vpt_jax.models.checkpoint import (
    CheckpointError,
    load_pretrained,
    read_npz,
    resize_posemb,
    save_npz,
)
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params

POSEMB = "Transformer/posembed_input/pos_embedding"


def random_params(config: ViTConfig, num_classes: int | None, seed: int = 0) -> dict:
    """Parameters with every leaf random (no zero heads or unit LayerNorms), as a real file has."""
    shapes = paths.flatten(init_params(VisionTransformer(config, num_classes), seed))
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in shapes.items()}


def write_in21k(path, config: ViTConfig, seed: int = 0) -> dict:
    """A checkpoint in the original in21k layout: pre-linen names, pre_logits, 21843-way head."""
    flat = random_params(
        dataclasses.replace(config, representation_size=config.hidden_size), 7, seed
    )
    flat["head/kernel"] = np.zeros((config.hidden_size, 21843), np.float32)
    flat["head/bias"] = np.zeros((21843,), np.float32)
    save_npz(path, flat)
    return flat


def test_in21k_file_layout_is_the_original_one(tmp_path, tiny_config):
    write_in21k(tmp_path / "ViT-tiny.npz", tiny_config)
    with np.load(tmp_path / "ViT-tiny.npz", allow_pickle=False) as f:
        keys = set(f.files)
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in keys
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in keys
    assert "Transformer/encoderblock_0/LayerNorm_2/scale" in keys
    assert {"pre_logits/kernel", "head/kernel", "cls", POSEMB} <= keys


def test_load_in21k_drops_pre_logits_and_replaces_head(tmp_path, tiny_config):
    flat = write_in21k(tmp_path / "in21k.npz", tiny_config)
    model = VisionTransformer(tiny_config, 10)
    params = paths.flatten(load_pretrained(tmp_path / "in21k.npz", model))
    assert not any(k.startswith("pre_logits") for k in params)
    assert params["head/kernel"].shape == (32, 10)
    np.testing.assert_array_equal(params["head/kernel"], 0)  # fresh zero head
    for k, v in params.items():
        if not k.startswith("head/"):
            np.testing.assert_array_equal(v, flat[k], err_msg=k)
    # With a representation layer the file's pre_logits is kept.
    rep = VisionTransformer(dataclasses.replace(tiny_config, representation_size=32), 10)
    kept = paths.flatten(load_pretrained(tmp_path / "in21k.npz", rep))
    np.testing.assert_array_equal(kept["pre_logits/kernel"], flat["pre_logits/kernel"])


def test_keep_head_when_shapes_fit(tmp_path, tiny_config):
    flat = random_params(tiny_config, 6)
    save_npz(tmp_path / "ft.npz", flat)
    model = VisionTransformer(tiny_config, 6)
    kept = paths.flatten(load_pretrained(tmp_path / "ft.npz", model, keep_head=True))
    np.testing.assert_array_equal(kept["head/kernel"], flat["head/kernel"])
    fresh = paths.flatten(
        load_pretrained(tmp_path / "ft.npz", VisionTransformer(tiny_config, 3), keep_head=True)
    )
    assert fresh["head/kernel"].shape == (32, 3)


@pytest.mark.parametrize("layout", ["linen", "big_vision"])
def test_other_layouts_load_to_the_same_function(tmp_path, tiny_config, layout):
    flat = random_params(tiny_config, None)
    save_npz(tmp_path / "orig.npz", flat)
    save_npz(tmp_path / f"{layout}.npz", flat, layout=layout)
    keys = set(read_npz(tmp_path / f"{layout}.npz"))
    if layout == "big_vision":
        assert "params/pos_embedding" in keys and "params/cls" in keys
        assert read_npz(tmp_path / "big_vision.npz")["params/pos_embedding"].shape == (1, 16, 32)
    assert any("MultiHeadDotProductAttention_0" in k for k in keys)
    model = VisionTransformer(tiny_config, None)
    a = load_pretrained(tmp_path / "orig.npz", model)
    b = load_pretrained(tmp_path / f"{layout}.npz", model)
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    fa = model.apply({"params": a}, images)[0]
    fb = model.apply({"params": b}, images)[0]
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)


def test_big_vision_scan_layout(tmp_path, tiny_config):
    flat = random_params(tiny_config, None)
    bv = read_npz_after_save(tmp_path, flat, "big_vision")
    blocks = sorted({k.split("/")[2] for k in bv if "encoderblock_" in k})
    stacked = {k: v for k, v in bv.items() if "encoderblock_" not in k}
    for leaf in {k.split("/", 3)[3] for k in bv if "encoderblock_0/" in k}:
        stacked[f"params/Transformer/encoderblock/{leaf}"] = np.stack(
            [bv[f"params/Transformer/{b}/{leaf}"] for b in blocks]
        )
    np.savez(tmp_path / "scan.npz", **stacked)
    model = VisionTransformer(tiny_config, None)
    loaded = paths.flatten(load_pretrained(tmp_path / "scan.npz", model))
    for k, v in flat.items():
        if k not in (POSEMB, "cls"):
            np.testing.assert_array_equal(loaded[k], v, err_msg=k)


def read_npz_after_save(tmp_path, flat, layout):
    save_npz(tmp_path / f"{layout}-tmp.npz", flat, layout=layout)
    return read_npz(tmp_path / f"{layout}-tmp.npz")


def test_position_embedding_resize_matches_scipy_zoom(tmp_path, tiny_config):
    flat = random_params(tiny_config, None)
    save_npz(tmp_path / "a.npz", flat)
    big = VisionTransformer(dataclasses.replace(tiny_config, image_size=24), None)  # grid 4 -> 6
    loaded = paths.flatten(load_pretrained(tmp_path / "a.npz", big))[POSEMB]
    old = flat[POSEMB]
    grid = scipy.ndimage.zoom(old[0, 1:].reshape(4, 4, 32), (1.5, 1.5, 1), order=1)
    np.testing.assert_array_equal(loaded[:, :1], old[:, :1])
    np.testing.assert_allclose(loaded[0, 1:], grid.reshape(36, 32), rtol=1e-6)
    # Corner-aligned linear zoom: the four corner positions are kept exactly.
    for (r, c), (R, C) in {(0, 0): (0, 0), (0, 3): (0, 5), (3, 0): (5, 0), (3, 3): (5, 5)}.items():
        np.testing.assert_allclose(loaded[0, 1 + R * 6 + C], old[0, 1 + r * 4 + c], rtol=1e-6)
    rect = resize_posemb(old, (2, 6))
    assert rect.shape == (1, 13, 32)


def test_missing_file_is_named(tmp_path, tiny_config):
    with pytest.raises(
        CheckpointError, match=r"checkpoint file not found: .*nope\.npz; check the path"
    ):
        load_pretrained(tmp_path / "nope.npz", VisionTransformer(tiny_config, 2))


def test_truncated_file_is_one_clear_line(tmp_path, tiny_config):
    save_npz(tmp_path / "full.npz", random_params(tiny_config, None))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.npz is not a readable \.npz checkpoint") as e:
        load_pretrained(tmp_path / "cut.npz", VisionTransformer(tiny_config, 2))
    assert "\n" not in str(e.value) and "download it again" in str(e.value)


def test_non_npz_and_pickled_files_are_refused(tmp_path, tiny_config):
    (tmp_path / "text.npz").write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable .npz checkpoint"):
        read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "pickled.npz", cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="it holds pickled data"):
        read_npz(tmp_path / "pickled.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="single array"):
        read_npz(tmp_path / "single.npy")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("weights.bin", b"\x00" * 10)
    with pytest.raises(CheckpointError, match="zip archive but not an .npz checkpoint"):
        read_npz(tmp_path / "other.npz")


def test_wrong_architecture_names_every_key_with_both_shapes(tmp_path, tiny_config):
    flat = random_params(tiny_config, None)
    del flat["Transformer/encoderblock_1/LayerNorm_0/scale"]
    flat["Transformer/encoderblock_1/extra/kernel"] = np.zeros((2, 2), np.float32)
    save_npz(tmp_path / "odd.npz", flat)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "odd.npz", VisionTransformer(tiny_config, 2))
    msg = str(e.value)
    assert "1 missing: Transformer/encoderblock_1/LayerNorm_0/scale" in msg
    assert "1 unexpected: Transformer/encoderblock_1/extra/kernel" in msg
    wider = VisionTransformer(dataclasses.replace(tiny_config, mlp_dim=48), 2)
    save_npz(tmp_path / "ok.npz", random_params(tiny_config, None))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "ok.npz", wider)
    msg = str(e.value)
    assert "6 mis-shaped" in msg
    assert (
        "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel (checkpoint (32, 64) vs model (32, 48))"
        in msg
    )
    assert "\n" not in msg and "choose the matching variant" in msg


def test_file_of_another_size_says_what_it_holds(tmp_path):
    small = ViTConfig.from_variant("Ti/16", image_size=32)
    save_npz(tmp_path / "ti.npz", random_params(small, None))
    with pytest.raises(
        CheckpointError, match=r"holds ViT-Ti/16 \(hidden 192, 12 layers, patch 16\)"
    ):
        load_pretrained(
            tmp_path / "ti.npz", VisionTransformer(ViTConfig.from_variant("S/16", image_size=32), 2)
        )


def test_save_is_atomic_and_never_leaves_partial_files(tmp_path, tiny_config):
    target = tmp_path / "ckpt.npz"
    save_npz(target, random_params(tiny_config, None, seed=1))
    before = target.read_bytes()

    class Boom(dict):
        def items(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_npz(target, {"cls": Boom()})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
