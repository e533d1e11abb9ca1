"""Each verdict condition as a reader checks it: a sentence and a figure drawn from its raw evidence.

A verdict stores, per condition, :meth:`moescope.stats.Evidence.to_dict` — the raw values, the
method that turns them into an effect with an interval, and the decision rule (reference,
margin, side). This module re-assesses each with :func:`moescope.stats.assess` (the very
function the verdict was decided by, so the numbers shown are the numbers the rule read) and
draws what the rule looked at:

* ``t`` / ``paired_t`` / ``bootstrap`` / ``exact``: the per-unit values as dots (paired: the
  differences, beside the raw pairs), the effect with its interval as a bar;
* ``permutation_ratio`` / ``permutation_shift``: the null distribution of the statistic — per
  draw i, mean over units of observed / null_i (ratio) or observed − null_i (shift) — with the
  observed effect marked;

and in every figure the reference as a line, the band reference ± margin shaded grey (an
interval reaching into it cannot tell the claim from no effect), the claim's side green and
the opposite side red. Evidence of a method this module does not know is still shown: its
values as dots against the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from moescope.report.figures import new_figure, png_bytes
from moescope.stats import Evidence, assess

VERDICT_COLORS = {"supported": "#1a7f37", "not supported": "#b3261e", "inconclusive": "#9a6700",
                  "holds by construction": "#4a6a8a"}
_HOW = {"t": "t-interval over {units}", "paired_t": "paired t-interval over {units}",
        "bootstrap": "percentile bootstrap over {units}",
        "permutation_ratio": "spread of the permutation null ({d} draws, {units})",
        "permutation_shift": "spread of the null ({d} draws, {units})",
        "exact": "exact value, no sampling error"}
_DEFAULT_UNIT = {"t": "seed", "paired_t": "seed"}


def figure_name(claim_id: int, index: int) -> str:
    """The file name of condition ``index`` (0-based, rule order) of claim ``claim_id``."""
    return f"evidence-claim-{claim_id}-{index}.png"


def _num(x: object) -> float:
    """A JSON number as a float: None (how results.json writes ±inf) reads as nan."""
    return math.nan if x is None else float(x)


def finite_interval(interval: Sequence[object] | None) -> tuple[float, float] | None:
    """``(lo, hi)`` when both ends are finite numbers; None for no interval, (−inf, inf) or [None, None]."""
    if interval is None:
        return None
    lo, hi = (_num(x) for x in interval)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def interval_text(interval: Sequence[object] | None, level: float | None) -> str:
    """``[0.84, 0.93] (95%)``; ``no interval (one replicate)`` when an end is infinite or missing."""
    if interval is None:
        return ""
    iv = finite_interval(interval)
    if iv is None:
        return "no interval (one replicate)"
    lo, hi = _pair(*iv)
    return f"[{lo}, {hi}]" + (f" ({level:.0%})" if level is not None else "")


def _pair(lo: float, hi: float) -> tuple[str, str]:
    """Both ends with 3 significant digits, more (up to 6) when 3 would print distinct ends alike."""
    for digits in range(3, 7):
        a, b = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
        if a != b or lo == hi:
            break
    return a, b


def _unit(ev: dict) -> str:
    return ev.get("unit") or _DEFAULT_UNIT.get(ev.get("method", ""), "unit")


def _null(ev: dict) -> np.ndarray | None:
    """The (units, draws) null, or None when the evidence carries none that fits its values."""
    d = np.asarray(ev.get("null") or (), dtype=np.float64)
    n = len(ev.get("values") or ())
    return d if d.ndim == 2 and d.shape[0] == n and n > 0 and d.shape[1] >= 2 else None


def null_statistic(ev: dict) -> np.ndarray | None:
    """(draws,) the effect statistic of each null draw itself: mean over units of null_i / mean(null) (ratio,
    centred on 1) or null_i − mean(null) (shift, centred on 0) — the null distribution the observed effect
    is held against (the same statistic :func:`moescope.stats.assess` takes its p-value from)."""
    d = _null(ev)
    if d is None or ev.get("method") not in ("permutation_ratio", "permutation_shift"):
        return None
    m = d.mean(axis=1, keepdims=True)
    return (d / m if ev["method"] == "permutation_ratio" else d - m).mean(axis=0)


def describe(ev: dict) -> dict:
    """The condition re-assessed from its raw values, as a sentence.

    Returns ``name``, ``method``, ``effect``, ``interval`` (None if infinite), ``verdict``,
    ``p_value`` and ``sentence``; ``verdict`` is None (and the sentence says why) when the
    evidence cannot be assessed, e.g. a method newer than this moescope.
    """
    method, n = ev.get("method", "?"), len(ev.get("values") or ())
    ref, margin, side = _num(ev.get("reference")), _num(ev.get("margin")), ev.get("side", "greater")
    level = ev.get("level")
    try:
        a = assess(Evidence.from_dict(ev))
        effect, interval, verdict, p = a.effect, a.interval, a.verdict, a.p_value
    except (TypeError, ValueError, KeyError) as err:
        effect, interval, verdict, p = float(np.mean(ev.get("values") or [math.nan])), None, None, None
        problem = str(err)
    d = _null(ev)
    units = f"{n} {_unit(ev)}" + ("" if n == 1 else "s")
    how = _HOW.get(method, f"method {method!r}").format(units=units, d=0 if d is None else d.shape[1])
    beyond = ref + margin if side == "greater" else ref - margin
    parts = [f"effect {effect:.4g}"]
    if method != "exact" and interval is not None:
        iv = interval_text(interval, None)
        parts.append(f"{level:.0%} interval {iv}" if finite_interval(interval) and level is not None else iv)
    parts.append(f"from the {how}")
    rule = (f"held against reference {ref:.4g} ± margin {margin:.4g} (the claim needs the interval wholly "
            f"{'>' if side == 'greater' else '<'} {beyond:.4g})")
    if verdict is None:
        outcome = f"not re-assessed here ({problem})"
    else:
        outcome = verdict + (f", permutation p = {p:.3g}" if p is not None else "")
    sentence = f"{', '.join(parts)}; {rule} → {outcome}."
    if ev.get("note"):
        sentence += f" {ev['note']}"
    return {"name": ev.get("name", "?"), "method": method, "effect": effect,
            "interval": finite_interval(interval), "verdict": verdict, "p_value": p, "sentence": sentence}


def _shade(ax, ev: dict, *, vertical: bool) -> None:
    """Reference line, reference ± margin band, the claim's side and the opposite side, in data limits."""
    ref, margin, side = _num(ev.get("reference")), _num(ev.get("margin")), ev.get("side", "greater")
    lo_lim, hi_lim = ax.get_ylim() if vertical else ax.get_xlim()
    span = ax.axhspan if vertical else ax.axvspan
    line = ax.axhline if vertical else ax.axvline
    claim = (ref + margin, hi_lim) if side == "greater" else (lo_lim, ref - margin)
    other = (lo_lim, ref - margin) if side == "greater" else (ref + margin, hi_lim)
    span(*claim, color=VERDICT_COLORS["supported"], alpha=0.08, lw=0, label="claim side")
    span(*other, color=VERDICT_COLORS["not supported"], alpha=0.08, lw=0, label="opposite side")
    span(ref - margin, ref + margin, color="grey", alpha=0.25, lw=0, label=f"reference ± margin ({margin:.3g})")
    line(ref, color="black", lw=1, ls="--", label=f"reference {ref:.4g}")
    (ax.set_ylim if vertical else ax.set_xlim)(lo_lim, hi_lim)


def _limits(points: Sequence[float], ev: dict) -> tuple[float, float]:
    """Axis limits holding every finite point and the band reference ± margin, padded."""
    ref, margin = _num(ev.get("reference")), _num(ev.get("margin"))
    xs = np.array([p for p in (*points, ref - margin, ref + margin) if math.isfinite(p)], dtype=np.float64)
    lo, hi = (float(xs.min()), float(xs.max())) if xs.size else (-1.0, 1.0)
    pad = 0.12 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.1
    return lo - pad, hi + pad


def _legend(fig, ax) -> None:
    """One legend below the axes, where it hides no data."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=7, frameon=False)


def _title(claim_id: int, index: int, desc: dict) -> str:
    return f"Claim {claim_id}, condition {index + 1}: {desc['name']}\n→ {desc['verdict'] or 'not re-assessed'}"


def _dots(ax, ev: dict, desc: dict, values: np.ndarray, label: str) -> None:
    """Per-unit values as jittered dots at x = 0 and the effect with its interval as a bar at x = 1."""
    rng = np.random.default_rng(0)  # fixed jitter: the same evidence draws the same figure
    ax.scatter(rng.uniform(-0.12, 0.12, values.size), values, s=18, color="C0", alpha=0.8, zorder=3, label=label)
    color = VERDICT_COLORS.get(desc["verdict"] or "", "grey")
    iv = desc["interval"]
    if iv is not None:
        ax.errorbar([1], [desc["effect"]], yerr=[[desc["effect"] - iv[0]], [iv[1] - desc["effect"]]], fmt="o",
                    color=color, capsize=6, lw=2, ms=7, zorder=4,
                    label=f"effect, {ev.get('level', 0.95):.0%} interval" if desc["method"] != "exact" else "effect")
    else:
        ax.plot([1], [desc["effect"]], "o", color=color, ms=7, zorder=4, label="effect")
        if desc["method"] != "exact":  # one replicate: the interval is unbounded, drawn as a dotted line
            ax.axvline(1, color=color, lw=1, ls=":", label="no interval (one replicate)")
    ax.set_ylim(*_limits([*values.tolist(), desc["effect"], *(iv or ())], ev))
    ax.set_xlim(-0.6, 1.9)
    ax.set_xticks([0, 1], [f"per {_unit(ev)} ({values.size})", "effect"])
    _shade(ax, ev, vertical=True)


def _interval_figure(claim_id: int, index: int, ev: dict, desc: dict) -> bytes:
    paired = desc["method"] == "paired_t" and len(ev.get("against") or ()) == len(ev.get("values") or ())
    fig, axes = new_figure(1, 2 if paired else 1, width=8.4 if paired else 5.6, height=4.2)
    values = np.asarray(ev.get("values") or (), dtype=np.float64)
    if paired:  # the raw pairs, then their differences: the rule reads the differences
        ax = axes[0, 0]
        against = np.asarray(ev["against"], dtype=np.float64)
        for a, b in zip(against, values, strict=True):
            ax.plot([0, 1], [a, b], "o-", color="C0", alpha=0.6, ms=4)
        ax.set_xticks([0, 1], ["against", "values"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_title(f"paired per-{_unit(ev)} measurements", fontsize=9)
        values = values - against
    ax = axes[0, -1]
    _dots(ax, ev, desc, values, f"per-{_unit(ev)} difference" if paired else f"per-{_unit(ev)} value")
    ax.set_ylabel(desc["name"] + (" (values − against)" if paired else ""))
    ax.set_title(_title(claim_id, index, desc), fontsize=9)
    _legend(fig, ax)
    return png_bytes(fig)


def _null_figure(claim_id: int, index: int, ev: dict, desc: dict, stat: np.ndarray) -> bytes:
    fig, axes = new_figure(width=6.0, height=4.2)
    ax = axes[0, 0]
    ratio = desc["method"] == "permutation_ratio"
    ax.hist(stat, bins=min(40, max(8, stat.size // 5)), color="C0", alpha=0.6,
            label=f"null: each draw's mean over {_unit(ev)}s {'/' if ratio else '−'} the null mean")
    color = VERDICT_COLORS.get(desc["verdict"] or "", "grey")
    ax.axvline(desc["effect"], color=color, lw=2.5, label=f"observed effect {desc['effect']:.4g}")
    iv = desc["interval"]
    if iv is not None:
        for x, label in zip(iv, (f"{ev.get('level', 0.95):.0%} interval", None), strict=True):
            ax.axvline(x, color=color, lw=1, ls=":", label=label)
    ax.set_xlim(*_limits([*stat.tolist(), desc["effect"]], ev))
    _shade(ax, ev, vertical=False)
    ax.set_xlabel(f"{desc['name']} ({'ratio' if ratio else 'shift'} to the null)")
    ax.set_ylabel("null draws")
    ax.set_title(_title(claim_id, index, desc) + (f", p = {desc['p_value']:.3g}" if desc["p_value"] else ""),
                 fontsize=9)
    _legend(fig, ax)
    return png_bytes(fig)


def evidence_figure(claim_id: int, index: int, ev: dict, desc: dict | None = None) -> bytes:
    """PNG bytes of condition ``index`` of claim ``claim_id`` (``desc``: its :func:`describe`)."""
    desc = desc or describe(ev)
    stat = null_statistic(ev)
    if stat is not None:
        return _null_figure(claim_id, index, ev, desc, stat)
    return _interval_figure(claim_id, index, ev, desc)


def evidence_figures(verdicts: Sequence[dict], skip: frozenset[str] | set[str] = frozenset()) -> dict[str, bytes]:
    """Every evidence figure of ``verdicts`` by :func:`figure_name`, except those named in ``skip``."""
    out = {}
    for v in verdicts:
        for i, ev in enumerate(v.get("evidence") or ()):
            name = figure_name(v["claim_id"], i)
            if name not in skip:
                out[name] = evidence_figure(v["claim_id"], i, ev)
    return out
