"""The Swin Transformer: parity with timm (official and timm files, tiny and full-size Swin-B),
prompted parity with a PyTorch re-expression of the official VPT code, batch (in)dependence of
prompts, parameter counts, layouts, and every strategy training on it.

XLA's CPU compiles dominate this file's time; the tiny models are compiled with LLVM's cheap passes
(`FAST`; results agree with the default to ~1e-9), each once, and filled with numpy noise instead of
the (eager, per-shape compiled) initialisers wherever the initialiser itself is not under test.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.swin_reference import attention_mask, prompted_swin
from tests.swin_reference import relative_position_index as official_index
from tests.torch_reference import torch
from vpt_jax import paths
from vpt_jax.models import swin_checkpoint
from vpt_jax.models.additions import LoRA, Prompts, prompt_init_bound
from vpt_jax.models.checkpoint import load_pretrained, read_checkpoint
from vpt_jax.models.family import SWIN_LAYOUT
from vpt_jax.models.swin import SwinConfig, SwinTransformer
from vpt_jax.models.swin_blocks import MASKED, relative_position_index, shift_mask
from vpt_jax.models.torch_files import write_safetensors
from vpt_jax.models.vit import param_shapes
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import STRATEGIES, get_strategy

timm_swin = pytest.importorskip("timm.models.swin_transformer")

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# timm shapes. Two stages, window 2: 8x8 then 4x4 tokens, 16 and 4 (shifted) windows, so the
# official prompt order matters in both stages (the prompted tests use it too).
TWO = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2)
# One stage (a plain and a shifted block in 4 windows): the cheapest to initialise.
ONE = dict(img_size=16, patch_size=4, embed_dim=8, depths=(2,), num_heads=(2,), window_size=2)
# Three stages: 16x16, 8x8, then 4x4 tokens clipped to one window without shift.
THREE = dict(
    img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4
)
# The smallest two-stage model: 4 windows of 2x2 tokens, a merge, then one clipped window.
SMALL = SwinConfig(
    embed_dim=8, depths=(1, 1), num_heads=(2, 2), window_size=2, patch_size=4, image_size=16
)


def config_of(kwargs: dict, **overrides) -> SwinConfig:
    names = ("embed_dim", "depths", "num_heads", "window_size", "patch_size")
    return SwinConfig(**{k: kwargs[k] for k in names}, image_size=kwargs["img_size"], **overrides)


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def images_of(seed: int, n: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def random_timm(seed: int, kwargs: dict):
    """timm's Swin with every parameter randomised (norms and bias tables included)."""
    torch.manual_seed(seed)
    model = timm_swin.SwinTransformer(**kwargs, num_classes=5).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.from_numpy(rng.normal(0, 0.05, tuple(p.shape)).astype(np.float32)))
    return model


def timm_state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def timm_outputs(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """timm's pooled features and logits of NHWC images."""
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2))
        features = model.forward_head(tokens, pre_logits=True)
        return features.numpy(), model.forward_head(tokens).numpy()


def compiled(fn, *args, options=FAST):
    """`fn` compiled once for these argument shapes."""
    return jax.jit(fn).lower(*args).compile(options)


def forward(model, params, images, options=FAST):
    """A compiled `(params, images) -> (logits, out)` of `model` (reusable at the same shapes)."""
    return compiled(lambda p, x: model.apply({"params": p}, x), params, images, options=options)


def random_params(model, seed: int) -> dict:
    """Nested numpy parameters of `model`: noisy norms, bias tables, prompts; scaled kernels."""
    rng = np.random.default_rng(seed)

    def leaf(path: str, shape: tuple[int, ...]) -> np.ndarray:
        noise = rng.normal(size=shape)
        if path.endswith("/scale"):
            return (1 + 0.1 * noise).astype(np.float32)
        if path.endswith(("/bias", "bias_table")) or path.startswith("prompt/"):
            return (0.5 * noise).astype(np.float32)
        fan_in = np.prod(shape[:-1]) if path.endswith("out/kernel") or len(shape) != 3 else shape[0]
        return (noise / np.sqrt(fan_in)).astype(np.float32)

    flat = paths.flatten(param_shapes(model))
    return paths.unflatten({k: leaf(k, v.shape) for k, v in flat.items()})


def test_swin_loads_the_official_and_the_timm_files(tmp_path):
    """`read_checkpoint` + `load_pretrained` on an official `.pth` and a timm `.safetensors`."""
    model = random_timm(0, ONE)
    timm_sd = timm_state(model)
    flat, _ = swin_checkpoint.to_canonical(timm_sd)
    official = {k: torch.from_numpy(v) for k, v in swin_checkpoint.from_canonical(flat).items()}
    torch.save({"model": official}, tmp_path / "official.pth")
    write_safetensors(tmp_path / "timm.safetensors", timm_sd)
    images = images_of(2, 3, 16)
    features, logits = timm_outputs(model, images)
    ours = SwinTransformer(config_of(ONE), 5)
    run = None
    for name, expected in (("official.pth", "swin_official"), ("timm.safetensors", "swin_timm")):
        checkpoint = read_checkpoint(tmp_path / name)
        assert (checkpoint.family, checkpoint.layout) == ("swin", expected)
        found = swin_checkpoint.config_from_checkpoint(checkpoint.flat)
        assert dataclasses.replace(found, image_size=16) == config_of(ONE)
        params = load_pretrained(checkpoint, ours, keep_head=True)
        run = run or forward(ours, params, images)
        got_logits, out = run(params, images)
        assert rel_l2(out["pre_logits"], features) <= 1e-5, name
        assert rel_l2(got_logits, logits) <= 1e-5, name
    # Into a prompted model: the backbone from the file, fresh prompts and a fresh VPT head.
    prompted = SwinTransformer(config_of(ONE), 5, (Prompts(4, deep=True),))
    flat = paths.flatten(load_pretrained(tmp_path / "official.pth", prompted))
    kernel = params["block_1"]["mlp"]["fc2"]["kernel"]
    np.testing.assert_array_equal(flat["block_1/mlp/fc2/kernel"], kernel)
    prompts = np.asarray(flat["prompt/embeddings_0"])
    bound = prompt_init_bound(4, 8)
    assert prompts.shape == (2, 4, 8) and bound / 2 < np.abs(prompts).max() <= bound
    np.testing.assert_allclose(flat["head/bias"], -np.log(99), rtol=1e-6)


def test_swin_matches_timm_in_both_layouts_and_the_reference():
    kwargs = THREE
    model = random_timm(3, kwargs)
    flat, layout = swin_checkpoint.to_canonical(timm_state(model))
    assert layout == "swin_timm"
    official = swin_checkpoint.from_canonical(flat, "swin_official")
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    # timm reads the official layout through its own filter: both hold the same network.
    reloaded = random_timm(1, kwargs)
    torch_official = {k: torch.from_numpy(v) for k, v in official.items()}
    reloaded.load_state_dict(timm_swin.checkpoint_filter_fn(torch_official, reloaded))
    images = images_of(4, 2, kwargs["img_size"])
    features, logits = timm_outputs(model, images)
    np.testing.assert_allclose(timm_outputs(reloaded, images)[1], logits, rtol=1e-5, atol=1e-6)
    ours = SwinTransformer(config_of(kwargs), 5)
    from_official, layout = swin_checkpoint.to_canonical(official)
    assert layout == "swin_official"
    params = paths.unflatten(from_official)
    got_logits, out = forward(ours, params, images)(params, images)
    assert rel_l2(out["pre_logits"], features) <= 1e-5
    assert rel_l2(got_logits, logits) <= 1e-5
    last = sum(kwargs["depths"]) - 1
    assert {"embedded", "block_0", f"block_{last}", "encoded", "logits"} <= set(out)
    assert out["encoded"].shape == out[f"block_{last}"].shape == (2, 16, ours.config.hidden_size)
    head, _ = ours.apply({"params": params}, out["pre_logits"], from_features=True)
    np.testing.assert_allclose(head, got_logits, rtol=1e-5, atol=1e-6)
    # The reference without prompts agrees too: the prompted comparisons rest on it.
    shape = {k: kwargs[k] for k in ("depths", "num_heads", "window_size", "patch_size")}
    reference_features, reference_logits = prompted_swin(official, images, **shape)
    assert rel_l2(reference_features, features) <= 1e-5
    assert rel_l2(reference_logits, logits) <= 1e-5


@pytest.fixture(scope="module")
def timm_swin_b():
    """timm's Swin-B (7 classes), LayerNorms and bias tables away from their initial values."""
    torch.manual_seed(0)
    model = timm_swin.swin_base_patch4_window7_224(num_classes=7).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "bias_table" in name:
                p.add_(torch.from_numpy(rng.normal(0, 0.05, tuple(p.shape)).astype(np.float32)))
    return model


def test_full_size_swin_b_matches_timm(timm_swin_b):
    flat, _ = swin_checkpoint.to_canonical(timm_state(timm_swin_b))
    config = SwinConfig.from_variant("B")
    assert swin_checkpoint.config_from_checkpoint(flat) == config
    ours = SwinTransformer(config, 7)
    images = images_of(0, 1, 224)
    features, logits = timm_outputs(timm_swin_b, images)
    params = paths.unflatten(flat)  # as the file holds them (initialising 88M on CPU is slow)
    got_logits, out = forward(ours, params, images)(params, images)
    assert rel_l2(out["pre_logits"], features) <= 1e-5
    assert rel_l2(got_logits, logits) <= 1e-5


def test_swin_b_parameter_counts(timm_swin_b):
    count = lambda leaves: sum(int(np.prod(x.shape)) for x in leaves)
    # The backbone (timm's num_classes=0); bias tables are parameters there, buffers are not.
    timm_count = sum(p.numel() for n, p in timm_swin_b.named_parameters() if "head" not in n)
    deep = SwinTransformer(SwinConfig.from_variant("B"), None, (Prompts(3, deep=True),))
    shapes = paths.flatten(param_shapes(deep))
    prompts = {k: v for k, v in shapes.items() if k.startswith("prompt/")}
    backbone = [v for k, v in shapes.items() if k not in prompts]
    assert count(backbone) == timm_count == 86_743_224
    assert count(prompts.values()) == 12_032 * 3
    # One tensor per stage, one set per block (2 + 2 + 18 + 2).
    assert [prompts[f"prompt/embeddings_{s}"].shape for s in range(4)] == [
        (2, 3, 128), (2, 3, 256), (18, 3, 512), (2, 3, 1024)
    ]  # fmt: skip
    shallow = paths.flatten(param_shapes(SwinTransformer(SMALL, None, (Prompts(3),))))
    assert [(k, v.shape) for k, v in shallow.items() if k.startswith("prompt/")] == [
        ("prompt/embeddings_0", (1, 3, 8))
    ]


def test_layouts_round_trip():
    timm_sd = timm_state(random_timm(5, THREE))
    flat, _ = swin_checkpoint.to_canonical(timm_sd)
    assert flat["block_0/attn/query/kernel"].shape == (16, 2, 8)
    assert flat["block_0/attn/out/kernel"].shape == (2, 8, 16)
    assert flat["block_0/mlp/fc1/kernel"].shape == (16, 64)
    assert flat["patch_embed/proj/kernel"].shape == (2, 2, 3, 16)
    assert flat["merge_1/reduction/kernel"].shape == (128, 64)
    ours = {
        k: v.shape
        for k, v in paths.flatten(param_shapes(SwinTransformer(config_of(THREE), 5))).items()
    }
    assert {k: v.shape for k, v in flat.items()} == ours
    timm_back = swin_checkpoint.from_canonical(flat, "swin_timm")
    assert set(timm_back) == set(timm_sd)
    assert all(np.array_equal(timm_back[k], timm_sd[k]) for k in timm_sd)
    official = swin_checkpoint.from_canonical(flat, "swin_official")
    assert "layers.1.downsample.norm.weight" in official and "head.weight" in official
    # The official files carry both buffers; they are dropped (recomputed), never read.
    official["layers.0.blocks.1.attn_mask"] = np.zeros((16, 16, 16), np.float32)
    back, layout = swin_checkpoint.to_canonical(official)
    assert layout == "swin_official" and set(back) == set(flat)
    assert all(np.array_equal(back[k], flat[k]) for k in flat)
    # Names outside the layout pass through for the loader to report, never silently dropped.
    extra, _ = swin_checkpoint.to_canonical({**timm_sd, "layers.0.blocks.0.attn.extra": np.ones(2)})
    assert "layers.0.blocks.0.attn.extra" in extra


def test_relative_position_index_and_shift_mask_follow_the_official_formulas():
    index = relative_position_index(7)
    h, w = np.divmod(np.arange(49), 7)
    expected = (h[:, None] - h[None] + 6) * 13 + (w[:, None] - w[None] + 6)
    np.testing.assert_array_equal(index, expected)
    for window in (2, 4, 7):
        np.testing.assert_array_equal(relative_position_index(window), official_index(window))
    for resolution, window in ((14, 7), (56, 7), (8, 2), (8, 4)):
        mask = shift_mask(resolution, window, window // 2)
        np.testing.assert_array_equal(mask, attention_mask(resolution, window, window // 2))
    mask = shift_mask(14, 7, 3)
    assert mask.shape == (4, 49, 49) and set(np.unique(mask)) == {0.0, MASKED}
    assert not mask[0].any()  # the top-left window lies in one region


def official_prompts(flat: dict[str, np.ndarray], deep: bool) -> dict[str, np.ndarray]:
    """Our prompt tensors under the official names (its shallow set is our stage 0's first)."""
    first = flat["prompt/embeddings_0"]
    out = {"prompt_embeddings": first[:1]}
    if deep:
        out["deep_prompt_embeddings_0"] = first[1:]
        stages = [k for k in flat if k.startswith("prompt/embeddings_")]
        for s in range(1, len(stages)):
            out[f"deep_prompt_embeddings_{s}"] = flat[f"prompt/embeddings_{s}"]
    return out


@pytest.mark.parametrize("mixing", [False, True], ids=["per_image", "official_order"])
@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_prompted_swin_matches_the_official_code(deep, mixing):
    model = SwinTransformer(config_of(TWO, prompt_batch_mixing=mixing), 5, (Prompts(3, deep=deep),))
    params = random_params(model, 7)
    flat = paths.flatten(params)
    sd = {**swin_checkpoint.from_canonical(flat, "swin_official"), **official_prompts(flat, deep)}
    shape = dict(depths=(2, 2), num_heads=(2, 4), window_size=2, patch_size=4, deep=deep)
    images = images_of(8, 3, 32)
    run = forward(model, params, images)
    logits, out = run(params, images)
    features, expected = prompted_swin(sd, images, per_image=not mixing, **shape)
    assert rel_l2(out["pre_logits"], features) <= 1e-5
    assert rel_l2(logits, expected) <= 1e-5
    # The first image again, with other companions.
    others = np.concatenate([images[:1], images_of(9, 2, 32)])
    again = np.asarray(run(params, others)[1]["pre_logits"])[0]
    first = np.asarray(out["pre_logits"])[0]
    if mixing:  # as in the official code, an image's output depends on the rest of its batch
        assert rel_l2(again, first) > 1e-3
        assert rel_l2(again, prompted_swin(sd, others, **shape)[0][0]) <= 1e-5
    else:
        np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-6)


def test_options_swin_does_not_define_are_refused():
    images = jnp.zeros((1, 16, 16, 3))
    for additions, message in (
        ((Prompts(2, dim=4),), "not defined for Swin"),
        ((Prompts(2), Prompts(3, deep=True)), "one set of prompts"),
    ):
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(SwinTransformer(SMALL, 3, additions).init, jax.random.key(0), images)
    assert SwinTransformer(SMALL, 3, (Prompts(2), LoRA(2, 2.0))).extra_tokens == 2
    with pytest.raises(ValueError, match="side 16"):
        jax.eval_shape(SwinTransformer(SMALL, 3).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="T, S, B, L"):
        SwinConfig.from_variant("H")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SwinConfig(image_size=30)


_GRADS: dict = {}  # additions -> compiled gradient: strategies share models


def _gradient(model, backbone_train: bool, params, images):
    # Without drop path (tested below) the backbone computes the same whether it trains or not,
    # so one compile serves every strategy with the same additions.
    assert model.config.drop_path_rate == 0
    key = model.additions
    if key not in _GRADS:

        def loss(params, images, rng):
            logits, _ = model.apply(
                {"params": params},
                images,
                train=True,
                backbone_train=backbone_train,
                rngs={"dropout": rng},
            )
            return jnp.square(logits).sum()

        _GRADS[key] = compiled(jax.grad(loss), params, images, jax.random.key(0))
    return _GRADS[key]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_trains_on_swin(name):
    config = SMALL
    strategy = get_strategy(
        name, num_prompts=2, prompt_dropout=0.1, num_layers=config.num_layers, layout=SWIN_LAYOUT,
        mlp_hidden=(8,), lora_rank=2, partial_k=1,
    )  # fmt: skip
    images = jnp.asarray(images_of(1, 2, 16))
    for stage in strategy.stages or (strategy,):
        model = stage.build_model(config, 5)
        params = random_params(model, 0)
        labels = label_paths(list(paths.flatten(params)), stage.rules)
        trained = {k for k, label in labels.items() if label != FROZEN}
        if stage.name == "vpt_deep":  # ft_then_pt's second stage too
            assert trained == {"prompt/embeddings_0", "prompt/embeddings_1", "head/kernel",
                               "head/bias"}  # fmt: skip
        if stage.name == "lora":
            lora = {k for k in trained if not k.startswith("head/")}
            assert lora and all(re.fullmatch(SWIN_LAYOUT.owned(LoRA(2, 2.0)), k) for k in lora)
        grads = _gradient(model, stage.backbone_dropout, params, images)(
            params, images, jax.random.key(1)
        )
        grads = paths.flatten(grads)
        assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
        still = {k for k in trained if not np.abs(np.asarray(grads[k])).sum()}
        assert trained and not still, (stage.name, still)


def test_drop_path_runs_only_when_the_backbone_trains():
    model = SwinTransformer(dataclasses.replace(SMALL, drop_path_rate=0.5), 5)
    params = random_params(model, 0)
    images = jnp.asarray(images_of(0, 4, 16))

    def run(**flags):
        apply = lambda p, x, rng: model.apply({"params": p}, x, rngs={"dropout": rng}, **flags)
        return compiled(apply, params, images, jax.random.key(3))(params, images, jax.random.key(3))

    frozen, evaluated, trained = (
        np.asarray(run(**flags)[1]["pre_logits"])
        for flags in (dict(train=True, backbone_train=False), dict(train=False), dict(train=True))
    )
    np.testing.assert_array_equal(frozen, evaluated)
    assert rel_l2(trained, evaluated) > 1e-3
