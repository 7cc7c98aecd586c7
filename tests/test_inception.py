"""The FID Inception-v3: parity with pytorch-fid, weight conversion and loading, preprocessing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.analysis.fid import inception, inception_weights
from vpt_jax.analysis.fid.features import extract_features, inception_features_fn
from vpt_jax.models.checkpoint import CheckpointError, atomic_write_npz


@pytest.fixture(scope="module")
def torch():
    from tests.torch_reference import torch

    return torch


@pytest.fixture(scope="module")
def pth_file(torch, tmp_path_factory):
    """pytorch-fid's network, randomly initialised, saved as its weight file is: a state dict.

    Fresh BatchNorm layers (mean 0, variance 1, scale 1, bias 0) would hide mistakes in how the
    statistics are applied, so every parameter and running statistic is randomised.
    """
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if name.endswith("conv.weight"):  # He scale keeps activations O(1) through the depth
                value.normal_(0.0, (2.0 / value[0].numel()) ** 0.5, generator=gen)
            elif name.endswith(("bn.weight", "running_var")):
                value.uniform_(0.5, 2.0, generator=gen)
            elif name.endswith(("bn.bias", "running_mean", "fc.weight", "fc.bias")):
                value.normal_(0.0, 0.2, generator=gen)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def numpy_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict in the torch layout (OIHW kernels) built without torch, for error paths."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in inception.variable_shapes().items():
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
        out[inception_weights.torch_name(name)] = rng.normal(size=torch_shape).astype(np.float32)
    return out


@pytest.mark.parametrize("size", [(32, 48), (299, 299), (320, 410), (600, 200)])
def test_preprocess_matches_torch_bilinear(torch, size):
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    images = rng.random((2, *size, 3), dtype=np.float32)
    ours = np.asarray(inception.preprocess(jnp.asarray(images)))
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    theirs = F.interpolate(nchw, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_preprocess_scales_uint8():
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 30, 3), dtype=np.uint8)
    from_uint8 = inception.preprocess(jnp.asarray(images))
    from_float = inception.preprocess(jnp.asarray(images, jnp.float32) / 255.0)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-7)
    assert float(from_uint8.min()) >= -1.0 and float(from_uint8.max()) <= 1.0


def test_features_match_pytorch_fid(torch, pth_file, tmp_path, monkeypatch):
    """Convert with the CLI, extract batched with jit, compare with pytorch-fid's InceptionV3."""
    from pytorch_fid import inception as fid

    npz = tmp_path / "inception_fid.npz"
    inception_weights.main([str(pth_file), str(npz)])
    # pytorch-fid downloads its weights; hand it the random file instead.
    monkeypatch.setattr(
        fid, "load_state_dict_from_url", lambda *a, **k: torch.load(pth_file, weights_only=True)
    )
    reference = fid.InceptionV3(resize_input=True, normalize_input=True).eval()

    images = np.random.default_rng(3).random((2, 75, 90, 3), dtype=np.float32)  # not 299x299
    with torch.no_grad():
        (pool3,) = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    expected = pool3.reshape(2, 2048).numpy()
    ours = extract_features(inception_features_fn(npz), images, batch_size=2)
    assert ours.shape == (2, inception.FEATURE_DIM) and ours.dtype == np.float32
    error = np.linalg.norm(ours - expected) / np.linalg.norm(expected)
    assert error <= 1e-5, f"relative L2 error {error:.2e}"
    assert np.abs(expected[0] - expected[1]).max() > 1e-2  # the inputs were told apart


def test_npz_and_pth_load_the_same_variables(torch, pth_file, tmp_path):
    npz = tmp_path / "inception_fid.npz"
    inception_weights.convert_pth_to_npz(pth_file, npz)
    from_npz = paths.flatten(inception_weights.load_variables(npz))
    from_pth = paths.flatten(inception_weights.load_variables(pth_file))
    assert from_npz.keys() == from_pth.keys() == inception.variable_shapes().keys()
    for name in from_npz:
        np.testing.assert_array_equal(from_npz[name], from_pth[name])
    state = torch.load(pth_file, weights_only=True)
    kernel = state["Mixed_6b.branch7x7_2.conv.weight"].numpy()  # (O, I, 1, 7)
    ours = from_npz["params/Mixed_6b/branch7x7_2/conv/kernel"]  # (1, 7, I, O)
    np.testing.assert_array_equal(ours, kernel.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        from_npz["batch_stats/Mixed_7c/branch_pool/bn/var"],
        state["Mixed_7c.branch_pool.bn.running_var"].numpy(),
    )


def test_conversion_needs_no_torch_for_arrays():
    state = numpy_state_dict()
    state["fc.weight"] = np.zeros((1008, 2048), np.float32)  # ignored: FID stops at pool3
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)
    variables = inception_weights.variables_from_state_dict(state)
    assert set(variables) == {"params", "batch_stats"}
    kernel = variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, state["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))


def test_state_dict_problems_are_named():
    state = numpy_state_dict()
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["Mixed_5b.branch1x1.bn.running_mean"] = np.zeros(65, np.float32)
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)  # torchvision's ImageNet net
    with pytest.raises(CheckpointError) as info:
        inception_weights.variables_from_state_dict(state, source="w.pth")
    message = str(info.value)
    assert "missing 1 (Mixed_7c.branch_pool.conv.weight)" in message
    assert "unexpected 1 (AuxLogits.fc.weight)" in message
    assert "mis-shaped 1 (Mixed_5b.branch1x1.bn.running_mean (65,) vs (64,))" in message
    assert "\n" not in message and message.startswith("w.pth is not pytorch-fid's")
    with pytest.raises(CheckpointError, match="w.pth holds a list, not a state dict"):
        inception_weights.variables_from_state_dict([1, 2], source="w.pth")


def test_bad_weight_files_raise(torch, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="Inception weight file not found: .*nope.pth"):
        inception_weights.load_variables(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nope.npz"):
        inception_weights.load_variables(tmp_path / "nope.npz")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth is not a loadable torch state dict"):
        inception_weights.load_variables(garbage)
    module = tmp_path / "module.pth"  # a whole pickled module: weights_only refuses to run it
    torch.save(torch.nn.Linear(2, 2), module)
    with pytest.raises(CheckpointError, match="module.pth is not a loadable torch state dict"):
        inception_weights.load_variables(module)
    tensors = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], tensors)
    with pytest.raises(CheckpointError, match="list.pth holds a list, not a state dict"):
        inception_weights.load_variables(tensors)
    with pytest.raises(SystemExit) as error:
        inception_weights.main([str(tmp_path / "nope.pth"), str(tmp_path / "out.npz")])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Inception weight file not found") and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()


def test_bad_npz_weights_raise(tmp_path):
    flat = paths.flatten(inception_weights.variables_from_state_dict(numpy_state_dict()))
    del flat["params/Mixed_6e/branch7x7dbl_5/conv/kernel"]
    flat["params/head/kernel"] = np.zeros((2048, 10), np.float32)
    atomic_write_npz(tmp_path / "bad.npz", flat)
    with pytest.raises(CheckpointError) as info:
        inception_weights.load_variables(tmp_path / "bad.npz")
    message = str(info.value)
    assert "missing 1 (params/Mixed_6e/branch7x7dbl_5/conv/kernel)" in message
    assert "unexpected 1 (params/head/kernel)" in message
    assert "python -m vpt_jax.analysis.fid.inception_weights SRC.pth DST.npz" in message


def test_network_shape_and_parameter_count():
    shapes = inception.variable_shapes()
    params = sum(np.prod(s) for k, s in shapes.items() if k.startswith("params/"))
    # torchvision's inception_v3 has 27,161,264 parameters with AuxLogits and the 1000-way fc;
    # without AuxLogits (3,326,696) and fc (2,049,000) and BN statistics that leaves:
    assert params == 27_161_264 - 3_326_696 - 2_049_000 == 21_785_568
    abstract = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
    images = jax.ShapeDtypeStruct((3, 123, 77, 3), jnp.uint8)  # any size: resized to 299x299
    features = jax.eval_shape(inception.InceptionV3().apply, paths.unflatten(abstract), images)
    assert features.shape == (3, inception.FEATURE_DIM)


@pytest.mark.parametrize("argv", [[], ["only.pth"], ["a.pth", "b.npz", "c.npz"]])
def test_converter_takes_exactly_two_files(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as error:
        inception_weights.main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: expected the arguments SRC.pth DST.npz; got ")
        and err.count("\n") == 1
    )
