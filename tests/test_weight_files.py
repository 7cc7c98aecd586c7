"""PyTorch-world weight files: format sniffing, safe reading, timm/MAE/MoCo names, the converter.

Files are written here in each real format (safetensors, torch's zip and legacy pickle, npz), so
what is tested is what a downloaded file holds; torch is needed only to write and read `.pth`.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.models import convert, timm_vit, torch_files
from vpt_jax.models.checkpoint import (
    CheckpointError,
    check_fits,
    config_from_checkpoint,
    describe,
    load_pretrained,
    read_checkpoint,
)
from vpt_jax.models.vit import VisionTransformer, ViTConfig, param_shapes

# 64 per head, as every published ViT: timm names then round-trip without regrouping heads.
CONFIG = ViTConfig(
    patch_size=4, hidden_size=128, num_layers=2, num_heads=2, mlp_dim=64, image_size=8
)
POSEMB = "Transformer/posembed_input/pos_embedding"
PAYLOAD_CALLS: list[str] = []


def _torch():
    from tests.torch_reference import torch  # skips the test without torch

    return torch


def save_torch(path, state_dict, wrap=lambda tensors: tensors, **kwargs) -> str:
    torch = _torch()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    torch.save(wrap(tensors), str(path), **kwargs)
    return str(path)


def random_params(config: ViTConfig, num_classes: int | None, seed: int = 0) -> dict:
    """Every leaf random (shapes from `eval_shape`: nothing compiles)."""
    shapes = paths.flatten(param_shapes(VisionTransformer(config, num_classes)))
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in shapes.items()}


def canonical(layout: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random vpt_jax-named weights as a file of `layout` holds them."""
    flat = random_params(CONFIG, None if layout == "mae" else 10, seed)
    if layout == "mae":  # the encoder only; the stored sin-cos table has a zero class row
        flat[POSEMB][:, 0] = 0.0
    return flat


def timm_state(layout: str = "timm", seed: int = 0) -> dict[str, np.ndarray]:
    return timm_vit.from_canonical(canonical(layout, seed), layout)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_formats_are_told_apart_by_their_bytes_not_their_names(tmp_path):
    with open(tmp_path / "npz.bin", "wb") as f:  # (np.savez would append .npz to a path)
        np.savez(f, a=np.zeros(2))
    torch_files.write_safetensors(tmp_path / "st.pth", {"a": np.zeros(2, np.float32)})
    assert torch_files.sniff_format(tmp_path / "npz.bin") == "npz"
    assert torch_files.sniff_format(tmp_path / "st.pth") == "safetensors"
    save_torch(tmp_path / "zip.npz", {"a": np.zeros(2)})
    save_torch(tmp_path / "legacy.bin", {"a": np.zeros(2)}, _use_new_zipfile_serialization=False)
    assert torch_files.sniff_format(tmp_path / "zip.npz") == "torch"
    assert torch_files.sniff_format(tmp_path / "legacy.bin") == "torch"
    for name in ("zip.npz", "legacy.bin", "st.pth"):
        arrays, _ = torch_files.read_state_dict(tmp_path / name)
        assert_same(arrays, {"a": np.zeros(2, np.float32)})


def test_junk_truncated_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.pth").write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=r"junk\.pth is neither an \.npz, a \.safetensors"):
        read_checkpoint(tmp_path / "junk.pth")
    torch_files.write_safetensors(tmp_path / "full.safetensors", timm_state())
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut_header.safetensors").write_bytes(data[:40])
    save_torch(tmp_path / "full.pth", timm_state())
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    for name in ("cut.safetensors", "cut_header.safetensors", "cut.pth"):
        with pytest.raises(CheckpointError, match="truncated") as e:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value) and "download it again" in str(e.value), name
    with pytest.raises(CheckpointError, match=r"not found: .*nope\.pth; check the path"):
        read_checkpoint(tmp_path / "nope.pth")


def _record_payload(what: str) -> None:
    PAYLOAD_CALLS.append(what)


class Payload:
    """An object whose unpickling would run code: what weights_only=True must refuse."""

    def __reduce__(self):
        return (_record_payload, ("unpickled",))


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    torch = _torch()
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Payload()}, str(tmp_path / "evil.pth"))
    with pytest.raises(CheckpointError, match=r"torch\.load\(weights_only=True\)") as e:
        read_checkpoint(tmp_path / "evil.pth")
    assert "\n" not in str(e.value) and "never unpickles code" in str(e.value)
    assert PAYLOAD_CALLS == []


def test_without_torch_pth_names_the_converter_and_safetensors_still_run(tmp_path, monkeypatch):
    pth = save_torch(tmp_path / "linear-vit-b-300ep.pth.tar", timm_state("moco_v3"))
    convert.main([pth, str(tmp_path / "moco.safetensors")])
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(CheckpointError, match="needs torch, which is not installed") as e:
        read_checkpoint(pth)
    assert "python -m vpt_jax.models.convert" in str(e.value) and "\n" not in str(e.value)
    params = load_pretrained(tmp_path / "moco.safetensors", VisionTransformer(CONFIG, 10))
    assert params["head"]["kernel"].shape == (128, 10)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: t,  # timm: the state dict itself
        lambda t: {"model": t, "epoch": 99},  # MAE, Swin
        lambda t: {"state_dict": t, "arch": "vit_base", "optimizer": {"state": {}}},  # MoCo v3
        lambda t: {"state_dict": {"model": t}},
    ],
    ids=["top", "model", "state_dict", "nested"],
)
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrap):
    state = timm_state()
    arrays, fmt = torch_files.read_state_dict(save_torch(tmp_path / "w.pth", state, wrap))
    assert fmt == "torch"
    assert_same(arrays, state)


@pytest.mark.parametrize("layout", timm_vit.LAYOUTS)
def test_timm_layouts_round_trip_exactly(layout):
    flat = canonical(layout)
    state = timm_vit.from_canonical(flat, layout)
    assert timm_vit.matches(state)
    back, found = timm_vit.to_canonical(state)
    assert found == layout
    assert_same(back, flat)
    assert_same(timm_vit.from_canonical(back, layout), state)
    if layout == "moco_v3":
        assert all(k.startswith("module.") for k in state)
    # The names and shapes of the notes' table (timm's own _load_weights, inverted).
    if layout != "moco_v3":
        assert state["blocks.0.attn.qkv.weight"].shape == (384, 128)
        assert state["blocks.0.attn.proj.weight"].shape == (128, 128)
        assert state["patch_embed.proj.weight"].shape == (128, 3, 4, 4)
        assert state["blocks.1.mlp.fc1.weight"].shape == (64, 128)
        assert ("head.weight" in state) == (layout != "mae")


def test_qkv_rows_split_head_major_into_query_key_value():
    state = timm_state()
    flat, _ = timm_vit.to_canonical(state)
    qkv, bias = state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"]
    attention = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
    for s, name in enumerate(("query", "key", "value")):
        kernel = flat[f"{attention}/{name}/kernel"]  # (D, H, h)
        for head in range(2):
            rows = qkv[s * 128 + head * 64 : s * 128 + (head + 1) * 64]
            np.testing.assert_array_equal(kernel[:, head, :], rows.T)
            np.testing.assert_array_equal(
                flat[f"{attention}/{name}/bias"][head], bias[s * 128 + head * 64 :][:64]
            )
    out = flat[f"{attention}/out/kernel"]  # (H, h, D): out[h, j, o] = proj[o, h * 64 + j]
    np.testing.assert_array_equal(out[1, 3], state["blocks.0.attn.proj.weight"][:, 64 + 3])


def test_moco_pretraining_file_keeps_only_the_base_encoder(tmp_path):
    linear = timm_state("moco_v3")
    encoder = {k[len("module.") :]: v for k, v in linear.items() if ".head." not in f".{k}"}
    rng = np.random.default_rng(1)
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state |= {f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()}
    for prefix in ("module.base_encoder.head", "module.momentum_encoder.head", "module.predictor"):
        state[f"{prefix}.0.weight"] = rng.normal(size=(32, 128)).astype(np.float32)
        state[f"{prefix}.1.running_mean"] = np.zeros(32, np.float32)
    path = save_torch(tmp_path / "vit-b-300ep.pth.tar", state, lambda t: {"state_dict": t})
    got = read_checkpoint(path)
    assert (got.layout, got.family, got.format) == ("moco_v3", "vit", "torch")
    want, _ = timm_vit.to_canonical(linear)
    assert_same(got.flat, {k: v for k, v in want.items() if not k.startswith("head/")})


def test_mae_is_told_from_plain_timm_by_its_zero_class_row_and_missing_head():
    state = timm_state("mae")
    assert timm_vit.to_canonical(state)[1] == "mae"
    learned = dict(state, pos_embed=state["pos_embed"] + 0.1)  # a DINO-style headless file
    assert timm_vit.to_canonical(learned)[1] == "timm"
    finetuned = dict(state, **{"fc_norm.weight": np.ones(128), "fc_norm.bias": np.zeros(128)})
    flat, layout = timm_vit.to_canonical(finetuned)
    assert layout == "timm" and "fc_norm/scale" in flat
    assert config_from_checkpoint(flat).pool == "gap"  # an average-pooled model's file
    assert config_from_checkpoint(timm_vit.to_canonical(state)[0]) == CONFIG  # heads: 64 each
    # Its final norm is kept under our name; only a gap model's loader drops it.
    assert "Transformer/encoder_norm/scale" in timm_vit.to_canonical(state)[0]


@pytest.mark.parametrize("prefix", ["", "vit."])
def test_transformers_vit_names_are_refused(tmp_path, prefix):
    names = (
        "embeddings.cls_token",
        "embeddings.patch_embeddings.projection.weight",
        "encoder.layer.0.attention.attention.query.weight",
        "layernorm.weight",
    )
    arrays = {prefix + n: np.zeros((2, 2), np.float32) for n in names}
    torch_files.write_safetensors(tmp_path / "model.safetensors", arrays)
    with pytest.raises(CheckpointError, match="Hugging Face transformers ViTModel") as e:
        read_checkpoint(tmp_path / "model.safetensors")
    assert "timm/<name> model.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_a_state_dict_of_another_network_is_one_line(tmp_path):
    arrays = {f"layer{i}.conv.weight": np.zeros((2, 2), np.float32) for i in range(6)}
    torch_files.write_safetensors(tmp_path / "resnet.safetensors", arrays)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "resnet.safetensors")
    message = str(e.value)
    assert "is a safetensors file whose names are neither a timm-layout ViT's nor a Swin" in message
    assert "layer0.conv.weight" in message and "(2 more)" in message
    assert "timm ViTs (incl. MAE and MoCo v3) and Swin Transformers" in message


def test_unknown_keys_pass_through_to_the_loader_error():
    state = dict(
        timm_state(), **{"blocks.0.ls1.gamma": np.ones(128), "norm_pre.weight": np.ones(1)}
    )
    flat, _ = timm_vit.to_canonical(state)
    assert "blocks.0.ls1.gamma" in flat and "norm_pre.weight" in flat


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_misfit_errors_name_missing_unexpected_and_misshaped_keys(tmp_path, fmt):
    state = timm_state("timm" if fmt == "safetensors" else "moco_v3")
    prefix = "" if fmt == "safetensors" else "module."
    del state[f"{prefix}blocks.1.norm1.weight"]
    state[f"{prefix}blocks.1.extra.weight"] = np.zeros((3, 3), np.float32)
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        torch_files.write_safetensors(path, state)
    else:
        path = save_torch(tmp_path / "moco.pth.tar", state, lambda t: {"state_dict": t})
    wider = VisionTransformer(ViTConfig(**{**vars(CONFIG), "mlp_dim": 32}), 10)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(path, wider)
    message = str(e.value)
    layout = "timm" if fmt == "safetensors" else "moco_v3"
    assert f"({fmt} file, {layout} layout) holds a ViT (hidden 128, 2 layers, patch 4)" in message
    assert "1 missing: Transformer/encoderblock_1/LayerNorm_0/scale" in message
    assert "1 unexpected: blocks.1.extra.weight" in message
    assert "6 mis-shaped: " in message
    kernel = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
    assert f"{kernel} (checkpoint (128, 64) vs model (128, 32))" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="1 missing"):
        check_fits(read_checkpoint(path), VisionTransformer(CONFIG, 10))  # shapes alone


def test_a_swin_file_for_a_vit_says_which_family_each_is(tmp_path):
    from vpt_jax.models import swin_checkpoint
    from vpt_jax.models.swin import SwinConfig, SwinTransformer

    swin = SwinConfig(
        embed_dim=16, depths=(2,), num_heads=(2,), window_size=2, patch_size=2, image_size=8
    )
    shapes = paths.flatten(param_shapes(SwinTransformer(swin, 3)))
    flat = {k: np.ones(v.shape, np.float32) for k, v in shapes.items()}
    torch_files.write_safetensors(
        tmp_path / "swin.safetensors", swin_checkpoint.from_canonical(flat, "swin_timm")
    )
    read = read_checkpoint(tmp_path / "swin.safetensors")
    assert read.family == "swin" and "Swin Transformer (embed 16, 2 blocks" in describe(read.flat)
    with pytest.raises(CheckpointError, match="the file holds a Swin, the model is a ViT"):
        check_fits(read, VisionTransformer(CONFIG, 3))
    torch_files.write_safetensors(tmp_path / "vit.safetensors", timm_state())
    with pytest.raises(CheckpointError, match="the file holds a ViT, the model is a Swin"):
        check_fits(read_checkpoint(tmp_path / "vit.safetensors"), SwinTransformer(swin, 3))


def test_converter_keeps_the_files_names_and_refuses_to_overwrite(tmp_path, capsys):
    state = timm_state("moco_v3")
    source = save_torch(tmp_path / "linear-vit-b-300ep.pth.tar", state, lambda t: {"state_dict": t})
    target = str(tmp_path / "moco.safetensors")
    convert.main([source, target])
    assert "wrote" in capsys.readouterr().out
    arrays, fmt = torch_files.read_state_dict(target)
    assert fmt == "safetensors"
    assert_same(arrays, state)  # the file's own names: timm (after the prefix) still reads it
    assert read_checkpoint(target).layout == "moco_v3"
    with pytest.raises(SystemExit) as e:
        convert.main([source, target])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "exists; pass --force" in err
    convert.main([source, target, "--force", "--layout=timm"])
    plain = torch_files.read_state_dict(target)[0]
    assert_same(plain, {k[len("module.") :]: v for k, v in state.items()})
    assert read_checkpoint(target).layout == "timm"


def test_converter_writes_npz_in_the_google_layout_and_back(tmp_path):
    torch_files.write_safetensors(tmp_path / "model.safetensors", timm_state(seed=2))
    convert.main([str(tmp_path / "model.safetensors"), str(tmp_path / "vit.npz")])
    via_npz = read_checkpoint(tmp_path / "vit.npz")
    assert (via_npz.layout, via_npz.format) == ("original", "npz")
    assert_same(via_npz.flat, read_checkpoint(tmp_path / "model.safetensors").flat)
    convert.main([str(tmp_path / "vit.npz"), str(tmp_path / "again.safetensors")])
    again = read_checkpoint(tmp_path / "again.safetensors")  # an npz becomes timm names
    assert again.layout == "timm"
    assert_same(again.flat, via_npz.flat)


@pytest.mark.parametrize(
    "args, message",
    [
        (["junk.bin", "out.safetensors"], "junk.bin is neither an .npz"),
        (["model.safetensors", "out.pt"], "out.pt: the output must end in .safetensors or .npz"),
        (["model.safetensors", "out.npz", "--layout=timm"], "--layout=timm writes an .safetensors"),
        (["model.safetensors", "out.safetensors", "--layout=bad"], "layout"),
        (["model.safetensors"], "usage: python -m vpt_jax.models.convert IN OUT"),
        (["mae.safetensors", "out.npz"], "mae backbone, which an .npz would not record"),
    ],
)
def test_converter_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    torch_files.write_safetensors(tmp_path / "model.safetensors", timm_state())
    torch_files.write_safetensors(tmp_path / "mae.safetensors", timm_state("mae"))
    with pytest.raises(SystemExit) as e:
        convert.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
