"""Mixed precision: the bf16 matmul's custom VJP, the model's bf16 modes against float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vpt_jax import paths
from vpt_jax.models import precision as prec
from vpt_jax.models.vit import ViTConfig, init_params, param_shapes
from vpt_jax.train.optimizer import make_optimizer
from vpt_jax.train.step import TrainState, train_step
from vpt_jax.tuning.rules import label_tree
from vpt_jax.tuning.strategies import get_strategy

TINY = dict(patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, image_size=16)
BF16_MODES = ("bf16_matmul", "bf16_activations")


def bf16(x):
    return x.astype(jnp.bfloat16)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_precision_names_and_resolution():
    assert ViTConfig().precision == "float32"
    with pytest.raises(ValueError, match="bf16_matmul"):
        ViTConfig(precision="fp16")
    assert prec.resolve("bf16", "cpu") == "bf16_matmul"
    assert prec.resolve("bf16", "gpu") == "bf16_activations"
    assert prec.resolve("bf16", "tpu") == "bf16_activations"
    assert prec.resolve("float32", "gpu") == "float32"


def test_bf16_matmul_gradient_is_the_bf16_formulation():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (64, 48))
    w = jax.random.normal(kw, (48, 32))
    g = jax.random.normal(kg, (64, 32))
    out, vjp = jax.vjp(prec.bf16_matmul, x, w)
    dx, dw = vjp(g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_array_equal(out, prec.reference_bf16_matmul(x, w))
    # Exactly the bf16 formulation: bf16 operands (cotangent included), float32 accumulation.
    dot = functools.partial(jax.lax.dot, preferred_element_type=jnp.float32)
    np.testing.assert_allclose(dx, dot(bf16(g), bf16(w).T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dot(bf16(x).T, bf16(g)), rtol=1e-5, atol=1e-5)
    # jax.grad of the same bf16 dot (which also rounds its results to bf16) agrees to bf16 precision.
    ref_dx, ref_dw = jax.vjp(prec.reference_bf16_matmul, x, w)[1](g)
    assert rel_err(dx, ref_dx) < 1e-2 and rel_err(dw, ref_dw) < 1e-2
    # ... and float32 to about bf16's resolution.
    f32_dx, f32_dw = jax.vjp(jnp.matmul, x, w)[1](g)
    assert rel_err(dx, f32_dx) < 2e-2 and rel_err(dw, f32_dw) < 2e-2
    assert rel_err(out, x @ w) < 2e-2


def test_bf16_dot_general_handles_dense_general_contractions():
    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 4))  # (B, N, heads, head_dim)
    kernel = jax.random.normal(jax.random.key(2), (3, 4, 6))  # the attention `out` layout
    got = prec.bf16_dot_general(x, kernel, (((2, 3), (0, 1)), ((), ())))
    assert got.shape == (2, 5, 6) and got.dtype == jnp.float32
    assert rel_err(got, jnp.einsum("bnhd,hdo->bno", x, kernel)) < 2e-2
    with pytest.raises(ValueError, match="Dense-style"):
        prec.bf16_dot_general(x, x, (((3,), (3,)), ((0,), (0,))))


def test_fused_attention_matches_the_einsum_form():
    q, k, v = jax.random.normal(jax.random.key(3), (3, 2, 7, 2, 8))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(8.0), k)
    expected = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
    np.testing.assert_allclose(prec.attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def _model_and_params(precision: str, strategy: str = "full", prompts: int = 0):
    config = ViTConfig(**TINY, gelu_approximate=False, precision=precision)
    model = get_strategy(strategy, num_prompts=prompts).build_model(config, 5)
    params = init_params(model, 0)
    # A non-zero head, so logits and gradients depend on every layer.
    params["head"]["kernel"] = jax.random.normal(jax.random.key(4), params["head"]["kernel"].shape)
    return model, params


@pytest.mark.parametrize("mode", BF16_MODES)
def test_parameter_tree_is_the_same_in_every_precision(mode):
    def tree(p):
        config = ViTConfig(**TINY, precision=p)
        model = get_strategy("vpt_deep", num_prompts=3).build_model(config, 5)
        return {k: (v.shape, v.dtype) for k, v in paths.flatten(param_shapes(model)).items()}

    assert tree(mode) == tree("float32")
    assert {dtype for _, dtype in tree(mode).values()} == {jnp.dtype(jnp.float32)}


def test_float32_mode_has_no_bf16_anywhere():
    model, params = _model_and_params("float32", "vpt_deep", 3)
    images = jnp.zeros((2, 16, 16, 3))
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, images)[0].sum()))(params)
    assert "bf16" not in str(jaxpr)


@pytest.mark.parametrize("mode", BF16_MODES)
@pytest.mark.parametrize("strategy,prompts", [("full", 0), ("vpt_deep", 3)])
def test_bf16_forward_and_gradients_close_to_float32(mode, strategy, prompts):
    images = jax.random.uniform(jax.random.key(5), (4, 16, 16, 3), minval=-1, maxval=1)
    labels = jnp.arange(4) % 5

    def loss_and_grads(precision):
        model, params = _model_and_params(precision, strategy, prompts)

        def loss(p):
            logits, _ = model.apply({"params": p}, images)
            assert logits.dtype == jnp.float32
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return value, logits, paths.flatten(grads)

    loss32, logits32, grads32 = loss_and_grads("float32")
    loss16, logits16, grads16 = loss_and_grads(mode)
    assert rel_err(logits16, logits32) < 3e-2
    assert abs(float(loss16) - float(loss32)) < 3e-2 * abs(float(loss32))
    assert grads16.keys() == grads32.keys()
    assert all(g.dtype == jnp.float32 for g in grads16.values())
    errors = [rel_err(grads16[k], grads32[k]) for k in grads32 if np.any(grads32[k])]
    assert np.median(errors) < 3e-2, sorted(errors)[-5:]


def test_bf16_attention_dropout_falls_back_to_the_einsum_path():
    config = ViTConfig(**TINY, precision="bf16_activations", attention_dropout_rate=0.5)
    model = get_strategy("full").build_model(config, 5)
    params = init_params(model, 0)
    images = jnp.ones((2, 16, 16, 3))
    logits, _ = model.apply(
        {"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)}
    )
    assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))


def _step_cost(precision: str, strategy: str, prompts: int) -> float:
    model, params = _model_and_params(precision, strategy, prompts)
    strat = get_strategy(strategy, num_prompts=prompts)
    labels = label_tree(params, strat.rules)
    tx = make_optimizer(labels, name=strat.optimizer, lr=1e-3, weight_decay=1e-4)
    state = TrainState.create(params, tx, jax.random.key(0))
    batch = {"image": jnp.zeros((4, 16, 16, 3)), "label": jnp.zeros(4, jnp.int32)}
    step = functools.partial(
        train_step, apply_fn=model.apply, tx=tx, labels=labels, backbone_train=False
    )
    compiled = jax.jit(step).lower(state, batch).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("mode", ("float32", "bf16_matmul"))
def test_frozen_weights_cost_no_weight_gradient_flops(mode):
    # VPT and "mixed" (FT with the same prompts) see the same tokens; VPT skips weight gradients.
    assert _step_cost(mode, "vpt_deep", 3) < 0.8 * _step_cost(mode, "mixed", 3)


def test_bf16_train_step_keeps_float32_parameters_and_optimizer_state():
    model, params = _model_and_params("bf16", "full")
    strat = get_strategy("full")
    labels = label_tree(params, strat.rules)
    tx = make_optimizer(labels, name="adamw", lr=1e-3, weight_decay=1e-4)
    state = TrainState.create(params, tx, jax.random.key(0))
    batch = {"image": jnp.ones((4, 16, 16, 3)), "label": jnp.arange(4)}
    step = functools.partial(
        train_step, apply_fn=model.apply, tx=tx, labels=labels, backbone_train=True
    )
    state, metrics = jax.jit(step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    floats = [
        x for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]  # fmt: skip
    assert floats and all(x.dtype == jnp.float32 for x in floats)
