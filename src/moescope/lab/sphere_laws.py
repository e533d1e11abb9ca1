"""Claims 1–3 of the lecture, measured: near-orthogonality, equidistance, the equator.

For each dimension d the experiment draws rows of standard Gaussian vectors in chunks
(one chunk = one query and ``points_per_query`` points) and from the same draws measures

* the cosine of disjoint pairs of the normalised rows (claim 1, "almost orthogonal"),
* the first coordinate of every row, i.e. the equator band mass (claim 3),
* the relative distance contrast seen from each chunk's query (claim 2, Beyer et al.),
* the norm of the raw Gaussian rows (the Gaussian annulus),

and holds each Monte Carlo number against the exact law of :mod:`moescope.geometry`.
Every sentence of the report is formatted here from these numbers; none is written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from moescope import geometry as geo
from moescope.stats import median_interval

# A 99% two-sided band for Monte Carlo agreement: wide enough that a correct law passes
# at all (d, eps) points of a default run with high probability, narrow enough to catch
# an error of a few Monte Carlo standard errors.
CONFIDENCE = 0.99
# KS p-values below this flag a disagreement between the sampled cosines and the exact law.
KS_ALPHA = 1e-3


@dataclass(frozen=True)
class SphereConfig:
    """What ``moescope sphere`` measures. Defaults finish in well under 30 s on 2 cores."""

    dims: tuple[int, ...] = (2, 3, 10, 100, 1000, 10000)  # four decades: from the circle to LLM widths
    samples: int = 20_000          # Gaussian rows per d: 10k cosine pairs, band-mass s.e. <= 0.0035
    points_per_query: int = 999    # Beyer et al.'s n: distances from one query to n points
    band_eps: tuple[float, ...] = (0.05, 0.1, 0.2)   # equator half-widths, as in the lecture's "|x1| <= 0.1"
    shell_eps: tuple[float, ...] = (0.001, 0.01, 0.1)  # shell thicknesses of the unit ball
    capacity_eps: tuple[float, ...] = (0.05, 0.1, 0.2)  # coherence levels for the capacity table
    capacity_delta: float = 0.01   # failure probability allowed in the capacity union bound
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("dims must name at least one dimension, e.g. dims=(2, 10, 100)")
        geo.coordinate_std(list(self.dims))  # validates: integers >= 2
        if self.samples < 2 * (self.points_per_query + 1):
            raise ValueError(
                f"samples must be >= 2 * (points_per_query + 1) = {2 * (self.points_per_query + 1)} "
                f"so the contrast has at least two queries; got samples={self.samples}"
            )
        if self.points_per_query < 2:
            raise ValueError(f"points_per_query must be >= 2; got {self.points_per_query}")
        for name in ("band_eps", "shell_eps", "capacity_eps"):
            values = getattr(self, name)
            if not values or any(not 0.0 < e < 1.0 for e in values):
                raise ValueError(f"{name} must be non-empty values in (0, 1); got {values}")
        if not 0.0 < self.capacity_delta < 1.0:
            raise ValueError(f"capacity_delta must lie in (0, 1); got {self.capacity_delta}")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def _draw(d: int, cfg: SphereConfig, on_rows: Callable[[int], None] | None) -> dict[str, np.ndarray]:
    """All Monte Carlo draws for one d, chunk by chunk (memory: one chunk of rows)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + d)
    chunk = cfg.points_per_query + 1
    n_chunks = cfg.samples // chunk
    cos, x1, dev, contrast = [], [], [], []
    for _ in range(n_chunks):
        g = torch.randn(chunk, d, generator=gen, dtype=torch.float32)   # (chunk, d)
        norms = torch.linalg.vector_norm(g.double(), dim=1)               # (chunk,)
        u = g / norms.float().unsqueeze(1)                                # unit rows
        half = chunk // 2
        cos.append((u[:half] * u[half : 2 * half]).sum(1).double())       # disjoint pairs
        x1.append(u[:, 0].double())
        dev.append(norms - math.sqrt(d))
        dist = torch.linalg.vector_norm((u[1:] - u[0]).double(), dim=1)   # query = row 0
        contrast.append(geo.relative_contrast(dist).reshape(1))
        if on_rows is not None:
            on_rows(chunk)
    return {k: torch.cat(v).numpy() for k, v in
            (("cos", cos), ("x1", x1), ("norm_dev", dev), ("contrast", contrast))}


def _measure_dim(d: int, cfg: SphereConfig, on_rows: Callable[[int], None] | None) -> dict:
    draws = _draw(d, cfg, on_rows)
    cos, x1 = draws["cos"], draws["x1"]
    n_cos, n_x1 = cos.size, x1.size
    lim = min(1.0, 5.0 / math.sqrt(d))
    counts, edges = np.histogram(cos, bins=60, range=(-lim, lim))
    grid = np.linspace(-lim, lim, 401)
    if d == 2:  # the arcsine density is infinite at +-1; keep the plotted curve finite
        grid = np.clip(grid, -0.999, 0.999)
    bands = []
    for eps in cfg.band_eps:
        inside = int((np.abs(x1) <= eps).sum())
        lo, hi = wilson_interval(inside, n_x1)
        exact = float(geo.band_mass(eps, d))
        bands.append({"eps": eps, "mc": inside / n_x1, "ci": [lo, hi], "exact": exact,
                      "agrees": bool(lo <= exact <= hi)})
    contrast = draws["contrast"]
    ks = stats.kstest(cos, lambda t: geo.coordinate_cdf(np.clip(t, -1.0, 1.0), d))
    return {
        "d": d,
        "n_pairs": n_cos,
        "n_points": n_x1,
        "cos_std_mc": float(cos.std()),
        "cos_std_exact": float(geo.coordinate_std(d)),
        "abs_cos_q99_mc": float(np.quantile(np.abs(cos), 0.99)),
        "abs_cos_q99_exact": float(geo.band_quantile(0.99, d)),
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "cos_hist": {"edges": edges.tolist(), "density": (counts / (n_cos * np.diff(edges))).tolist()},
        "cos_pdf": {"t": grid.tolist(), "pdf": np.asarray(geo.coordinate_pdf(grid, d)).tolist()},
        "band": bands,
        "contrast": {"n_points": cfg.points_per_query, "trials": contrast.size,
                     "mean": float(contrast.mean()), "median": float(np.median(contrast)),
                     "std": float(contrast.std(ddof=1)),
                     "sem": float(contrast.std(ddof=1) / math.sqrt(contrast.size)),
                     # None: too few queries for a distribution-free 95% interval (JSON has no inf)
                     "median_ci95": [v if math.isfinite(v) else None for v in median_interval(contrast, 0.95)],
                     "prediction": float(geo.relative_contrast_prediction(cfg.points_per_query, d))},
        "distance": {"mean_exact": float(geo.distance_mean(d)), "std_exact": float(geo.distance_std(d))},
        "gaussian_norm": {"mean_mc": float(draws["norm_dev"].mean() + math.sqrt(d)),
                          "mean_exact": float(geo.gaussian_norm_mean(d)),
                          "within_1_mc": float((np.abs(draws["norm_dev"]) <= 1.0).mean()),
                          "within_1_exact": float(geo.gaussian_annulus_mass(1.0, d))},
    }


def _curves(cfg: SphereConfig) -> dict:
    """Exact curves over a continuous grid of d for the figures."""
    top = max(max(cfg.dims) * 3, 30)
    grid = np.unique(np.round(np.geomspace(2, top, 80)).astype(int))
    contrast_grid = np.unique(np.round(np.geomspace(2, top, 25)).astype(int))
    return {
        "d": grid.tolist(),
        "band": {str(e): np.asarray(geo.band_mass(e, grid)).tolist() for e in cfg.band_eps},
        "shell": {str(e): np.asarray(geo.shell_mass(e, grid)).tolist() for e in cfg.shell_eps},
        "contrast_d": contrast_grid.tolist(),
        "contrast_prediction": np.asarray(
            geo.relative_contrast_prediction(cfg.points_per_query, contrast_grid)).tolist(),
    }


def _capacity(cfg: SphereConfig) -> list[dict]:
    log10 = math.log(10.0)
    rows = []
    for eps in cfg.capacity_eps:
        for d in cfg.dims:
            rows.append({
                "eps": eps, "d": d,
                "log10_exact_union": float(geo.log_near_orthogonal_capacity(eps, d, cfg.capacity_delta)) / log10,
                "log10_subgaussian": float(geo.log_subgaussian_capacity(eps, d, cfg.capacity_delta)) / log10,
                # Welch places no limit once d eps^2 >= 1: JSON has no inf, so None says "none".
                "welch": None if math.isinf(welch := float(geo.welch_capacity(eps, d))) else welch,
            })
    return rows


def _all_but(log10_outside: float, inside: float) -> str:
    """'all but 1.2e-23' (or 'all but 10^-626.7') when the outside is tiny, else a percentage."""
    if log10_outside >= -2:
        return f"{inside:.1%}"
    if log10_outside >= -300:
        return f"all but {10**log10_outside:.2g}"
    return f"all but 10^{log10_outside:.1f}"


def _claims(per_dim: list[dict], cfg: SphereConfig, capacity: list[dict]) -> list[dict]:
    """One computed sentence per claim, with the numbers it quotes."""
    lo_d, hi_d = per_dim[0], per_dim[-1]
    eps_ref = min(cfg.band_eps, key=lambda e: abs(e - 0.1))
    cap_eps = min(cfg.capacity_eps, key=lambda e: abs(e - 0.1))
    cap_row = next(r for r in capacity if r["d"] == hi_d["d"] and r["eps"] == cap_eps)
    band_hi = next(b for b in hi_d["band"] if b["eps"] == eps_ref)
    band_lo = next(b for b in lo_d["band"] if b["eps"] == eps_ref)
    ln10 = math.log(10.0)
    outside_hi = float(2.0 * geo.cap_mass(eps_ref, hi_d["d"]))
    log10_pole = float(geo.log_cap_mass(0.5, hi_d["d"])) / ln10
    shell_eps = min(cfg.shell_eps, key=lambda e: abs(e - 0.01))
    shell_hi = float(geo.shell_mass(shell_eps, hi_d["d"]))
    log10_core = hi_d["d"] * math.log1p(-shell_eps) / ln10  # log10 of the inner ball's (1 - eps)^d
    n_band = sum(len(r["band"]) for r in per_dim)
    n_agree = sum(b["agrees"] for r in per_dim for b in r["band"])
    n_ks = sum(r["ks_pvalue"] >= KS_ALPHA for r in per_dim)
    drop = lo_d["contrast"]["median"] / hi_d["contrast"]["median"]
    return [
        {"id": 1, "title": "Random vectors are almost orthogonal in high dimension",
         "sentence": (
             f"In d={hi_d['d']}, the cosine between two random unit vectors has standard deviation "
             f"{hi_d['cos_std_mc']:.4f} over {hi_d['n_pairs']} sampled pairs (exact: 1/√d = "
             f"{hi_d['cos_std_exact']:.4f}), and 99% of pairs have |cos θ| ≤ {hi_d['abs_cos_q99_mc']:.4f} "
             f"(exact {hi_d['abs_cos_q99_exact']:.4f}); in d={lo_d['d']} that 99% quantile is "
             f"{lo_d['abs_cos_q99_exact']:.3f}. With probability ≥ {1 - cfg.capacity_delta:.0%}, about "
             f"10^{cap_row['log10_exact_union']:.1f} random vectors in R^{hi_d['d']} stay pairwise within "
             f"|cos θ| ≤ {cap_row['eps']}."),
         "numbers": {"d": hi_d["d"], "cos_std_mc": hi_d["cos_std_mc"], "cos_std_exact": hi_d["cos_std_exact"],
                     "abs_cos_q99_mc": hi_d["abs_cos_q99_mc"], "abs_cos_q99_exact": hi_d["abs_cos_q99_exact"],
                     "log10_capacity": cap_row["log10_exact_union"], "ks_agree": n_ks, "ks_total": len(per_dim)}},
        {"id": 2, "title": "Random points are almost equidistant",
         "sentence": (
             f"Seen from a random query, the median relative contrast (D_max − D_min)/D_min of "
             f"{cfg.points_per_query} random points falls from {lo_d['contrast']['median']:.3g} in "
             f"d={lo_d['d']} to {hi_d['contrast']['median']:.3g} in d={hi_d['d']} (a {drop:.3g}-fold "
             f"drop over {hi_d['contrast']['trials']} queries per d); the exact distance law puts the mean "
             f"distance at "
             f"{hi_d['distance']['mean_exact']:.4f} (√2 = 1.4142) with standard deviation "
             f"{hi_d['distance']['std_exact']:.4f}."),
         "numbers": {"contrast_low_d": lo_d["contrast"]["median"], "contrast_high_d": hi_d["contrast"]["median"],
                     "fold_drop": drop, "distance_std_exact": hi_d["distance"]["std_exact"]}},
        {"id": 3, "title": "Almost all of the sphere lies near the equator; the poles are empty",
         "sentence": (
             f"In d={hi_d['d']}, {_all_but(math.log10(outside_hi), 1 - outside_hi)} of the sphere lies "
             f"within |x₁| ≤ {eps_ref} of the "
             f"equator (Monte Carlo: {band_hi['mc']:.2%} of {hi_d['n_points']} points), whereas in "
             f"d={lo_d['d']} the same band holds {band_lo['exact']:.1%}. The polar cap x₁ ≥ 0.5 holds "
             f"10^{log10_pole:.1f} of the sphere in d={hi_d['d']}; and {_all_but(log10_core, shell_hi)} of the "
             f"unit ball's volume lies within {shell_eps} of its surface. "
             f"Monte Carlo agrees with the exact band mass inside its {CONFIDENCE:.0%} interval at "
             f"{n_agree} of {n_band} (d, ε) points."),
         "numbers": {"d": hi_d["d"], "eps": eps_ref, "outside_band_exact": outside_hi,
                     "band_mc": band_hi["mc"], "band_low_d_exact": band_lo["exact"],
                     "log10_pole_cap": log10_pole, "shell_mass": shell_hi, "log10_inner_ball": log10_core,
                     "band_agree": n_agree, "band_total": n_band}},
    ]


def run_sphere(cfg: SphereConfig = SphereConfig(), on_rows: Callable[[int], None] | None = None) -> dict:
    """Run the experiment; returns a JSON-ready dict of every number the report shows.

    Args:
        cfg: what to measure.
        on_rows: called with the number of rows drawn after each chunk (progress bars).
    """
    dims = sorted(set(cfg.dims))
    per_dim = [_measure_dim(d, cfg, on_rows) for d in dims]
    capacity = _capacity(cfg)
    return {
        "config": asdict(cfg),
        "per_dim": per_dim,
        "curves": _curves(cfg),
        "capacity": capacity,
        "claims": _claims(per_dim, cfg, capacity),
    }


def total_rows(cfg: SphereConfig) -> int:
    """Rows that :func:`run_sphere` draws in all (for a progress bar's total)."""
    chunk = cfg.points_per_query + 1
    return len(set(cfg.dims)) * (cfg.samples // chunk) * chunk
