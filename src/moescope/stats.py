r"""Honest statistics for verdicts: effect sizes, intervals, permutation nulls, a decision on a margin.

Pure functions on numbers (numpy / scipy), below every layer that measures models, so the lab
and the analyzer decide the same way. A verdict is never read off a point estimate:

* an **effect** is a number with a *reference* (what it is when the claim's mechanism is absent:
  0 for a difference, 1 for a ratio to a null);
* its **interval** comes from the replication the data has: a t-interval over seed-level effects
  (n − 1 degrees of freedom: with 3 seeds t₀.₉₇₅ = 4.30, so few seeds give wide intervals, as they
  should), a percentile bootstrap over windows / experts, or the spread of a permutation null;
* the **decision** (:func:`decide`) reads only the interval, the reference and a *margin* stated
  in the claim's file before the run: supported when the whole interval lies beyond
  ``reference + margin`` on the claim's side, not supported when the whole interval lies beyond
  ``reference − margin`` on the opposite side (the data show the reverse), and inconclusive
  otherwise — an interval that reaches into the band ``reference ± margin`` cannot tell the
  claim from no effect.

:class:`Evidence` stores the raw values with the method and the rule, so that
:func:`assess` recomputes effect, interval and verdict from them alone (``moescope.lab.recheck``
does exactly that on a ``results.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as _st

__all__ = [
    "METHODS",
    "SIDES",
    "Assessment",
    "Evidence",
    "assess",
    "bootstrap_interval",
    "combine",
    "decide",
    "median_interval",
    "normalized_mutual_information",
    "permutation_pvalue",
    "permutation_ratio",
    "permutation_shift",
    "t_interval",
]

SIDES = ("greater", "less")
METHODS = ("t", "bootstrap", "permutation_ratio", "permutation_shift", "paired_t", "exact")
DEFAULT_LEVEL = 0.95
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_MIN_N = 10      # fewer units: no bootstrap interval (simulated coverage of a 95% interval: n=3 75%, n=10 91%)


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{what}: need at least one value; got none")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: values must be finite; got {x[~np.isfinite(x)][:3].tolist()}")
    return x


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got level={level!r}")


def t_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Two-sided Student-t interval of the mean of n independent replicates (n − 1 df).

    ``mean ± t_{(1+level)/2, n−1} · s / √n``; one replicate gives (−inf, inf): one seed cannot
    say how much another seed would differ. So do replicates that are all identical (s = 0): they
    were not independent draws (the same seed twice, or a quantity that does not vary), and a
    zero-width interval would turn any effect beyond the margin into a finding.
    """
    x = _finite(values, "t_interval")
    _check_level(level)
    n = x.size
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    # identical replicates (up to rounding) were not independent draws: no interval, not a zero-width one
    if n < 2 or sd <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return -math.inf, math.inf
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    m = float(x.mean())
    return m - half, m + half


def bootstrap_interval(values: Sequence[float], level: float = DEFAULT_LEVEL, *, draws: int = BOOTSTRAP_DRAWS,
                       seed: int = 0, statistic: Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over resampled units.

    Args:
        values: (n,) one value per independent unit (window, expert, ...).
        statistic: maps (draws, n) resamples to (draws,) statistics; default row means.
    """
    x = _finite(values, "bootstrap_interval")
    _check_level(level)
    if draws < 100:
        raise ValueError(f"draws must be >= 100 for a percentile interval; got draws={draws!r}")
    if x.size < BOOTSTRAP_MIN_N:  # the percentile bootstrap under-covers badly below ~10 units (n=3: 75%)
        return -math.inf, math.inf
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(draws, x.size))
    stat = (statistic or (lambda a: a.mean(axis=1)))(x[idx])
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def median_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Distribution-free interval of the median from order statistics (the binomial(n, ½) rule).

    [x_(j), x_(n−j+1)] with j the largest index such that P(Binom(n, ½) < j) <= (1 − level)/2
    (Conover, *Practical Nonparametric Statistics*, §3.2); (−inf, inf) when n is too small.
    """
    x = np.sort(_finite(values, "median_interval"))
    _check_level(level)
    n = x.size
    j = int(_st.binom.ppf((1 - level) / 2, n, 0.5))   # P(B <= j-1) <= alpha/2 < P(B <= j)
    if _st.binom.cdf(j, n, 0.5) <= (1 - level) / 2:
        j += 1
    if j < 1:
        return -math.inf, math.inf
    return float(x[j - 1]), float(x[n - j])


def permutation_pvalue(observed: float, null: Sequence[float], side: str) -> float:
    """(1 + #{null draws at least as extreme}) / (1 + n): the exact Monte-Carlo permutation p-value.

    ``side``: ``less`` counts draws ≤ observed, ``greater`` draws ≥ observed (Phipson & Smyth 2010).
    A draw equal to the observed value but for floating-point rounding (within 100 ulps of it, as
    scipy's ``permutation_test`` allows) counts as at least as extreme: a mirrored contingency table
    has the same mutual information in exact arithmetic, one ulp apart in floating point.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}; got side={side!r}")
    d = _finite(null, "permutation_pvalue")
    gamma = 100 * np.finfo(np.float64).eps * abs(observed)
    hits = int((d <= observed + gamma).sum() if side == "less" else (d >= observed - gamma).sum())
    return (1 + hits) / (1 + d.size)


def _order_interval(per_draw: np.ndarray, level: float) -> tuple[float, float]:
    """Conservative percentile interval from order statistics: the k-th smallest and largest of D draws with
    k = floor((1 − level)/2 · (D + 1)); (−inf, inf) when D is too small for the level (k < 1, D < 39 at 95%)."""
    d = np.sort(per_draw)
    k = math.floor((1 - level) / 2 * (d.size + 1))
    if k < 1:
        return -math.inf, math.inf
    return float(d[k - 1]), float(d[d.size - k])


def permutation_ratio(observed: Sequence[float], null: Sequence[Sequence[float]],
                      level: float = DEFAULT_LEVEL) -> tuple[float, tuple[float, float]]:
    """Effect = mean over units (layers) of observed / mean(null draws); interval from the null's spread.

    Args:
        observed: (L,) the statistic per unit.
        null: (L, D) its permutation draws per unit (draw i of every unit taken together).

    Returns:
        the effect and the order-statistic interval (:func:`_order_interval`) of mean_l observed_l /
        null_{l,i} over draws i: the ratios the observation would show against single random groupings.
    """
    obs = _finite(observed, "permutation_ratio observed")
    d = np.asarray(null, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != obs.size or d.shape[1] < 2:
        raise ValueError(f"null must be (L, D) with L = {obs.size} units and D >= 2 draws; got shape {d.shape}")
    if not np.isfinite(d).all() or (d <= 0).any():
        raise ValueError("permutation_ratio: null draws must be finite and positive")
    _check_level(level)
    effect = float((obs / d.mean(axis=1)).mean())
    return effect, _order_interval((obs[:, None] / d).mean(axis=0), level)


def permutation_shift(observed: Sequence[float], null: Sequence[Sequence[float]],
                      level: float = DEFAULT_LEVEL) -> tuple[float, tuple[float, float]]:
    """Effect = mean over units of observed − mean(null draws); interval from the null's spread.

    Args:
        observed: (L,) the statistic per unit (layer).
        null: (L, D) its draws under the null per unit.

    Returns:
        the effect and the percentile interval of mean_l (observed_l − null_{l,i}) over draws i.
    """
    obs = _finite(observed, "permutation_shift observed")
    d = np.asarray(null, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != obs.size or d.shape[1] < 2:
        raise ValueError(f"null must be (L, D) with L = {obs.size} units and D >= 2 draws; got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("permutation_shift: null draws must be finite")
    _check_level(level)
    return float((obs - d.mean(axis=1)).mean()), _order_interval((obs[:, None] - d).mean(axis=0), level)


def decide(interval: tuple[float, float], reference: float, margin: float, side: str) -> str:
    """The verdict an interval supports, against ``reference`` with ``margin`` on the claim's ``side``.

    supported: the whole interval beyond reference + margin on ``side``; not supported: the whole
    interval beyond reference − margin on the other side; inconclusive otherwise.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}; got side={side!r}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0; got margin={margin!r}")
    lo, hi = interval
    if side == "greater":
        if lo > reference + margin:
            return "supported"
        return "not supported" if hi < reference - margin else "inconclusive"
    if hi < reference - margin:
        return "supported"
    return "not supported" if lo > reference + margin else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """A conjunction of conditions: supported if all are, not supported if any is not, else inconclusive."""
    if not verdicts:
        raise ValueError("combine: need at least one verdict")
    if all(v == "supported" for v in verdicts):
        return "supported"
    return "not supported" if any(v == "not supported" for v in verdicts) else "inconclusive"


def normalized_mutual_information(counts: np.ndarray) -> float:
    """I(A; B) / min(H(A), H(B)) of a contingency table of counts (rows: A, e.g. domains; columns: B).

    0 when B is independent of A — also when B is constant (a router collapsed onto one expert
    carries no information about the domain); 1 when one determines the other.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"counts must be a non-negative 2-D table with a positive total; got shape {c.shape}")
    p = c / c.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    denom = min(ha, hb)
    return 0.0 if denom <= 0 else max(0.0, mi / denom)


@dataclass(frozen=True)
class Assessment:
    """What :func:`assess` computes from an :class:`Evidence`."""

    effect: float
    interval: tuple[float, float]
    verdict: str
    p_value: float | None = None


@dataclass(frozen=True)
class Evidence:
    """The raw values behind one condition of a verdict, with how they become an effect and a decision.

    ``method``:

    * ``t``: ``values`` are per-seed effects; effect = their mean, t-interval over seeds;
    * ``paired_t``: ``values`` and ``against`` are paired per-seed (or per-unit) measurements; the
      effect is mean(values − against), t-interval of the differences;
    * ``bootstrap``: ``values`` are per-unit effects (windows, experts); effect = mean, percentile
      bootstrap (``draws``, ``seed``);
    * ``permutation_ratio``: ``values`` are per-unit observations and ``null`` their (units, draws)
      permutation distribution (:func:`permutation_ratio`); reference is normally 1;
    * ``permutation_shift``: as ``permutation_ratio`` with the difference observed − null
      (:func:`permutation_shift`); reference is normally 0;
    * ``exact``: one value known without sampling error (an exact law); interval = (v, v).

    ``reference``, ``margin`` and ``side`` are the claim's decision rule (:func:`decide`).
    """

    name: str
    method: str
    values: tuple[float, ...]
    reference: float
    margin: float
    side: str
    level: float = DEFAULT_LEVEL
    against: tuple[float, ...] = ()
    null: tuple[tuple[float, ...], ...] = ()
    draws: int = BOOTSTRAP_DRAWS
    seed: int = 0
    unit: str = ""                 # what one value is: "seed", "layer", "window", ...
    note: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got method={self.method!r}")
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}; got side={self.side!r}")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "against", tuple(float(v) for v in self.against))
        object.__setattr__(self, "null", tuple(tuple(float(v) for v in row) for row in self.null))
        if self.method == "paired_t" and len(self.against) != len(self.values):
            raise ValueError(f"paired_t needs as many 'against' values as values; got {len(self.against)} "
                             f"and {len(self.values)}")
        assess(self)  # every stored evidence can be assessed: fail here, before any report is written

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Evidence:
        d = dict(d)
        d["values"] = tuple(d["values"])
        d["against"] = tuple(d.get("against", ()))
        d["null"] = tuple(tuple(r) for r in d.get("null", ()))
        return cls(**d)


def assess(ev: Evidence) -> Assessment:
    """Effect, interval and verdict of ``ev``, computed from its raw values alone."""
    if ev.method == "t":
        x = _finite(ev.values, ev.name)
        effect, interval, p = float(x.mean()), t_interval(x, ev.level), None
    elif ev.method == "paired_t":
        x = _finite(ev.values, ev.name) - _finite(ev.against, ev.name)
        effect, interval, p = float(x.mean()), t_interval(x, ev.level), None
    elif ev.method == "bootstrap":
        x = _finite(ev.values, ev.name)
        effect, interval = float(x.mean()), bootstrap_interval(x, ev.level, draws=ev.draws, seed=ev.seed)
        p = None
    elif ev.method == "permutation_ratio":
        effect, interval = permutation_ratio(ev.values, ev.null, ev.level)
        obs = np.asarray(ev.values)
        d = np.asarray(ev.null)
        # p of the layer-mean ratio against the per-draw ratios of one draw to the others' mean
        null_ratio = (d / d.mean(axis=1, keepdims=True)).mean(axis=0)
        p = permutation_pvalue(float((obs / d.mean(axis=1)).mean()), null_ratio, ev.side)
    elif ev.method == "permutation_shift":
        effect, interval = permutation_shift(ev.values, ev.null, ev.level)
        d = np.asarray(ev.null)
        null_shift = (d - d.mean(axis=1, keepdims=True)).mean(axis=0)
        p = permutation_pvalue(effect, null_shift, ev.side)
    else:  # exact
        x = _finite(ev.values, ev.name)
        effect = float(x.mean())
        interval, p = (effect, effect), None
    return Assessment(effect, interval, decide(interval, ev.reference, ev.margin, ev.side), p)
