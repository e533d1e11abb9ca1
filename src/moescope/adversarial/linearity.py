r"""The linearity law of Goodfellow et al. (2015), measured on real forward passes.

For a linear score :math:`s(x) = w^\top x + b` the L∞ step :math:`\delta = \varepsilon\,\mathrm{sign}(w)`
(FGSM's step) is the best step of L∞ size ε and moves the score by exactly

.. math:: s(x + \delta) - s(x) = \varepsilon \lVert w \rVert_1,

which grows like d: for weights of typical size m, :math:`\lVert w\rVert_1 \approx m d` (for
i.i.d. N(0, σ²) weights, :math:`E\lVert w\rVert_1 = \sigma d \sqrt{2/\pi}`). The best L2 step
of the same size, :math:`\varepsilon w / \lVert w\rVert_2`, moves it by only
:math:`\varepsilon \lVert w\rVert_2 \approx \sigma \varepsilon \sqrt d`. Goodfellow, Shlens and
Szegedy, *Explaining and Harnessing Adversarial Examples*, ICLR 2015, sec. 3: "many
infinitesimal changes to the input that add up to one large change to the output".

Here the shifts are measured by running ``nn.Linear`` on x and x + δ (not computed from the
norms), then set against ε‖w‖₁ and ε‖w‖₂ and fitted as a power of d.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from moescope.adversarial._common import check_eps

__all__ = ["linearity_sweep", "loglog_slope", "score_shift"]


@torch.no_grad()
def score_shift(layer: nn.Linear, x: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """Measured shifts of each output score under the L∞ and L2 steps aimed at it.

    Args:
        layer: a linear map with weight (K, d).
        x: (N, d) points.
        eps: step size in each norm.

    Returns:
        "linf", "l2": (N, K) measured s_k(x + δ_k) − s_k(x); "l1_norm", "l2_norm": (K,) the
        predictions' norms ‖w_k‖₁, ‖w_k‖₂.
    """
    eps = check_eps(eps)
    w = layer.weight                                     # (K, d)
    base = layer(x)                                      # (N, K)
    rows = torch.arange(w.shape[0])
    linf = torch.stack([layer(x + eps * w[k].sign())[:, k] for k in rows], 1) - base
    unit = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    l2 = torch.stack([layer(x + eps * unit[k])[:, k] for k in rows], 1) - base
    return {"linf": linf, "l2": l2, "l1_norm": w.abs().sum(1), "l2_norm": torch.linalg.vector_norm(w, dim=1)}


def loglog_slope(x: object, y: object) -> float:
    """Least-squares slope of log y on log x: the exponent of a power law."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    return float(np.polyfit(lx, ly, 1)[0])


def linearity_sweep(dims, *, eps: float = 0.01, outputs: int = 8, points: int = 16, seed: int = 0) -> dict:
    """Measured score shifts of random linear maps across d.

    Weights are i.i.d. N(0, 1), so each coordinate weighs as much in every d; x ~ U[0, 1]^d;
    float64 so that the measured shifts match ε‖w‖ to ~1e-12.

    Returns:
        {"rows": per d: measured mean shift / ε for L∞ and L2, ‖w‖₁ and ‖w‖₂ (means over
        outputs), the worst relative gap between measured and ε‖w‖, and the expected
        ‖w‖₁ = d√(2/π) and ‖w‖₂ ≈ √d; "slope_linf", "slope_l2": fitted exponents of d.}
    """
    eps = check_eps(eps)
    if eps == 0:
        raise ValueError("eps must be > 0 to measure a shift; got eps=0")
    rows = []
    for d in dims:
        d = int(d)
        gen = torch.Generator().manual_seed(seed * 7919 + d)
        layer = nn.Linear(d, outputs, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(outputs, d, generator=gen, dtype=torch.float64))
            layer.bias.zero_()
        x = torch.rand(points, d, generator=gen, dtype=torch.float64)
        s = score_shift(layer, x, eps)
        gap_linf = float(((s["linf"] - eps * s["l1_norm"]).abs() / (eps * s["l1_norm"])).max())
        gap_l2 = float(((s["l2"] - eps * s["l2_norm"]).abs() / (eps * s["l2_norm"])).max())
        rows.append({
            "d": d,
            "shift_linf_per_eps": float(s["linf"].mean()) / eps,
            "shift_l2_per_eps": float(s["l2"].mean()) / eps,
            "l1_norm": float(s["l1_norm"].mean()),
            "l2_norm": float(s["l2_norm"].mean()),
            "l1_expected": d * math.sqrt(2.0 / math.pi),
            "l2_expected": math.sqrt(d),
            "max_rel_gap_linf": gap_linf,
            "max_rel_gap_l2": gap_l2,
        })
    ds = [r["d"] for r in rows]
    return {
        "eps": eps,
        "rows": rows,
        "slope_linf": loglog_slope(ds, [r["shift_linf_per_eps"] for r in rows]) if len(rows) > 1 else None,
        "slope_l2": loglog_slope(ds, [r["shift_l2_per_eps"] for r in rows]) if len(rows) > 1 else None,
    }
