"""The report's sentences, each formatted from the numbers of one run; none is written by hand.

Every sentence quotes what was measured next to what theory gives; there is no pass/fail
verdict to fake. Each entry carries the numbers it quotes, so a reader (or a test) can check
the sentence against ``results.json``.
"""

from __future__ import annotations

from moescope.adversarial.linearity import loglog_slope

__all__ = ["sentences"]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _g(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _reference_eps(eps: list[float], curve: list[float], clean: float) -> int:
    """Index of the smallest positive budget at which the accuracy is at most half the clean one."""
    positive = [i for i, e in enumerate(eps) if e > 0]
    if not positive:
        return len(eps) - 1
    for i in positive:
        if curve[i] <= clean / 2:
            return i
    return positive[-1]


def _attacks(res: dict) -> dict:
    digits = res["dataset"] == "digits"
    main = res["models"]["MLP"]
    curves = main["curves"]
    eps = res["eps"]
    featured = res["config"]["attack"] if res["config"]["attack"] in ("fgsm", "pgd") else "pgd"
    i = _reference_eps(eps, curves[featured]["robust_accuracy"], main["clean_accuracy"])
    e = eps[i]
    fgsm, pgd_, noise = (curves[k]["robust_accuracy"][i] for k in ("fgsm", "pgd", "noise"))
    steps = res["config"]["pgd_steps"]
    if digits:
        where = f"{main['points']} test digits (d={main['d']})"
        budget = f"L∞ budget ε = {e:g} ({e * 16:.2g} grey levels of 1/16)"
        noise_name = "random-sign noise"
        names = ("FGSM", f"PGD ({steps} steps)")
    else:
        where = f"{main['points']} points of the two spheres (d={main['d']})"
        budget = f"L2 budget ε = {e:g} (the spheres are 0.3 apart)"
        noise_name = "a random direction"
        names = ("FGM", f"PGD-L2 ({steps} steps)")
    text = (f"On {where}, the MLP's accuracy of {_pct(main['clean_accuracy'])} falls to {_pct(fgsm)} under "
            f"{names[0]} and {_pct(pgd_)} under {names[1]} at {budget}, while {noise_name} of the same size "
            f"leaves {_pct(noise)}")
    numbers = {"eps": e, "clean": main["clean_accuracy"], "fgsm": fgsm, "pgd": pgd_, "noise": noise}
    lin = res["models"].get("softmax regression")
    if lin is not None:
        lin_pgd = lin["curves"]["pgd"]["robust_accuracy"][i]
        text += (f"; softmax regression falls from {_pct(lin['clean_accuracy'])} to {_pct(lin_pgd)} under PGD at "
                 "the same ε")
        numbers["softmax_pgd"] = lin_pgd
    return {"id": "attacks",
            "title": "Gradient perturbations flip the classifier; random noise of the same size does not",
            "sentence": text + ".", "numbers": numbers}


def _deepfool(res: dict) -> dict:
    row = next(r for r in res["sweep"] if r["model"] == "MLP" and r["d"] == res["models"]["MLP"]["d"])
    digits = res["dataset"] == "digits"
    fast = "FGSM" if digits else "FGM"
    size = (f"median ε = {_g(row['fast_eps_median'])}, median ‖δ‖₂ = {_g(row['fast_l2_median'])}" if digits
            else f"median ‖δ‖₂ = {_g(row['fast_l2_median'])}")
    ratio = (row["fast_rho_mean"] / row["deepfool_rho_mean"]
             if row["fast_rho_mean"] and row["deepfool_rho_mean"] else None)
    text = (f"DeepFool fools {_pct(row['deepfool_fooled'])} of the MLP's {row['points']} correctly classified "
            f"points (d={row['d']}) in {row['deepfool_iterations_mean']:.2f} linearisations on average, with median "
            f"‖r‖₂ = {_g(row['deepfool_l2_median'])} and mean ρ = ‖r‖₂/‖x‖₂ = {_g(row['deepfool_rho_mean'])}; the "
            f"smallest {fast} step that flips a point ({_pct(row['fast_found'])} flip within the search) has "
            f"{size} and mean ρ = {_g(row['fast_rho_mean'])}, {_g(ratio)} times DeepFool's.")
    return {"id": "deepfool", "title": "DeepFool's minimal L2 perturbation against the smallest fast-gradient step",
            "sentence": text,
            "numbers": {"d": row["d"], "deepfool_rho_mean": row["deepfool_rho_mean"],
                        "fast_rho_mean": row["fast_rho_mean"], "ratio": ratio,
                        "deepfool_fooled": row["deepfool_fooled"]}}


def _shortcut(res: dict) -> dict:
    rows = [r for r in res["sweep"] if r["model"] == "MLP"]
    top = rows[-1]
    b = top["boundary"]
    anchor = res["linear_anchor"]
    over = [a["median_over_theory"] for a in anchor]
    where = f"{top['size']}×{top['size']} digits" if res["dataset"] == "digits" else "the spheres"
    finite = [(r["d"], r["boundary"]["median_ratio"]) for r in rows if r["boundary"]["median_ratio"]]
    slope = loglog_slope(*zip(*finite, strict=True)) if len(finite) > 1 else None
    sweep_text = ", ".join(f"{_g(r['boundary']['median_ratio'])} (theory {_g(r['boundary']['theory_median_ratio'])})"
                           f" at d={r['d']}" for r in rows)
    text = (f"In d={top['d']} ({where}), the MLP's decision boundary lies a median {_g(b['median_ratio'])} times "
            f"farther along a random line than along DeepFool's direction (99% interval "
            f"{_g(b['median_ratio_ci99'][0])}–{_g(b['median_ratio_ci99'][1])} by {b['ci_method']}; {b['points']} "
            f"points × {b['directions_per_point']} lines); a locally flat boundary gives exactly "
            f"1/band_quantile(½, d) = "
            f"{_g(b['theory_median_ratio'])} (√d/0.6745 = {_g(b['asymptote'])}). Across the sweep: {sweep_text}"
            + (f", a growth as d^{slope:.2f} (flat-boundary law: d^0.5). " if slope is not None else ". ") +
            f"On exactly linear classifiers in d = {anchor[0]['d']}…{anchor[-1]['d']} the measured median ratios are "
            f"{min(over):.3f} to {max(over):.3f} times the exact law.")
    return {"id": "shortcut", "title": "Shortcuts: the boundary along a random direction vs along the adversarial one",
            "sentence": text,
            "numbers": {"d": top["d"], "median_ratio": b["median_ratio"], "theory": b["theory_median_ratio"],
                        "slope": slope,
                        "asymptote": b["asymptote"], "anchor_over_theory": over}}


def _linearity(res: dict) -> dict:
    lin = res["linearity"]
    rows = lin["rows"]
    top = rows[-1]
    gap = max(max(r["max_rel_gap_linf"], r["max_rel_gap_l2"]) for r in rows)
    text = (f"An L∞ step ε·sign(w) moves a random linear score (w ~ N(0, 1)) by ε‖w‖₁, matched by the measured "
            f"shift to {gap:.1e} relative; that shift grows as d^{_g(lin['slope_linf'])} — "
            f"{_g(top['shift_linf_per_eps'], 4)}·ε at d={top['d']}, against E‖w‖₁ = d√(2/π) = "
            f"{_g(top['l1_expected'], 4)} — while the L2 step of the same size moves it by ε‖w‖₂, growing as "
            f"d^{_g(lin['slope_l2'])} ({_g(top['shift_l2_per_eps'], 4)}·ε), "
            f"{_g(top['shift_linf_per_eps'] / top['shift_l2_per_eps'])} times less.")
    numbers = {"slope_linf": lin["slope_linf"], "slope_l2": lin["slope_l2"], "max_rel_gap": gap}
    soft = [r for r in res["sweep"] if r["model"] == "softmax regression" and r.get("affine_linf_median")]
    if len(soft) > 1:
        text += (f" For the trained softmax regression the exact L∞ distance to its nearest boundary, "
                 f"min_k (f_y − f_k)/‖w_y − w_k‖₁, has median {_g(soft[0]['affine_linf_median'])} at d={soft[0]['d']} "
                 f"and {_g(soft[-1]['affine_linf_median'])} at d={soft[-1]['d']}.")
        numbers["softmax_affine_linf"] = [r["affine_linf_median"] for r in soft]
    return {"id": "linearity", "title": "Linearity: an L∞ step moves a linear score by ε‖w‖₁, which grows like d",
            "sentence": text, "numbers": numbers}


def _sweep(res: dict) -> dict:
    digits = res["dataset"] == "digits"
    parts, numbers = [], {}
    for model in ("MLP", "softmax regression"):
        rows = [r for r in res["sweep"] if r["model"] == model]
        if not rows:
            continue
        eps = [r["fast_eps_median"] for r in rows]
        noise = [r["noise_eps_median"] for r in rows]
        dist = [r["deepfool_l2_median"] for r in rows]
        gap = [n / e if n and e else None for n, e in zip(noise, eps, strict=True)]
        cap = f">{rows[0]['eps_max']:g}"
        noise_text = " → ".join(cap if v is None else _g(v) for v in noise)
        parts.append(f"for the {model} the median smallest {'FGSM ε' if digits else 'FGM step'} goes "
                     f"{' → '.join(_g(e) for e in eps)}, the median smallest "
                     f"{'random-sign ε' if digits else 'random-direction step'} {noise_text} "
                     f"(noise needs {' → '.join(_g(v) for v in gap)} times more), and DeepFool's median ‖r‖₂ "
                     f"{' → '.join(_g(v) for v in dist)}, at clean accuracy "
                     f"{' → '.join(_pct(r['clean_accuracy']) for r in rows)}")
        numbers[model] = {"d": [r["d"] for r in rows], "fast_eps_median": eps, "noise_eps_median": noise,
                          "noise_over_fast": gap, "deepfool_l2_median": dist}
    ds = [r["d"] for r in res["sweep"] if r["model"] == "MLP"]
    how = ("Upsampling the digits and retraining" if digits else "Retraining on the spheres")
    text = f"{how} in d = {', '.join(map(str, ds))}: " + "; ".join(parts) + "."
    return {"id": "sweep", "title": "The budget needed to flip, adversarial vs random, as the input dimension grows",
            "sentence": text, "numbers": numbers}


def _gilmer(res: dict) -> dict | None:
    points = res.get("gilmer") or []
    if not points:
        return None
    p = points[-1]
    lo, hi = p["mu_ci95"]
    if p["errors"] > 0 and p["bound"]:
        mu_text = f"μ = {p['mu']:.2e} of the inner sphere (95% interval {lo:.1e}–{hi:.1e}; {p['errors']} of " \
                  f"{p['samples']} samples)"
        bound = p["bound"]["mean"]
        gauss = p["bound"]["gaussian"]
    else:
        mu_text = f"no sampled point of the inner sphere (μ < {hi:.1e} at 95%, {p['samples']} samples)"
        bound, gauss = p["bound_mean_range"][0], None
    ratio = p["distance_mean"] / bound if p["distance_mean"] is not None and bound else None
    others = ", ".join(f"μ = {q['mu']:.1e} → {_g(q['distance_mean'])} (bound {_g((q['bound'] or {}).get('mean'))})"
                       for q in points[:-1])
    text = (f"In d={p['d']} the MLP misclassifies {mu_text}, yet PGD on the sphere reaches an error from "
            f"{_pct(p['found'])} of {p['attacked']} correctly classified points, at mean distance "
            f"{_g(p['distance_mean'])} (median {_g(p['distance_median'])}); by the isoperimetric inequality no error "
            f"set of that measure can lie farther on average than {_g(bound)} (the cap of mass μ, exact law"
            + (f"; Gilmer et al.'s Φ⁻¹(1−μ)/√d = {_g(gauss)}" if gauss is not None else "")
            + f"), so the errors found are at {_g(ratio)} of the largest possible mean distance.")
    if others:
        text += f" Earlier checkpoints: {others}."
    return {"id": "gilmer", "title": "Adversarial spheres: a tiny error set is never far away",
            "sentence": text,
            "numbers": {"d": p["d"], "mu": p["mu"], "distance_mean": p["distance_mean"], "bound_mean": bound,
                        "ratio": ratio}}


def sentences(res: dict) -> list[dict]:
    """All sentences of one run, the featured attack's first."""
    out = [_attacks(res), _deepfool(res)]
    if res["config"]["attack"] == "deepfool":
        out.reverse()
    out += [_shortcut(res), _linearity(res), _sweep(res)]
    gilmer = _gilmer(res)
    if gilmer is not None:
        out.append(gilmer)
    return out
