"""IG against captum, GradCAM against a hooked timm ViT, both loaded from the same .npz as ours."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_checkpoint import random_params
from tests.torch_reference import torch
from vpt_jax.analysis.attribution.baselines import make_baseline
from vpt_jax.analysis.attribution.gradcam import gradcam
from vpt_jax.analysis.attribution.integrated_gradients import integrated_gradients
from vpt_jax.analysis.attribution.quadrature import METHODS, integration_points
from vpt_jax.models.checkpoint import load_pretrained, save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig

timm_vit = pytest.importorskip("timm.models.vision_transformer")
captum_attr = pytest.importorskip("captum.attr")
captum_rules = pytest.importorskip("captum.attr._utils.approximation_methods")

CONFIG = ViTConfig(
    patch_size=4,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=64,
    image_size=16,
    gelu_approximate=False,  # timm uses exact GELU
)
CLASSES = 5
IMAGES = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
TARGETS = np.array([1, 3])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vit.npz"
    save_npz(path, random_params(CONFIG, CLASSES, seed=8))  # a valid head: both loaders keep it
    ours = VisionTransformer(CONFIG, CLASSES)
    params = load_pretrained(path, ours, keep_head=True)
    reference = timm_vit.VisionTransformer(
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=CLASSES,
        global_pool="token",
    )
    reference.load_pretrained(str(path))
    reference.eval()
    with torch.no_grad():
        ref_logits = reference(nchw(IMAGES)).numpy()
    ours_logits = np.asarray(ours.apply({"params": params}, IMAGES)[0])
    assert rel_l2(ours_logits, ref_logits) <= 1e-5  # the same function before any attribution
    return ours, params, reference


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [2, 7, 50])
def test_integration_points_equal_captums(method, n_steps):
    step_sizes, alphas = captum_rules.approximation_parameters(method)
    ours_alphas, ours_weights = integration_points(method, n_steps)
    np.testing.assert_allclose(ours_alphas, alphas(n_steps), atol=1e-7)
    np.testing.assert_allclose(ours_weights, step_sizes(n_steps), atol=1e-12)


@pytest.mark.parametrize(
    "method,baseline",
    [
        ("gausslegendre", "zeros"),
        ("riemann_left", "black"),
        ("riemann_right", "blur"),
        ("riemann_middle", "random"),
        ("riemann_trapezoid", "zeros"),
    ],
)
def test_integrated_gradients_match_captum(models, method, baseline):
    ours, params, reference = models
    if baseline == "random":
        baseline = np.random.default_rng(1).uniform(-1, 1, IMAGES.shape).astype(np.float32)
    result = integrated_gradients(
        ours, params, IMAGES, TARGETS, baseline=baseline, n_steps=8, method=method, blur_sigma=2.0
    )
    # captum gets the very baseline we used (black, blur: built in model space by us).
    ours_baseline = make_baseline(jnp.asarray(IMAGES), baseline, blur_sigma=2.0)
    attributions, delta = captum_attr.IntegratedGradients(reference).attribute(
        nchw(IMAGES),
        baselines=nchw(np.asarray(ours_baseline)),
        target=torch.from_numpy(TARGETS),
        n_steps=8,
        method=method,
        return_convergence_delta=True,
    )
    expected = attributions.detach().numpy().transpose(0, 2, 3, 1)
    assert rel_l2(result.attributions, expected) <= 1e-4
    scale = np.abs(np.asarray(result.scores)) + np.abs(np.asarray(result.baseline_scores))
    np.testing.assert_array_less(np.abs(result.delta - delta.detach().numpy()), 1e-4 * scale + 1e-5)


def test_gradcam_matches_a_hooked_timm_vit(models):
    # pytorch-grad-cam's ViT recipe, written out: target blocks[-1].norm1, drop CLS, reshape to the
    # grid, weights = spatial mean of the gradients, ReLU, min-max, bilinear resize, min-max.
    ours, params, reference = models
    captured = {}

    def hook(module, inputs, output):
        output.retain_grad()
        captured["acts"] = output

    handle = reference.blocks[-1].norm1.register_forward_hook(hook)
    logits = reference(nchw(IMAGES))
    logits[torch.arange(2), torch.from_numpy(TARGETS)].sum().backward()
    handle.remove()
    acts = captured["acts"].detach()[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    grads = captured["acts"].grad[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    raw = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))

    def scale(x):
        x = x - x.amin((-2, -1), keepdim=True)
        return x / (1e-7 + x.amax((-2, -1), keepdim=True))

    up = torch.nn.functional.interpolate(
        scale(raw)[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )
    expected_maps = scale(up[:, 0]).numpy()

    result = gradcam(ours, params, IMAGES, TARGETS)
    assert rel_l2(result.raw, raw.numpy()) <= 1e-4
    np.testing.assert_allclose(result.maps, expected_maps, atol=1e-4)
