"""Integrated Gradients and GradCAM on tiny FT and VPT models, and the FT-vs-VPT figure command."""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import scipy.ndimage

from tests.conftest import TINY
from vpt_jax import paths
from vpt_jax.analysis.attribution import classifier, comparison, figures
from vpt_jax.analysis.attribution.baselines import gaussian_blur, make_baseline
from vpt_jax.analysis.attribution.gradcam import gradcam
from vpt_jax.analysis.attribution.integrated_gradients import integrated_gradients
from vpt_jax.analysis.attribution.quadrature import METHODS, integration_points
from vpt_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import VisionTransformer, param_shapes
from vpt_jax.models.vit_blocks import Encoder1DBlock, MlpBlock, MultiHeadDotProductAttention
from vpt_jax.tuning.artifact import export_artifact
from vpt_jax.tuning.strategies import get_strategy

ONE_BLOCK = dataclasses.replace(TINY, num_layers=1)  # compiles faster: for the figure tests
IMAGES = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)


@functools.cache  # one model object per kind, so tests share compiled functions
def build(kind: str, prompts: int = 0, num_classes: int = 5, config=TINY) -> VisionTransformer:
    if kind == "ft":
        return VisionTransformer(config, num_classes)
    return get_strategy(kind, num_prompts=prompts).build_model(config, num_classes)


@functools.partial(jax.jit, static_argnums=0)  # eager flax compiles op by op: slow on a cold start
def forward(model, params, images):
    return model.apply({"params": params}, images)


def random_params(model: VisionTransformer, seed: int = 0, scale: float = 0.3) -> dict:
    """Every leaf random (a zero head would make every attribution zero)."""
    rng = np.random.default_rng(seed)
    shapes = paths.flatten(param_shapes(model))
    return paths.unflatten(
        {k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in shapes.items()}
    )


# ---------------------------------------------------------------- Integrated Gradients


@pytest.mark.parametrize("method", METHODS)
def test_integration_points_are_the_rules(method):
    alphas, weights = integration_points(method, 6)
    # captum's trapezoid keeps step 1/n on n points from 0 to 1: its weights sum to (n - 1) / n.
    total = 5 / 6 if method == "riemann_trapezoid" else 1.0
    assert len(alphas) == len(weights) == 6 and np.isclose(weights.sum(), total)
    assert np.all((alphas >= 0) & (alphas <= 1))
    expected = {
        "riemann_left": np.arange(6) / 6,
        "riemann_right": np.arange(1, 7) / 6,
        "riemann_middle": (np.arange(6) + 0.5) / 6,
        "riemann_trapezoid": np.arange(6) / 5,
    }
    if method in expected:
        np.testing.assert_allclose(alphas, expected[method], atol=1e-12)
    if method == "riemann_trapezoid":
        np.testing.assert_allclose(weights, [1 / 12, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 12])
    if method == "gausslegendre":  # exact for polynomials of degree 2n-1 on [0, 1]
        for k in range(12):
            assert np.isclose(np.sum(weights * alphas**k), 1 / (k + 1))


def test_integration_points_refuse_bad_settings():
    with pytest.raises(UserError, match="unknown integration method"):
        integration_points("simpson", 10)
    with pytest.raises(UserError, match="more integration steps"):
        integration_points("riemann_left", 1)
    assert len(integration_points("gausslegendre", 1)[0]) == 1


@pytest.mark.parametrize("kind,prompts", [("ft", 0), ("vpt_deep", 3)])
def test_ig_completeness_holds_tightly(kind, prompts):
    model = build(kind, prompts)
    params = random_params(model, 1)
    result = integrated_gradients(model, params, IMAGES, np.array([0, 3, 1]), n_steps=32)
    logits = forward(model, params, IMAGES)[0]
    black = forward(model, params, -jnp.ones_like(IMAGES))[0]
    np.testing.assert_allclose(result.scores, logits[jnp.arange(3), jnp.array([0, 3, 1])], 1e-5)
    np.testing.assert_allclose(
        result.baseline_scores, black[jnp.arange(3), jnp.array([0, 3, 1])], 1e-5
    )
    gap = result.scores - result.baseline_scores
    assert np.all(np.abs(gap) > 0.05)  # a real difference to explain
    np.testing.assert_allclose(result.attributions.sum((1, 2, 3)), gap, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(result.delta, result.attributions.sum((1, 2, 3)) - gap, atol=1e-5)
    assert np.all(result.relative_delta < 1e-3)


def test_ig_riemann_rule_with_few_steps_is_incomplete_and_reported():
    model = build("ft")
    params = random_params(model, 1)
    coarse = integrated_gradients(model, params, IMAGES, 0, n_steps=32, method="riemann_left")
    fine = integrated_gradients(model, params, IMAGES, 0, n_steps=32)
    assert np.max(coarse.relative_delta) > 100 * np.max(fine.relative_delta)


def test_ig_chunking_and_batching_do_not_change_attributions():
    model = build("vpt_deep", 3)
    params = random_params(model, 2)
    targets = np.array([4, 0, 2])
    ref = integrated_gradients(model, params, IMAGES, targets, n_steps=32)
    # 32 points in chunks of 5: seven scan steps, the last padded with three zero-weight points.
    got = integrated_gradients(model, params, IMAGES, targets, n_steps=32, chunk_size=5)
    np.testing.assert_allclose(got.attributions, ref.attributions, rtol=1e-4, atol=1e-6)
    # Per-example targets, no leakage across the batch: permuting the batch permutes the result.
    order = np.array([2, 0, 1])
    permuted = integrated_gradients(model, params, IMAGES[order], targets[order], n_steps=32)
    np.testing.assert_allclose(permuted.attributions, ref.attributions[order], rtol=1e-4, atol=1e-6)


def test_ig_targets_default_to_predictions_and_are_checked():
    model = build("ft")
    params = random_params(model, 3)
    result = integrated_gradients(model, params, IMAGES, n_steps=32)
    predicted = np.argmax(forward(model, params, IMAGES)[0], -1)
    np.testing.assert_array_equal(result.targets, predicted)
    with pytest.raises(UserError, match=r"targets must lie in \[0, 5\)"):
        integrated_gradients(model, params, IMAGES, 5)
    with pytest.raises(UserError, match="an int or 3 ints"):
        integrated_gradients(model, params, IMAGES, [0, 1])
    with pytest.raises(UserError, match="vpt_jax.data.normalize"):
        integrated_gradients(model, params, np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(UserError, match="classifier"):
        integrated_gradients(VisionTransformer(TINY, None), params, IMAGES)


def test_baselines_in_model_space():
    x = IMAGES[:1]
    np.testing.assert_array_equal(make_baseline(x, "zeros"), np.zeros(x.shape))
    np.testing.assert_array_equal(make_baseline(x, "black"), -np.ones(x.shape))
    black = make_baseline(x, "black", normalization="imagenet")
    np.testing.assert_allclose(
        black[0, 0, 0], -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), rtol=1e-6
    )
    grey = make_baseline(x, np.full((16, 16, 3), 0.5))
    assert grey.shape == x.shape and float(grey.min()) == 0.5
    with pytest.raises(UserError, match="does not broadcast"):
        make_baseline(x, np.zeros((8, 8, 3)))
    with pytest.raises(UserError, match="unknown baseline"):
        make_baseline(x, "white")
    with pytest.raises(UserError, match="unknown normalization"):
        make_baseline(x, "black", normalization="clip")


@pytest.mark.parametrize("sigma", [0.7, 2.5, 9.0])  # 9.0: the kernel outreaches the image
def test_blur_baseline_matches_scipy(sigma):
    x = np.asarray(IMAGES)
    expected = scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")
    blurred = make_baseline(IMAGES, "blur", blur_sigma=sigma)
    np.testing.assert_allclose(blurred, expected, atol=1e-5)
    with pytest.raises(UserError, match="sigma must be positive"):
        gaussian_blur(x, 0.0)


# ---------------------------------------------------------------- GradCAM


def layer_norm(p, x):
    return nn.LayerNorm(epsilon=1e-6).apply({"params": p}, x)


def head(params, tokens):
    return (
        layer_norm(params["Transformer"]["encoder_norm"], tokens)[:, 0] @ params["head"]["kernel"]
        + params["head"]["bias"]
    )


def bilinear(maps, size):
    """Half-pixel bilinear upsampling with clamped borders (torch align_corners=False, cv2)."""
    src = np.clip((np.arange(size) + 0.5) * maps.shape[1] / size - 0.5, 0, maps.shape[1] - 1)
    lo = np.floor(src).astype(int)
    hi, frac = np.minimum(lo + 1, maps.shape[1] - 1), src - lo
    rows = maps[:, lo] * (1 - frac)[None, :, None] + maps[:, hi] * frac[None, :, None]
    return rows[:, :, lo] * (1 - frac) + rows[:, :, hi] * frac


def cam(acts, grads, prefix, mistake=None):
    """GradCAM written out: patch tokens to the grid, mean-gradient weights, ReLU, upsample, scale.

    `mistake` makes the errors the prompt test must catch: `weights` averages the gradients over
    prompts and patches, `grid` takes the 16 tokens right after CLS (prompts among them).
    """
    acts, grads = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    b, _, d = acts.shape
    tokens = slice(1, 17) if mistake == "grid" else slice(prefix, None)
    grid = acts[:, tokens].reshape(b, 4, 4, d)
    weights = grads[:, tokens].reshape(b, 4, 4, d).mean((1, 2))
    if mistake == "weights":
        weights = grads[:, 1:].mean(1)
    raw = np.maximum(np.einsum("bhwd,bd->bhw", grid, weights), 0)
    up = bilinear(raw, 16)
    up = up - up.min((1, 2), keepdims=True)
    return raw, up / (1e-7 + up.max((1, 2), keepdims=True))


def direct_last_attention_input(model, params, images, targets):
    """Activations and gradients of the last block's LayerNorm_0 output, by hand."""
    cfg, last = model.config, model.config.num_layers - 1
    x = forward(model, params, images)[1][f"block_{last}_input"]
    bp = params["Transformer"][f"encoderblock_{last}"]
    y = layer_norm(bp["LayerNorm_0"], x)

    def logits_from(y):
        attn = MultiHeadDotProductAttention(cfg.num_heads)
        h = x + attn.apply({"params": bp["MultiHeadDotProductAttention_1"]}, y, deterministic=True)
        mlp = MlpBlock(cfg.mlp_dim, gelu_approximate=cfg.gelu_approximate)
        m = mlp.apply(
            {"params": bp["MlpBlock_3"]}, layer_norm(bp["LayerNorm_2"], h), deterministic=True
        )
        return head(params, h + m)

    def score(y):
        logits = logits_from(y)
        return logits[jnp.arange(len(targets)), targets].sum(), logits

    # Jitted: eager flax is slow.
    (_, logits), grads = jax.jit(jax.value_and_grad(score, has_aux=True))(y)
    np.testing.assert_allclose(logits, forward(model, params, images)[0], 1e-5)
    return y, grads


@pytest.mark.parametrize(
    "kind,prompts",
    # vpt_shallow with 9 prompts: 9 + 16 = 25 tokens after CLS, a 5x5 square, so a GradCAM that
    # dropped only CLS would still reshape (to the wrong grid); vpt_deep 3: 19, no square at all.
    [("ft", 0), ("vpt_shallow", 9), ("vpt_deep", 3)],
)
def test_gradcam_matches_direct_computation_and_drops_prompts(kind, prompts):
    model = build(kind, prompts)
    params = random_params(model, 4)
    targets = jnp.array([1, 4, 2])
    result = gradcam(model, params, IMAGES, targets)
    acts, grads = direct_last_attention_input(model, params, IMAGES, targets)
    raw, maps = cam(acts, grads, 1 + prompts)
    assert result.num_prompts == prompts and result.raw.shape == (3, 4, 4)
    np.testing.assert_allclose(result.raw, raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.maps, maps, atol=1e-4)
    # min-max scaled per image; an image whose weighted activations are all negative stays 0
    assert np.allclose(result.maps.min((1, 2)), 0)
    np.testing.assert_allclose(result.maps.max((1, 2)), np.max(raw, (1, 2)) > 0, atol=1e-3)
    for mistake in ("weights", "grid") if prompts else ():  # keeping prompts changes the map
        wrong, _ = cam(acts, grads, 1 + prompts, mistake)
        assert np.linalg.norm(result.raw - wrong) > 0.02 * np.linalg.norm(wrong)


def test_gradcam_at_a_block_output_of_a_deep_prompted_model():
    model = build("vpt_deep", 3)
    params = random_params(model, 5)
    targets = jnp.array([0, 1, 2])
    cfg = model.config
    z = forward(model, params, IMAGES)[1]["block_0"]
    prompts = params["Transformer"]["prompt"]["embeddings"][1]
    block = Encoder1DBlock(cfg.num_heads, cfg.mlp_dim, gelu_approximate=cfg.gelu_approximate)

    def logits_from(z):  # block 1 replaces the prompt slots with its own prompts
        x = jnp.concatenate([z[:, :1], jnp.broadcast_to(prompts, (3, 3, 32)), z[:, 4:]], 1)
        bp = params["Transformer"]["encoderblock_1"]
        return head(params, block.apply({"params": bp}, x, deterministic=True))

    grads = jax.jit(jax.grad(lambda z: logits_from(z)[jnp.arange(3), targets].sum()))(z)
    result = gradcam(model, params, IMAGES, targets, block=0, site="output")
    np.testing.assert_allclose(result.raw, cam(z, grads, 4)[0], rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(result.raw).sum()) > 0


def test_gradcam_refuses_a_wrong_layout_or_block():
    model = build("vpt_deep", 3)
    params = random_params(model, 6)
    assert gradcam(model, params, IMAGES, 0, num_prompts=3).num_prompts == 3
    with pytest.raises(UserError, match="num_prompts: 2"):
        gradcam(model, params, IMAGES[:1], 0, num_prompts=2)
    with pytest.raises(UserError, match="out of range"):
        gradcam(model, params, IMAGES[:1], 0, block=2)
    with pytest.raises(UserError, match="unknown GradCAM site"):
        gradcam(model, params, IMAGES[:1], 0, site="mlp")


# ---------------------------------------------------------------- comparison figures


def test_find_disagreements_takes_both_directions():
    labels = np.zeros(12, np.int64)
    ft = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1])
    vpt = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1])
    found = comparison.find_disagreements(ft, vpt, labels, max_rows=4)
    np.testing.assert_array_equal(found.ft_only, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(found.vpt_only, [6, 7])
    np.testing.assert_array_equal(found.selected, [0, 1, 6, 7])
    few = comparison.find_disagreements(ft, vpt, labels, max_rows=6)
    np.testing.assert_array_equal(few.selected, [0, 1, 2, 3, 6, 7])


def test_compare_attributions_says_so_when_the_models_agree(tmp_path):
    model = build("ft", num_classes=3)
    params = random_params(model, 7)
    pixels = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="exactly one"):
        comparison.compare_attributions(
            (model, params), (model, params), pixels, np.arange(6) % 3, tmp_path
        )
    with pytest.raises(UserError, match="unknown integration method"):
        comparison.compare_attributions(
            (model, params), (model, params), pixels, np.arange(6) % 3, tmp_path, method="x"
        )


def test_compare_attributions_on_float_images_for_predicted_classes(tmp_path):
    model = build("ft", num_classes=10, config=ONE_BLOCK)
    first, second = random_params(model, 1), random_params(model, 3)
    images = np.random.default_rng(2).uniform(0, 1, (40, 16, 16, 3)).astype(np.float32)
    labels = np.asarray(classifier.predict(model, first, images))
    labels[::2] = np.asarray(classifier.predict(model, second, images))[::2]
    report = comparison.compare_attributions(
        (model, first),
        (model, second),
        images,
        labels,
        tmp_path,
        target="predicted",
        kinds=("gradcam",),
        max_rows=3,
    )
    found = report.disagreements
    assert len(found.ft_only) and len(found.vpt_only) and len(found.selected) == 3
    np.testing.assert_array_equal(report.ft_predictions[found.ft_only], labels[found.ft_only])
    assert report.figures == {"gradcam": str(tmp_path / "gradcam.png")}
    assert matplotlib.image.imread(tmp_path / "gradcam.png").std() > 0
    assert not (tmp_path / "integrated_gradients.png").exists() and not report.ig_relative_delta


def write_runs(tmp_path):
    """A base checkpoint and two task artifacts (FT and VPT-deep) whose predictions differ."""
    base = random_params(VisionTransformer(ONE_BLOCK, None), 0)
    save_npz(tmp_path / "base.npz", base)
    runs = {}
    for name, model, seed in (
        ("full", build("ft", num_classes=10, config=ONE_BLOCK), 1),
        ("vpt_deep", build("vpt_deep", 2, num_classes=10, config=ONE_BLOCK), 2),
    ):
        flat = paths.flatten(random_params(model, seed))
        flat.update(paths.flatten(base) if name == "vpt_deep" else {})  # VPT keeps the backbone
        strategy = get_strategy(name, num_prompts=2 if name == "vpt_deep" else 0)
        path = tmp_path / f"{name}.npz"
        export_artifact(
            path,
            paths.unflatten(flat),
            strategy=strategy,
            config=ONE_BLOCK,
            num_classes=10,
            base_params=base,
        )
        runs[name] = path
    return tmp_path / "base.npz", runs["full"], runs["vpt_deep"]


def test_figure_command_writes_pngs_offline(tmp_path, capsys):
    base, ft, vpt = write_runs(tmp_path)
    out = tmp_path / "figures"
    argv = ["--ft_artifact", str(ft), "--vpt_artifact", str(vpt), "--base", str(base)]
    argv += ["--dataset", "procedural:objects", "--split", "test", "--out", str(out)]
    argv += ["--max_rows", "4", "--ig_steps", "4", "--max_examples", "48"]
    figures.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 48
    assert summary["ft_right_vpt_wrong"] and summary["vpt_right_ft_wrong"]
    assert 0 < len(summary["rows"]) <= 4
    for row in summary["rows"]:  # exactly one of the two is right
        assert (row["ft_prediction"] == row["label"]) != (row["vpt_prediction"] == row["label"])
    for name in ("gradcam.png", "integrated_gradients.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > pixels.shape[1] / 3 and pixels.std() > 0
    assert len(summary["ig_relative_delta"]["vpt"]) == len(summary["rows"])
    assert "VPT right" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ig_method", "simpson"], "error: unknown integration method 'simpson'"),
        (["--ig_baseline", "white"], "error: flag --ig_baseline=white: value should be one of"),
        (["--target", "both"], "error: flag --target=both: value should be one of"),
        (["--figures", "gradcam,saliency"], "error: unknown figures ['saliency']"),
        (["--max_rows", "0"], "error: --max_rows and --batch_size must be >= 1"),
    ],
)
def test_figure_command_fails_with_one_line(tmp_path, capsys, extra, message):
    base, ft, vpt = tmp_path / "base.npz", tmp_path / "ft.npz", tmp_path / "vpt.npz"
    argv = ["--ft_artifact", str(ft), "--vpt_artifact", str(vpt), "--base", str(base)]
    argv += ["--dataset", "procedural:objects", "--out", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as error:
        figures.main(argv)  # every option is checked before the artifacts are read
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_figure_command_needs_both_artifacts(capsys):
    with pytest.raises(SystemExit) as error:
        figures.main(["--base", "b.npz", "--dataset", "procedural:objects", "--out", "o"])
    assert error.value.code == 2
    assert "error: flag --ft_artifact=None: Flag --ft_artifact must have a value" in (
        capsys.readouterr().err
    )


def test_figures_normalise_as_the_runs_were_trained():
    from vpt_jax.analysis.attribution.figures import trained_normalization

    ref = {"extra": {"normalization": "imagenet"}}
    assert trained_normalization(ref, ref) == "imagenet"
    assert trained_normalization({"extra": {}}, {}) == "inception"  # older artifacts: clean
    with pytest.raises(UserError, match="trained on imagenet inputs and the VPT one on inception"):
        trained_normalization(ref, {"extra": {"normalization": "inception"}})


def test_attribution_refuses_a_swin_run_in_one_line(tmp_path):
    from vpt_jax.models.swin import SwinConfig, SwinTransformer

    config = SwinConfig(
        embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2, patch_size=4, image_size=16
    )
    from vpt_jax.models.family import layout_of

    model = SwinTransformer(config, 3)
    params = random_params(model)
    strategy = get_strategy("full", layout=layout_of(config))
    export_artifact(
        tmp_path / "swin_ft.npz", params, strategy=strategy, config=config, num_classes=3
    )
    with pytest.raises(UserError, match="trained on a swin backbone; GradCAM and Integrated") as e:
        figures.load_runs(tmp_path / "swin_ft.npz", tmp_path / "swin_ft.npz", tmp_path / "none.npz")
    assert "\n" not in str(e.value)  # refused before the (missing) base checkpoint is read
    with pytest.raises(UserError, match="supports ViT classifiers .* got a SwinTransformer"):
        classifier.check_inputs(model, IMAGES)
