r"""Numerics shared by the curved spaces: per-dtype margins, input checks, an exact 1 − c‖x‖².

Floating-point facts the models depend on. With p significand bits the largest number
below 1 is 1 − u, u = 2^{-p} (``UNIT_ROUNDOFF``). A point of the Poincaré ball of curvature
−1 on a coordinate axis therefore lies at most

.. math:: 2\,\operatorname{artanh}(1 - u) = \ln(2/u - 1)

from the origin (``MAX_DIST0``): 17.33 in float32 (u = 2⁻²⁴) and 37.43 in float64
(u = 2⁻⁵³). Beyond that radius the ball cannot tell a point from the boundary. Off the
axes the sum x₁² + … + x_n² of float coordinates can land closer to 1 than 1 − u, and
:func:`one_minus_cnorm2` evaluates it exactly, but such points cannot be reached reliably
by arithmetic in that dtype. So :func:`~moescope.geometry.curved.poincare.project` keeps
norms at most 1 − ``BALL_MARGIN`` (16 u). That leaves 4 bits of headroom: a rounding error
of a few u in a coordinate changes 1 − ‖x‖ by at most a quarter, so a distance changes
by at most ln(4/3) ≈ 0.29 at the edge, and much less inside.

:func:`one_minus_cnorm2` is the quantity every ball formula divides by. The naive
``1 - c * (x * x).sum(-1)`` loses log2(1/(1 − c‖x‖²)) bits to cancellation, which is
all of them at the edge. Here the squares are formed exactly (Dekker's TwoProduct) and
summed with error-free transformations (Knuth's TwoSum) in float64, so the value is
correct to about one rounding of the result. The gradient is the naive expression's:
−2c x. It is exact, and it needs no extra precision.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BALL_MARGIN",
    "EXP_MARGIN",
    "MAX_DIST0",
    "UNIT_ROUNDOFF",
    "as_curvature",
    "check_finite",
    "csqrt",
    "detach_c",
    "min_norm",
    "one_minus_cnorm2",
]

# u = 2^-p: the gap between 1 and the next float below it (p significand bits incl. the hidden one).
UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.float32: 2.0**-24,
    torch.float64: 2.0**-53,
}
# project() keeps ‖x‖ <= (1 − margin)/√c: 16 u leaves 4 bits of headroom over the representable edge.
BALL_MARGIN: dict[torch.dtype, float] = {dt: 16.0 * u for dt, u in UNIT_ROUNDOFF.items()}
# expmap / Möbius results are clipped at 4 u: (1 − 4u)(1 + 6u) < 1, so a few roundings
# in the rescaling cannot push a point onto the boundary.
EXP_MARGIN: dict[torch.dtype, float] = {dt: 4.0 * u for dt, u in UNIT_ROUNDOFF.items()}
# 2 artanh(1 − u) = ln(2/u − 1): the farthest an on-axis point of the unit ball can be from 0.
MAX_DIST0: dict[torch.dtype, float] = {dt: math.log(2.0 / u - 1.0) for dt, u in UNIT_ROUNDOFF.items()}

_SPLITTER = 2.0**27 + 1.0  # Dekker's split of a float64 into two 26-bit halves


def _dtype_table(table: dict[torch.dtype, float], dtype: torch.dtype, what: str) -> float:
    try:
        return table[dtype]
    except KeyError:
        raise TypeError(f"{what} needs a floating dtype among {sorted(str(d) for d in table)}; got {dtype}") from None


def min_norm(dtype: torch.dtype) -> float:
    """√(smallest normal): the floor for norms that are divided by (their square stays normal)."""
    return math.sqrt(torch.finfo(dtype).tiny)


def as_curvature(c: object, *, like: torch.Tensor | None = None, name: str = "c", sign: str = "−"
                 ) -> float | torch.Tensor:
    """The curvature magnitude c > 0: a float stays a float, a tensor moves to ``like``'s dtype (autograd kept).

    Every model here takes the magnitude: the ball and the hyperboloid have curvature −c,
    the sphere +c. Zero, negative, NaN and inf are refused with the value in the message.
    """
    def refuse(value: object) -> ValueError:
        return ValueError(
            f"{name} is the magnitude of the curvature (the space has curvature {sign}{name}) and must be a "
            f"positive finite number; got {name}={value!r}"
        )

    if isinstance(c, bool) or not isinstance(c, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a positive number or tensor; got {c!r}")
    if not isinstance(c, torch.Tensor):
        if not (math.isfinite(c) and c > 0):
            raise refuse(c)
        return float(c)
    t = c if like is None else c.to(dtype=like.dtype, device=like.device)
    vals = t.detach()
    bad = ~torch.isfinite(vals) | (vals <= 0)
    if bool(bad.any()):
        raise refuse(float(vals[bad].flatten()[0]) if vals.ndim else float(vals))
    return t


def detach_c(c: float | torch.Tensor) -> float | torch.Tensor:
    return c.detach() if isinstance(c, torch.Tensor) else c


def csqrt(c: float | torch.Tensor) -> float | torch.Tensor:
    """√c for a float or a tensor."""
    return math.sqrt(c) if isinstance(c, float) else c.sqrt()


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` as a floating tensor with no NaN or inf (ValueError naming ``name`` otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    _dtype_table(UNIT_ROUNDOFF, x.dtype, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (..., n) with coordinates in the last dimension; got a scalar")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s + e = a + b exactly, s = fl(a + b) (Knuth 1969)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def _two_prod(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p + e = a · b exactly, p = fl(a · b) (Dekker 1971), float64."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@torch.no_grad()
def _exact_gap(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """1 − c‖x‖² (keepdim) to about one rounding, computed in float64 double-double.

    Squares are split exactly (x² = p + e, Dekker); the p are summed by a pairwise tree of
    TwoSums (log₂ n vectorised levels), the small errors by a plain sum.
    """
    x64 = x.to(torch.float64)
    hi, lo = _split(x64)
    p = x64 * x64
    err = (((hi * hi - p) + 2.0 * hi * lo) + lo * lo).sum(-1, keepdim=True)
    while p.shape[-1] > 1:
        if p.shape[-1] % 2:
            p = torch.nn.functional.pad(p, (0, 1))
        p, e = _two_sum(p[..., 0::2], p[..., 1::2])
        err = err + e.sum(-1, keepdim=True)
    s, e2 = _two_sum(p, err)           # s + e2 = Σ x_i² to ~2⁻¹⁰⁶ relative
    if isinstance(c, float) and c == 1.0:
        prod, perr = s, e2
    else:
        c64 = torch.as_tensor(c, dtype=torch.float64, device=x.device)
        c64, s, e2 = torch.broadcast_tensors(c64, s, e2)
        prod, perr = _two_prod(c64, s)
        perr = perr + c64 * e2
    gap = (1.0 - prod) - perr          # 1 − prod is exact (Sterbenz) exactly where it matters: prod ≈ 1
    return gap.to(x.dtype)


def one_minus_cnorm2(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    r"""1 − c‖x‖², shape (..., 1), exact to about one rounding; gradient −2c x (and −‖x‖² in c).

    .. math:: 1 - c\,\lVert x \rVert^2 = \frac{2}{\lambda^c_x}

    The value comes from :func:`_exact_gap` (no cancellation near the boundary). The
    gradient comes from the naive formula: the correction is added outside autograd, so
    higher derivatives work too.
    """
    naive = 1.0 - c * x.square().sum(-1, keepdim=True)
    exact = _exact_gap(x.detach(), c.detach() if isinstance(c, torch.Tensor) else c)
    return exact + (naive - naive.detach())


def tight_margin(dtype: torch.dtype) -> float:
    return _dtype_table(EXP_MARGIN, dtype, "the Poincaré ball")


def ball_margin(dtype: torch.dtype) -> float:
    return _dtype_table(BALL_MARGIN, dtype, "the Poincaré ball")
