r"""Layer operations of hyperbolic neural networks in the Poincaré ball, as pure functions.

Built on :mod:`moescope.geometry.curved.poincare` (exp/log maps at the origin, Möbius addition,
parallel transport); the ``nn.Module`` s that use them live in :mod:`moescope.curved_models`.

* Möbius matrix–vector product (Ganea, Bécigneul & Hofmann 2018, "Hyperbolic Neural Networks",
  eq. 27): :math:`M \otimes_c x = \exp^c_0(M \log^c_0 x)
  = \tanh\!\big(\tfrac{\lVert Mx\rVert}{\lVert x\rVert}\operatorname{artanh}(\sqrt c\lVert x\rVert)\big)
  \frac{Mx}{\sqrt c\lVert Mx\rVert}`, and its per-head form, where each block of output rows maps
  into a ball of its own (:func:`mobius_matvec_heads`);
* Möbius linear layer with a bias point on the ball: :math:`(M \otimes_c x) \oplus_c b` (ibid., §3.2);
* all pairwise distances of two point sets through one Gram matrix (:func:`pairwise_dist`), the score
  matrix of hyperbolic attention;
* the Einstein midpoint (Ungar 2005; Gulcehre et al. 2019, "Hyperbolic Attention Networks", eq. 4),
  the attention-weighted mean of hyperbolic attention, taken in the Klein model and mapped back;
* the hyperbolic multinomial logistic regression logits (Ganea et al. 2018, eq. 25);
* feature clipping (Guo et al. 2022, "Clipped Hyperbolic Classifiers Are Super-Hyperbolic Classifiers",
  eq. 6): a tangent vector's norm capped at r before :math:`\exp^c_0`, so the point lies within 2r of the
  origin, where float32 gradients stay finite.

Shapes: points are (..., n) and broadcast like :mod:`.poincare`; ``c`` is the curvature magnitude
(the space has curvature −c). Oracles in the tests: geoopt's ``PoincareBall`` (``mobius_matvec``,
``weighted_midpoint``, ``dist2plane``) in float64, gradients included.
"""

from __future__ import annotations

import torch

from moescope.geometry.curved._numerics import (
    as_curvature,
    check_finite,
    csqrt,
    min_norm,
    one_minus_cnorm2,
    tight_margin,
)
from moescope.geometry.curved.poincare import expmap0, gap, logmap0, mobius_add, project, transp

__all__ = [
    "clip_features",
    "einstein_midpoint",
    "mlr_logits",
    "mobius_linear",
    "mobius_matvec",
    "mobius_matvec_heads",
    "pairwise_dist",
    "transp0",
]


def _check_matrix(m: torch.Tensor, n_in: int, name: str = "m") -> torch.Tensor:
    check_finite(m, name)
    if m.ndim != 2 or m.shape[1] != n_in:
        raise ValueError(f"{name} must be a matrix (out, in) with in = {n_in} (the points' dimension); "
                         f"got shape {tuple(m.shape)}")
    return m


def mobius_matvec(m: torch.Tensor, x: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Möbius matrix–vector product :math:`M \otimes_c x = \exp^c_0(M\log^c_0 x)` (Ganea et al. 2018, eq. 27).

    Args:
        m: (out, in) matrix.
        x: (..., in) points of the ball.

    Returns:
        (..., out) points of the ball of dimension ``out``; :math:`M \otimes_c 0 = 0` and
        :math:`Mx = 0 \Rightarrow M \otimes_c x = 0`, as in the paper.
    """
    _check_matrix(m, x.shape[-1])
    return expmap0(logmap0(x, c=c) @ m.transpose(0, 1), c=c)


def mobius_matvec_heads(m: torch.Tensor, x: torch.Tensor, heads: int, *, c: object = 1.0) -> torch.Tensor:
    r"""One Möbius matvec per head: :math:`W^{(h)} \otimes_c x` for the h-th block of ``out/heads`` rows of M.

    Every head's output is a point of its own ball of dimension ``out/heads`` (a multi-head
    layer's queries, keys and values). The heads share one :math:`\log^c_0 x`.

    Args:
        m: (out, in) matrix, out divisible by ``heads``.
        x: (..., in) points.

    Returns:
        (..., heads, out/heads) points.
    """
    _check_matrix(m, x.shape[-1])
    if not isinstance(heads, int) or heads < 1 or m.shape[0] % heads:
        raise ValueError(f"heads must be a positive int dividing the {m.shape[0]} output rows; got heads={heads!r}")
    u = logmap0(x, c=c) @ m.transpose(0, 1)                  # (..., out)
    return expmap0(u.unflatten(-1, (heads, m.shape[0] // heads)), c=c)   # (..., heads, out/heads)


def mobius_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  c: object = 1.0) -> torch.Tensor:
    r"""Möbius linear layer :math:`(W \otimes_c x) \oplus_c b` with the bias b a point of the ball.

    Args:
        x: (..., in) points; weight: (out, in); bias: (out,) point or None.

    Returns:
        (..., out) points.
    """
    y = mobius_matvec(weight, x, c=c)
    return y if bias is None else mobius_add(y, bias, c=c)


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Distances between every point of x and every point of y, (..., N, M), from one Gram matrix:

    .. math:: d_c(x_i, y_j) = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{\frac{c\,(\lVert x_i\rVert^2
        + \lVert y_j\rVert^2 - 2\langle x_i, y_j\rangle)}{g_{x_i} g_{y_j}}}

    — :func:`~moescope.geometry.curved.poincare.dist` with the squared chord expanded, so that no (N, M, n)
    tensor of differences is formed (the score matrix of attention over N tokens). The expansion loses
    digits for nearly equal points: the squared chord is exact only to about u·(‖x‖² + ‖y‖²), so distances
    below ~√u are not resolved (u the dtype's unit roundoff); the squared chord is floored there, which keeps
    the gradient finite. Use :func:`~moescope.geometry.curved.poincare.dist` where small distances matter.

    Args:
        x: (..., N, n) points; y: (..., M, n) points (batch dimensions broadcast).
    """
    cc = as_curvature(c, like=x)
    gx, gy = gap(x, cc, name="x"), gap(y, cc, name="y")          # (..., N, 1), (..., M, 1)
    x2, y2 = x.square().sum(-1, keepdim=True), y.square().sum(-1, keepdim=True)
    chord2 = x2 + y2.transpose(-1, -2) - 2.0 * x @ y.transpose(-1, -2)   # (..., N, M)
    floor = torch.finfo(x.dtype).eps * (x2 + y2.transpose(-1, -2)).detach()
    arg = cc * chord2.clamp_min(0.0).maximum(floor) / (gx * gy.transpose(-1, -2))
    return 2.0 / csqrt(cc) * torch.asinh(arg.sqrt())


def clip_features(u: torch.Tensor, r: float) -> torch.Tensor:
    r""":math:`u \min(1, r/\lVert u\rVert)` (Guo et al. 2022, eq. 6), (..., n) → (..., n).

    For a tangent vector at the origin, :math:`d_c(0, \exp^c_0 u) = 2\lVert u\rVert` for every c, so the
    clipped point lies at most 2r from the origin.
    """
    check_finite(u, "u")
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < float("inf")):
        raise ValueError(f"r must be a positive finite number; got r={r!r}")
    norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(min_norm(u.dtype))
    return u * (r / norm).clamp_max(1.0)


def transp0(p: torch.Tensor, v: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Parallel transport of v from the origin to p: :math:`P_{0\to p}(v) = \frac{\lambda_0}{\lambda_p} v
    = (1 - c\lVert p\rVert^2)\,v`; a thin call of :func:`~moescope.geometry.curved.poincare.transp`."""
    return transp(torch.zeros_like(p), p, v, c=c)


def einstein_midpoint(x: torch.Tensor, weights: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Weighted Einstein midpoint of points x with non-negative weights, returned in the Poincaré ball.

    In the Klein model, with :math:`k_i = 2x_i/(1 + c\lVert x_i\rVert^2)` and Lorentz factors
    :math:`\gamma_i = 1/\sqrt{1 - c\lVert k_i\rVert^2}`, the midpoint is
    :math:`m_K = \sum_i w_i\gamma_i k_i / \sum_i w_i\gamma_i` (Ungar 2005; Gulcehre et al. 2019, eq. 4).
    Written in ball coordinates, :math:`\gamma_i k_i = \lambda_{x_i} x_i` and :math:`\gamma_i = \lambda_{x_i} - 1`,
    so every factor comes from the exact gap :math:`1 - c\lVert x_i\rVert^2`; the result is mapped back to the
    ball by :math:`m = m_K / (1 + \sqrt{1 - c\lVert m_K\rVert^2})`. This equals geoopt's gyromidpoint
    :math:`\tfrac12 \otimes_c (\sum w_i\lambda_i x_i / \sum w_i(\lambda_i - 1))` (Ungar's theorem).

    Args:
        x: (..., N, n) points.
        weights: (..., M, N) non-negative weights, some positive in each row (attention probabilities).

    Returns:
        (..., M, n): one midpoint per row of weights.
    """
    check_finite(weights, "weights")
    if weights.shape[-1] != x.shape[-2]:
        raise ValueError(f"weights must be (..., M, N) with N = {x.shape[-2]} points; got shape {tuple(weights.shape)}")
    if bool((weights.detach() < 0).any()):
        raise ValueError("weights must be non-negative (the Einstein midpoint of attention probabilities)")
    cc = as_curvature(c, like=x)
    g = gap(x, cc)                                            # (..., N, 1)
    lam = 2.0 / g
    num = weights @ (lam * x)                                 # (..., M, n)  Σ w γ k
    den = weights @ (lam - 1.0)                               # (..., M, 1)  Σ w γ  (≥ Σ w)
    if bool((den.detach() <= 0).any()):
        raise ValueError("every row of weights needs a positive entry")
    klein = num / den
    root = one_minus_cnorm2(klein, cc).clamp_min(tight_margin(x.dtype)).sqrt()
    return project(klein / (1.0 + root), c=cc)


def mlr_logits(x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, *, c: object = 1.0) -> torch.Tensor:
    r"""Hyperbolic multinomial logistic regression logits (Ganea et al. 2018, eq. 25).

    .. math:: \operatorname{logit}_k(x) = \frac{\lambda_{p_k}\lVert a_k\rVert}{\sqrt c}
        \operatorname{asinh}\!\Big(\frac{2\sqrt c\,\langle z_k, a_k\rangle}
        {(1 - c\lVert z_k\rVert^2)\lVert a_k\rVert}\Big),
        \qquad z_k = (-p_k) \oplus_c x,

    i.e. :math:`\lambda_{p_k}\lVert a_k\rVert` times the signed distance from x to the gyroplane through
    :math:`p_k` orthogonal to :math:`a_k`. As c → 0 it tends to the Euclidean :math:`4\langle x - p_k, a_k\rangle`.

    Args:
        x: (..., n) points.
        p: (K, n) one point per class; a: (K, n) one normal per class, tangent at its p
            (build it as :func:`transp0` of a vector at the origin).

    Returns:
        (..., K) logits.
    """
    check_finite(a, "a")
    if p.ndim != 2 or a.shape != p.shape or p.shape[-1] != x.shape[-1]:
        raise ValueError(f"p and a must both be (K, n) with n = {x.shape[-1]}; got {tuple(p.shape)} and "
                         f"{tuple(a.shape)}")
    cc = as_curvature(c, like=x)
    sc = csqrt(cc)
    z = mobius_add(-p, x.unsqueeze(-2), c=cc)                 # (..., K, n)
    a_norm = torch.linalg.vector_norm(a, dim=-1).clamp_min(min_norm(a.dtype))   # (K,)
    lam_p = (2.0 / gap(p, cc, name="p")).squeeze(-1)          # (K,)
    arg = 2.0 * sc * (z * a).sum(-1) / (gap(z, cc, name="z").squeeze(-1) * a_norm)
    return lam_p * a_norm / sc * torch.asinh(arg)
