"""The quadrature of Integrated Gradients: where on the path gradients are taken, and their weights.

`integration_points(method, n)` returns the alphas and weights of captum's rules, identical to
captum: `riemann_left`, `riemann_right`, `riemann_middle`, `riemann_trapezoid`, `gausslegendre`.
"""

from __future__ import annotations

import numpy as np

from vpt_jax.errors import UserError

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def integration_points(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The interpolation alphas in [0, 1] and their weights, exactly as captum builds them.

    Kept identical to captum for parity, quirks included: `riemann_trapezoid` places `n` points
    from 0 to 1 but keeps the step `1 / n`, so its weights sum to `(n - 1) / n` and its
    attributions come out scaled by that (the completeness delta shows it).

    Args:
      method: one of `METHODS`.
      n_steps: number of points (at least 2 for the Riemann rules, 1 for Gauss-Legendre).

    Returns:
      `(alphas, weights)`, float64 arrays of length `n_steps`.
    """
    if method not in METHODS:
        raise UserError(f"unknown integration method {method!r}; use one of {', '.join(METHODS)}")
    if n_steps < (1 if method == "gausslegendre" else 2):
        raise UserError(f"{method} needs more integration steps; got n_steps={n_steps}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (1.0 + nodes), 0.5 * weights  # from [-1, 1] to [0, 1]
    n = n_steps
    start, stop = {
        "riemann_left": (0.0, 1 - 1 / n),
        "riemann_right": (1 / n, 1.0),
        "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)),
        "riemann_trapezoid": (0.0, 1.0),
    }[method]
    weights = np.full(n, 1 / n)
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return np.linspace(start, stop, n), weights
