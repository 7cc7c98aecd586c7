"""The ViT itself: variants, exact parameter counts, names, outputs and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.models.vit import (
    PATCH_SIZES,
    SIZES,
    VisionTransformer,
    ViTConfig,
    create_model,
    init_params,
    param_shapes,
)

# Parameters with a 1000-way head at 224x224 (google-research's models_test table, extended to every
# size x patch; the dev-extra test below checks each against timm).
PARAM_COUNTS_1000 = {
    "Ti/8": 5_719_720,
    "Ti/14": 5_694_376,
    "Ti/16": 5_717_416,
    "Ti/32": 6_131_560,
    "S/8": 22_055_272,
    "S/14": 22_004_584,
    "S/16": 22_050_664,
    "S/32": 22_878_952,
    "B/8": 86_576_872,
    "B/14": 86_475_496,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/8": 304_338_920,
    "L/14": 304_203_752,
    "L/16": 304_326_632,
    "L/32": 306_535_400,
    "H/8": 632_214_760,
    "H/14": 632_045_800,
    "H/16": 632_199_400,
    "H/32": 634_960_360,
}


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("variant", sorted(PARAM_COUNTS_1000))
def test_parameter_count_with_1000_way_head(variant):
    assert count(param_shapes(create_model(variant, 1000))) == PARAM_COUNTS_1000[variant]


def test_vit_b16_backbone_count_without_head_and_pre_logits():
    shapes = paths.flatten(param_shapes(create_model("B/16", None)))
    assert not any(k.startswith(("head/", "pre_logits/")) for k in shapes)
    assert count(shapes) == 85_798_656
    with_rep = paths.flatten(param_shapes(create_model("B/16", 21843, representation_size=768)))
    assert count(with_rep) == 85_798_656 + 768 * 768 + 768 + 768 * 21843 + 21843


def test_parameter_counts_match_timm():
    from tests.torch_reference import torch

    TimmViT = pytest.importorskip("timm.models.vision_transformer").VisionTransformer

    for size, widths in SIZES.items():
        for patch in PATCH_SIZES:
            with torch.device("meta"):
                ref = TimmViT(
                    img_size=224,
                    patch_size=patch,
                    embed_dim=widths["hidden_size"],
                    depth=widths["num_layers"],
                    num_heads=widths["num_heads"],
                    mlp_ratio=widths["mlp_dim"] / widths["hidden_size"],
                    num_classes=1000,
                )
            expected = sum(t.numel() for t in ref.parameters())
            assert PARAM_COUNTS_1000[f"{size}/{patch}"] == expected, f"{size}/{patch}"


def test_variant_decoding_and_errors():
    cfg = ViTConfig.from_variant("L/14", image_size=280)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_dim) == (1024, 24, 16, 4096)
    assert (cfg.patch_size, cfg.grid_size) == (14, 20)
    with pytest.raises(ValueError, match=r"unknown ViT variant 'B/15'.*B/16"):
        ViTConfig.from_variant("B/15")
    with pytest.raises(ValueError, match="not a multiple of patch_size 16"):
        create_model("B/16", 10, image_size=200)


def test_parameter_names_follow_the_checkpoint(tiny_config):
    flat = paths.flatten(param_shapes(VisionTransformer(tiny_config, 5)))
    assert {
        "embedding/kernel",
        "embedding/bias",
        "cls",
        "Transformer/posembed_input/pos_embedding",
        "Transformer/encoderblock_1/LayerNorm_0/scale",
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel",
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel",
        "Transformer/encoderblock_1/LayerNorm_2/bias",
        "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel",
        "Transformer/encoder_norm/scale",
        "head/kernel",
    } <= set(flat)
    assert flat["embedding/kernel"].shape == (4, 4, 3, 32)  # HWIO, as the Conv in the files
    assert flat["Transformer/posembed_input/pos_embedding"].shape == (1, 17, 32)
    assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel"].shape == (
        32,
        4,
        8,
    )


def test_outputs_and_intermediates(tiny_config):
    model = VisionTransformer(tiny_config, 5)
    params = init_params(model, 0)
    # A non-zero head so logits depend on the features.
    params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
    images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-1, maxval=1)
    logits, out = model.apply({"params": params}, images)
    assert logits.shape == (3, 5)
    assert out["pre_logits"].shape == (3, 32)
    for i in range(tiny_config.num_layers):
        assert out[f"block_{i}"].shape == (3, 17, 32)
    np.testing.assert_allclose(out["pre_logits"], out["encoded"][:, 0], rtol=0, atol=0)
    expected = out["pre_logits"] @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # Without a head the model is a feature extractor.
    features, _ = VisionTransformer(tiny_config, None).apply(
        {"params": {k: v for k, v in params.items() if k != "head"}}, images
    )
    np.testing.assert_allclose(features, out["pre_logits"], rtol=1e-6, atol=1e-6)


def test_patch_embedding_equals_the_strided_convolution(tiny_config):
    model = VisionTransformer(tiny_config, None)
    params = init_params(model, 3)
    images = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
    _, out = model.apply({"params": params}, images)
    conv = (
        jax.lax.conv_general_dilated(
            images,
            params["embedding"]["kernel"],
            window_strides=(4, 4),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + params["embedding"]["bias"]
    )
    np.testing.assert_allclose(out["embedded"], conv.reshape(2, 16, 32), rtol=1e-5, atol=1e-5)


def test_representation_layer_and_gelu_switch(tiny_config):
    import dataclasses

    images = jax.random.normal(jax.random.key(5), (2, 16, 16, 3))
    rep = VisionTransformer(dataclasses.replace(tiny_config, representation_size=24), 3)
    params = init_params(rep, 0)
    _, out = rep.apply({"params": params}, images)
    expected = jnp.tanh(
        out["encoded"][:, 0] @ params["pre_logits"]["kernel"] + params["pre_logits"]["bias"]
    )
    np.testing.assert_allclose(out["pre_logits"], expected, rtol=1e-5, atol=1e-6)
    exact = VisionTransformer(dataclasses.replace(tiny_config, gelu_approximate=False), 3)
    plain = VisionTransformer(tiny_config, 3)
    base = init_params(plain, 0)
    a = plain.apply({"params": base}, images)[1]["pre_logits"]
    b = exact.apply({"params": base}, images)[1]["pre_logits"]
    assert 0 < float(jnp.max(jnp.abs(a - b))) < 1e-2  # different, but only by the approximation


def test_dropout_only_when_training(tiny_config):
    import dataclasses

    model = VisionTransformer(dataclasses.replace(tiny_config, dropout_rate=0.5), 3)
    params = init_params(model, 0)
    images = jax.random.normal(jax.random.key(6), (2, 16, 16, 3))
    a = model.apply({"params": params}, images)[1]["pre_logits"]
    b = model.apply({"params": params}, images, train=False)[1]["pre_logits"]
    np.testing.assert_array_equal(a, b)
    c = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)})[1][
        "pre_logits"
    ]
    assert not np.allclose(a, c)
    # A frozen backbone (backbone_train=False) stays deterministic while train=True.
    d = model.apply({"params": params}, images, train=True, backbone_train=False)[1]["pre_logits"]
    np.testing.assert_array_equal(a, d)


def test_bad_image_shape_is_a_clear_error(tiny_config):
    model = VisionTransformer(tiny_config, 3)
    params = init_params(model, 0)
    with pytest.raises(
        ValueError, match=r"divisible by the patch size 4; got shape \(2, 15, 16, 3\)"
    ):
        model.apply({"params": params}, jnp.zeros((2, 15, 16, 3)))
