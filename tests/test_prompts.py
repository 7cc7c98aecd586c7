"""VPT prompts: token layout, replace-not-append, init, dropout and projection."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.models.additions import Prompts, prompt_init_bound
from vpt_jax.models.vit import VisionTransformer, init_params

P = 3


def prompted(config, p=P, deep=False, prompt_dropout=0.0, prompt_dim=None) -> VisionTransformer:
    prompts = Prompts(p, deep=deep, dropout=prompt_dropout, dim=prompt_dim)
    return VisionTransformer(config, 5, additions=(prompts,))


def random_prompted_params(model, seed=0):
    params = init_params(model, seed)
    # Non-trivial prompts and head, so equalities below cannot hold by accident.
    key = jax.random.key(seed + 100)
    prompt = params["Transformer"]["prompt"]
    prompt["embeddings"] = jax.random.normal(key, prompt["embeddings"].shape)
    return params


IMAGES = jax.random.normal(jax.random.key(7), (2, 16, 16, 3))


def test_zero_prompts_reproduce_the_plain_vit(tiny_config):
    plain = VisionTransformer(tiny_config, 5)
    base = init_params(plain, 1)
    for deep in (False, True):
        model = prompted(tiny_config, p=0, deep=deep)
        params = init_params(model, 1)
        assert params["Transformer"]["prompt"]["embeddings"].shape == (
            tiny_config.num_layers if deep else 1,
            0,
            32,
        )
        params = dict(params, **{k: v for k, v in base.items() if k != "Transformer"})
        params["Transformer"] = dict(base["Transformer"], prompt=params["Transformer"]["prompt"])
        a = plain.apply({"params": base}, IMAGES)[1]["encoded"]
        b = model.apply({"params": params}, IMAGES)[1]["encoded"]
        np.testing.assert_array_equal(a, b)


def test_shallow_layout_inserts_once_after_cls(tiny_config):
    model = prompted(tiny_config, deep=False)
    params = random_prompted_params(model)
    _, out = model.apply({"params": params}, IMAGES)
    prompts = params["Transformer"]["prompt"]["embeddings"]
    assert prompts.shape == (1, P, 32)
    # Block 0 input: [cls + pos_0, prompts (no position embedding), patches + pos_1..N].
    pos = params["Transformer"]["posembed_input"]["pos_embedding"]
    x0 = out["block_0_input"]
    assert x0.shape == (2, 1 + P + 16, 32)
    np.testing.assert_allclose(x0[:, 0], jnp.broadcast_to(params["cls"][0, 0] + pos[0, 0], (2, 32)))
    np.testing.assert_array_equal(x0[:, 1 : 1 + P], jnp.broadcast_to(prompts[0], (2, P, 32)))
    np.testing.assert_allclose(x0[:, 1 + P :], out["embedded"] + pos[:, 1:], rtol=1e-6, atol=1e-6)
    # Later blocks see the previous block's output unchanged (prompt outputs included).
    np.testing.assert_array_equal(out["block_1_input"], out["block_0"])


def test_deep_prompts_replace_not_append(tiny_config):
    model = prompted(tiny_config, deep=True)
    params = random_prompted_params(model)
    _, out = model.apply({"params": params}, IMAGES)
    prompts = params["Transformer"]["prompt"]["embeddings"]
    assert prompts.shape == (tiny_config.num_layers, P, 32)
    for i in range(tiny_config.num_layers):
        x = out[f"block_{i}_input"]
        assert x.shape == (2, 1 + P + 16, 32)  # the length never grows
        np.testing.assert_array_equal(x[:, 1 : 1 + P], jnp.broadcast_to(prompts[i], (2, P, 32)))
        if i > 0:
            prev = out[f"block_{i - 1}"]
            np.testing.assert_array_equal(x[:, :1], prev[:, :1])
            np.testing.assert_array_equal(x[:, 1 + P :], prev[:, 1 + P :])
            assert not np.allclose(x[:, 1 : 1 + P], prev[:, 1 : 1 + P])  # old prompts dropped


def test_head_reads_cls_after_encoder_norm(tiny_config):
    model = prompted(tiny_config, deep=True)
    params = random_prompted_params(model)
    _, out = model.apply({"params": params}, IMAGES)
    np.testing.assert_array_equal(out["pre_logits"], out["encoded"][:, 0])


def test_prompt_init_is_uniform_with_the_vpt_bound(tiny_config):
    assert prompt_init_bound(16, 768) == pytest.approx(0.0625, abs=1e-4)
    big = dataclasses.replace(tiny_config, num_layers=2)
    emb = init_params(prompted(big, p=50, deep=True), 0)["Transformer"]["prompt"]["embeddings"]
    v = prompt_init_bound(4, 32)
    assert float(jnp.max(jnp.abs(emb))) <= v
    assert float(jnp.max(jnp.abs(emb))) > 0.9 * v  # spread over the whole interval
    assert abs(float(jnp.mean(emb))) < 0.1 * v


def test_prompt_dropout_is_separate_from_backbone_dropout(tiny_config):
    noisy_backbone = dataclasses.replace(tiny_config, dropout_rate=0.5)
    model = prompted(noisy_backbone, deep=True, prompt_dropout=0.0)
    params = random_prompted_params(model)
    rngs = {"dropout": jax.random.key(3)}
    det = model.apply({"params": params}, IMAGES)[0]
    frozen_backbone = model.apply(
        {"params": params}, IMAGES, train=True, backbone_train=False, rngs=rngs
    )[0]
    np.testing.assert_array_equal(det, frozen_backbone)
    # Prompt dropout alone: prompt slots are dropped per example, the rest untouched.
    model = prompted(tiny_config, deep=True, prompt_dropout=0.5)
    params = random_prompted_params(model)
    _, out = model.apply({"params": params}, IMAGES, train=True, backbone_train=False, rngs=rngs)
    slots = np.asarray(out["block_0_input"][:, 1 : 1 + P])
    assert (slots == 0).mean() > 0.2
    kept = slots != 0
    expected = np.broadcast_to(
        np.asarray(params["Transformer"]["prompt"]["embeddings"][0]) * 2, slots.shape
    )
    np.testing.assert_allclose(slots[kept], expected[kept], rtol=1e-6)
    assert not np.array_equal(kept[0], kept[1])  # a mask per example


def test_prompt_projection(tiny_config):
    model = prompted(tiny_config, deep=False, prompt_dim=8)
    params = random_prompted_params(model)
    flat = paths.flatten(params)
    assert flat["Transformer/prompt/embeddings"].shape == (1, P, 8)
    assert flat["Transformer/prompt/projection/kernel"].shape == (8, 32)
    _, out = model.apply({"params": params}, IMAGES)
    expected = (
        flat["Transformer/prompt/embeddings"][0] @ flat["Transformer/prompt/projection/kernel"]
        + flat["Transformer/prompt/projection/bias"]
    )
    np.testing.assert_allclose(out["block_0_input"][0, 1 : 1 + P], expected, rtol=1e-5, atol=1e-6)
