"""Compute precision of the ViT: float32, or bfloat16 mixed precision over float32 parameters.

Parameters, their gradients and the optimizer state are float32 in every mode; only the arithmetic
inside the model changes. The modes (`ViTConfig.precision`):

* `float32`: everything in float32 (the default; bit for bit the plain model).
* `bf16`: mixed precision in the form that is fast on the running backend: `bf16_matmul` on CPU,
  `bf16_activations` on GPU and TPU.
* `bf16_matmul`: every Dense matmul (and the patch embedding) takes bfloat16 operands and
  accumulates into a float32 result, in the forward pass *and* in both backward matmuls (a custom
  VJP). The residual stream, LayerNorm, softmax, the attention core and GELU stay float32. On
  XLA:CPU with AVX512-BF16 this is ~1.7x faster than float32, whereas flax's `dtype=bfloat16` is
  slower than float32 there: XLA:CPU upcasts bf16->bf16 dots, and the transposed-operand dots of a
  weight gradient, to float32.
* `bf16_activations`: the usual accelerator recipe: Dense and LayerNorm compute in bfloat16
  (LayerNorm statistics and softmax in float32), the residual stream is bfloat16, attention uses
  the fused `jax.nn.dot_product_attention` (cuDNN flash attention on GPU where it applies). The head
  and the logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
PRECISIONS = ("float32", "bf16", "bf16_matmul", "bf16_activations")


def check_precision(precision: str) -> None:
    """Raises a ValueError naming the valid modes for an unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")


def resolve(precision: str, backend: str | None = None) -> str:
    """The concrete mode: `bf16` becomes `bf16_matmul` on CPU, `bf16_activations` elsewhere."""
    check_precision(precision)
    if precision != "bf16":
        return precision
    backend = backend or jax.default_backend()
    return "bf16_matmul" if backend == "cpu" else "bf16_activations"


# ---------------------------------------------------------------------------------------------
# bf16 matmul with float32 accumulation, forward and backward.


def _physical_transpose(x: Array) -> Array:
    """`x.T` as a real row-major copy.

    XLA:CPU writes `x.T @ g` as a dot contracting dimension 0 ("transposed A"), which its fast
    (YNNPACK) kernels reject; it then upcasts bf16 operands to float32 and runs a slow kernel. A
    plain `x.T`, even behind an optimization barrier, keeps a transposed layout; flattening it
    behind the barrier forces the copy, so the weight-gradient dot becomes an ordinary one.
    """
    rows, cols = x.shape
    flat = lax.optimization_barrier(x.T.reshape(-1))
    return flat.reshape(cols, rows)


def _bf16_dot(a: Array, b: Array) -> Array:
    return lax.dot(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: Array, w: Array) -> Array:
    """`x @ w` for float32 `x` `(M, K)` and `w` `(K, N)`: bf16 operands, float32 result and grads."""
    return _bf16_dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _bf16_matmul_fwd(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    return _bf16_dot(xb, wb), (xb, wb)  # bf16 residuals: half the activation memory of float32


def _bf16_matmul_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    xb, wb = residuals
    gb = g.astype(jnp.bfloat16)
    # (M, N) x (K, N) -> (M, K): contracting both minor dims is a fast dot as it stands.
    dx = lax.dot_general(gb, wb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw = _bf16_dot(_physical_transpose(xb), gb)  # (K, M) @ (M, N), accumulated in float32
    return dx, dw


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def reference_bf16_matmul(x: Array, w: Array) -> Array:
    """The same function as `bf16_matmul` without the custom VJP (what tests compare against)."""
    return _bf16_dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def bf16_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """A `lax.dot_general` drop-in for flax `Dense`/`DenseGeneral` that runs `bf16_matmul`.

    Handles the layer's contraction (trailing dims of `lhs` with leading dims of `rhs`, no batch
    dims) by flattening to one 2-D matmul; the result is float32.
    """
    del precision, preferred_element_type
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    if (
        lhs_batch
        or rhs_batch
        or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim))
        or tuple(rhs_contract) != tuple(range(n))
    ):
        raise ValueError(
            f"bf16_dot_general supports Dense-style contractions, not {dimension_numbers}"
        )
    k = math.prod(lhs.shape[lhs.ndim - n :])
    f32 = jnp.float32  # the casts' own VJPs return cotangents in the callers' dtypes
    out = bf16_matmul(lhs.reshape(-1, k).astype(f32), rhs.reshape(k, -1).astype(f32))
    return out.reshape(*lhs.shape[: lhs.ndim - n], *rhs.shape[n:])


# ---------------------------------------------------------------------------------------------
# What the model's layers read.


@dataclasses.dataclass(frozen=True)
class ComputePolicy:
    """How one precision mode computes: what the model's layers are given."""

    mode: str  # float32 | bf16_matmul | bf16_activations
    dtype: Any  # computation dtype of Dense / LayerNorm layers (None: that of the inputs)
    dot_general: Callable[..., Array] | None  # Dense matmul (None: lax.dot_general)
    fused_attention: bool  # attention through jax.nn.dot_product_attention

    def dense_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that put a flax Dense/DenseGeneral into this mode."""
        if self.mode == "float32":
            return {}
        if self.dot_general is not None:
            return {"dot_general": self.dot_general}
        return {"dtype": self.dtype}

    def matmul(self, x: Array, w: Array) -> Array:
        """`x @ w` over the last axis of `x` (used by the patch embedding)."""
        if self.dot_general is not None:
            return bf16_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
        dtype = self.dtype or x.dtype
        return x.astype(dtype) @ w.astype(dtype)

    def cast(self, x: Array) -> Array:
        """Casts activations to the residual-stream dtype (bf16 in bf16_activations)."""
        return x.astype(self.dtype) if self.dtype is not None else x


@functools.cache
def policy(precision: str, backend: str | None = None) -> ComputePolicy:
    """The `ComputePolicy` of a precision mode (`bf16` resolved for `backend`, default: JAX's)."""
    mode = resolve(precision, backend)
    if mode == "float32":
        return ComputePolicy(mode, None, None, False)
    if mode == "bf16_matmul":
        return ComputePolicy(mode, None, bf16_dot_general, False)
    return ComputePolicy(mode, jnp.bfloat16, None, True)


def attention(query: Array, key: Array, value: Array) -> Array:
    """Fused softmax(q k^T / sqrt(d)) v on `(B, T, heads, d)` arrays: cuDNN on GPU, else XLA."""
    if jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
        except Exception:  # cuDNN refuses some shapes, dtypes and versions; XLA takes all
            pass
    return jax.nn.dot_product_attention(query, key, value, implementation="xla")
