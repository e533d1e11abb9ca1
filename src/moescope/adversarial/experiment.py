"""Claim 4 of the lecture, measured: tiny perturbations flip classifiers, and why.

``moescope attack`` runs this experiment; :func:`run_experiment` returns a JSON-ready dict
of every number the report shows, with sentences formatted from those numbers (see
:mod:`moescope.adversarial.sentences`). Two data sets:

* ``digits``: softmax regression and an MLP on scikit-learn's 8×8 digits (L∞ budgets, pixels
  in [0, 1]); the dimension sweep upsamples the images to 16×16 and 32×32 and retrains;
* ``spheres``: Gilmer et al.'s concentric spheres (L2 budgets, unbounded inputs); the sweep
  retrains in growing d, and the error-set measure is held against the isoperimetric bound.

Both also run the dataset-free laws: the √d ratio on an exactly linear classifier and the
linearity law of random linear maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from moescope.adversarial import data as D
from moescope.adversarial import spheres as S
from moescope.adversarial._common import check_eps, flat_norm
from moescope.adversarial.attacks import evaluate_attack, fgm, pgd, random_noise
from moescope.adversarial.boundary import (
    MEDIAN_ABS_NORMAL,
    linear_ratio_sweep,
    measure_boundary,
    minimal_fast_gradient,
    minimal_noise,
    random_ratio_quantile,
)
from moescope.adversarial.deepfool import deepfool_search, l2_fraction
from moescope.adversarial.linearity import linearity_sweep
from moescope.adversarial.sentences import sentences

DATASETS = ("digits", "spheres")
ATTACKS = ("fgsm", "pgd", "deepfool")
# L∞ budgets on [0, 1] pixels; one grey level of the digits is 1/16 = 0.0625
DIGITS_EPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# L2 budgets on spheres of radius 1 and 1.3: the gap between them is 0.3
SPHERES_EPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AttackConfig:
    """What ``moescope attack`` measures. Defaults finish in under a minute on 2 CPU cores."""

    dataset: str = "digits"
    attack: str = "pgd"              # the featured attack: its examples are drawn, its sentence comes first
    eps: tuple[float, ...] | None = None  # None: DIGITS_EPS or SPHERES_EPS
    seed: int = 0
    attack_points: int = 300         # test points attacked per model (accuracy s.e. <= 0.03)
    pgd_steps: int = 10              # torchattacks' default; alpha = eps / 4 as its 8/255 vs 2/255
    boundary_points: int = 40        # points whose boundary distances are searched
    directions: int = 25             # random lines per point: 1000 ratios per model
    # digits
    sizes: tuple[int, ...] = (8, 16, 32)   # image sides of the sweep: d = 64, 256, 1024
    epochs: int = 30                 # Adam epochs over 1297 training images
    examples: int = 6                # digits drawn with their perturbation
    # spheres
    sphere_dims: tuple[int, ...] = (25, 50, 100)  # the last one is the main model (the paper used 500)
    sphere_steps: int = 1000         # Adam steps of 128 fresh points each
    sphere_checkpoints: tuple[int, ...] = (125, 250, 500)  # extra (mu, distance) points for Gilmer's plot
    sphere_hidden: int = 128
    mu_samples: int = 100_000        # inner-sphere samples for mu: resolves mu down to ~3e-5
    sphere_attack_points: int = 100  # starting points of the on-sphere PGD
    # laws without data
    linear_dims: tuple[int, ...] = (10, 100, 1000, 10000)
    linear_points: int = 2
    linear_directions: int = 150
    linearity_dims: tuple[int, ...] = (10, 100, 1000, 10000)
    linearity_eps: float = 0.01
    # torch intra-op threads during the run, restored afterwards: the models are small, and one
    # thread avoids the stalls of oversubscribed cores (several times slower with 2 threads on 2
    # busy cores); None keeps torch's own setting
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}; got dataset={self.dataset!r}")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}; got attack={self.attack!r}")
        if self.eps is not None:
            if not self.eps:
                raise ValueError("eps must list at least one budget, e.g. eps=(0, 0.05, 0.1)")
            for e in self.eps:
                check_eps(e)
        for name in ("attack_points", "boundary_points", "directions", "epochs", "examples", "sphere_steps",
                     "mu_samples", "sphere_attack_points", "linear_points", "linear_directions", "sphere_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None; got threads={self.threads}")
        if self.dataset == "digits" and (not self.sizes or min(self.sizes) < 2):
            raise ValueError(f"sizes must list image sides >= 2; got sizes={self.sizes}")
        if self.dataset == "spheres" and (not self.sphere_dims or min(self.sphere_dims) < 2):
            raise ValueError(f"sphere_dims must list dimensions >= 2; got sphere_dims={self.sphere_dims}")

    @property
    def norm(self) -> str:
        return "linf" if self.dataset == "digits" else "l2"

    @property
    def budgets(self) -> tuple[float, ...]:
        default = DIGITS_EPS if self.dataset == "digits" else SPHERES_EPS
        return tuple(sorted(set(float(e) for e in (self.eps or default))))

    @property
    def clip(self) -> tuple[float, float] | None:
        return (0.0, 1.0) if self.dataset == "digits" else None


def _median(v: torch.Tensor | np.ndarray) -> float | None:
    a = np.asarray(v, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def _curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> dict:
    """Robust accuracy and success rate at every budget for the gradient attacks and for noise."""
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    out = {k: {"robust_accuracy": [], "success_rate": []} for k in ("fgsm", "pgd", "noise")}
    for eps in cfg.budgets:
        advs = {
            "fgsm": fgm(model, x, y, eps=eps, norm=cfg.norm, clip=cfg.clip),
            "pgd": pgd(model, x, y, eps=eps, alpha=eps / 4, steps=cfg.pgd_steps, norm=cfg.norm, clip=cfg.clip,
                       generator=gen),
            "noise": random_noise(x, eps=eps, norm=cfg.norm, clip=cfg.clip, generator=gen),
        }
        for name, adv in advs.items():
            s = evaluate_attack(model, x, y, adv)
            out[name]["robust_accuracy"].append(s.robust_accuracy)
            out[name]["success_rate"].append(s.success_rate)
    return out


def _minimal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> dict:
    """DeepFool and the smallest fast-gradient step, on the points the model gets right."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    df = deepfool_search(model, x, y, clip=cfg.clip)
    eps_max = 1.0 if cfg.norm == "linf" else 2.0
    eps, adv = minimal_fast_gradient(model, x, y, norm=cfg.norm, eps_max=eps_max, clip=cfg.clip)
    found = torch.isfinite(eps)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    noise_eps, _ = minimal_noise(model, x, y, norm=cfg.norm, eps_max=eps_max, clip=cfg.clip, generator=gen)
    rho_fast = flat_norm(adv - x) / flat_norm(x)
    rho_df = l2_fraction(df, x)
    return {
        "points": len(x),
        "deepfool_fooled": float(df.fooled.float().mean()),
        "deepfool_iterations_mean": float(df.iterations.float().mean()),
        "deepfool_l2_median": _median(flat_norm(df.perturbation)[df.fooled]),
        "deepfool_linf_median": _median(flat_norm(df.perturbation, float("inf"))[df.fooled]),
        "deepfool_rho_mean": float(rho_df[df.fooled].mean()) if bool(df.fooled.any()) else None,
        "fast_found": float(found.float().mean()),
        "fast_eps_median": float(np.median(eps.double().numpy())) if len(x) else None,  # in the run's norm
        "fast_l2_median": _median(flat_norm(adv - x)[found]),
        "fast_rho_mean": float(rho_fast[found].mean()) if bool(found.any()) else None,
        # inf (never flips up to eps_max) counts as larger than any finite budget
        "noise_eps_median": float(np.median(noise_eps.double().numpy())) if len(x) else None,
        "noise_found": float(torch.isfinite(noise_eps).float().mean()),
        "eps_max": eps_max,
    }


def _examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> dict:
    """A few digits, the featured attack's perturbation and the adversarial image, with labels."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)[: cfg.examples]
    x, y = x[ok], y[ok]
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    budgets = [e for e in cfg.budgets if e > 0] or [8 / 255]
    if cfg.attack == "deepfool":
        eps = None
        adv = deepfool_search(model, x, y, clip=cfg.clip).x_adv
    else:
        eps = min(budgets, key=lambda e: abs(e - 0.1))  # 1.6 grey levels of 1/16
        adv = (fgm(model, x, y, eps=eps, norm="linf") if cfg.attack == "fgsm"
               else pgd(model, x, y, eps=eps, alpha=eps / 4, steps=cfg.pgd_steps, generator=gen))
    with torch.no_grad():
        probs_clean = model(x).softmax(1)
        probs_adv = model(adv).softmax(1)
    return {
        "attack": cfg.attack,
        "eps": eps,
        "label": y.tolist(),
        "clean": x[:, 0].tolist(),
        "adversarial": adv[:, 0].tolist(),
        "clean_pred": probs_clean.argmax(1).tolist(),
        "clean_conf": probs_clean.max(1).values.tolist(),
        "adv_pred": probs_adv.argmax(1).tolist(),
        "adv_conf": probs_adv.max(1).values.tolist(),
        "linf": flat_norm(adv - x, float("inf")).tolist(),
        "l2": flat_norm(adv - x).tolist(),
    }


def _affine_linf(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Exact L∞ distance to an affine classifier's boundary, min_k (f_y − f_k)/‖w_y − w_k‖₁ (no box):
    the linearity law's prediction of the smallest ε that flips, for the softmax regression."""
    linear = [m for m in model if isinstance(m, nn.Linear)]
    norm = [m for m in model if isinstance(m, D.Normalize)]
    if len(linear) != 1:
        return None
    w = linear[0].weight.detach() / (norm[0].std if norm else 1.0)   # input-space weights (K, d)
    with torch.no_grad():
        logits = model(x)
    rows = torch.arange(len(y))
    gap = logits[rows, y].unsqueeze(1) - logits                       # (N, K)
    l1 = (w[y].unsqueeze(1) - w.unsqueeze(0)).abs().sum(2)            # (N, K)
    ratio = gap / l1
    ratio[rows, y] = torch.inf
    return _median(ratio.min(1).values[logits.argmax(1) == y])


def _digits(cfg: AttackConfig, tick: Callable[[str], None]) -> dict:
    split = D.load_digits_split(seed=cfg.seed)
    n = min(cfg.attack_points, len(split.y_test))
    main: dict = {}
    sweep = []
    examples = None
    for size in cfg.sizes:
        sp = split if size == 8 else split.map(lambda x, s=size: D.upsample(x, s))
        mean, std = float(sp.x_train.mean()), float(sp.x_train.std())
        builders = {"softmax regression": (D.softmax_regression, 1e-2), "MLP": (D.mlp, 3e-3)}
        for name, (build, lr) in builders.items():
            tick(f"digits {size}×{size}: training the {name}")
            model = build(sp.x_train.shape[1:], 10, mean=mean, std=std, seed=cfg.seed)
            D.train_classifier(model, sp.x_train, sp.y_train, epochs=cfg.epochs, lr=lr, seed=cfg.seed)
            x, y = sp.x_test[:n], sp.y_test[:n]
            row = {"model": name, "size": size, "d": sp.dim,
                   "train_accuracy": D.accuracy(model, sp.x_train, sp.y_train),
                   "clean_accuracy": D.accuracy(model, sp.x_test, sp.y_test)}
            tick(f"digits {size}×{size}: DeepFool, minimal FGSM and boundary distances ({name})")
            row.update(_minimal(model, x, y, cfg))
            if name == "softmax regression":
                row["affine_linf_median"] = _affine_linf(model, x, y)
            gen = torch.Generator().manual_seed(cfg.seed + size)
            bd = measure_boundary(model, x[: cfg.boundary_points], y[: cfg.boundary_points],
                                  n_directions=cfg.directions, generator=gen)
            row["boundary"] = bd.summary()
            sweep.append(row)
            if size == cfg.sizes[0]:
                tick(f"digits {size}×{size}: FGSM, PGD and noise at {len(cfg.budgets)} budgets ({name})")
                main[name] = {"d": sp.dim, "clean_accuracy": D.accuracy(model, x, y), "points": n,
                              "test_accuracy": row["clean_accuracy"],
                              "curves": _curves(model, x, y, cfg)}
                if name == "MLP":
                    examples = _examples(model, x, y, cfg)
    return {"models": main, "sweep": sweep, "examples": examples, "gilmer": None}


def _gilmer_point(model: nn.Module, d: int, cfg: AttackConfig, step: int, gen: torch.Generator) -> dict:
    inner = S.error_measure(model, d, samples=cfg.mu_samples, generator=gen)
    outer = S.error_measure(model, d, samples=max(1, cfg.mu_samples // 10), generator=gen,
                            radius=S.RADII[1], label=1)
    x0 = S.sample_spheres(cfg.sphere_attack_points, d, gen, radii=(1.0, 1.0))[0]
    y0 = torch.zeros(len(x0), dtype=torch.long)
    with torch.no_grad():
        ok = model(x0).argmax(1) == 0
    adv, found = S.on_sphere_pgd(model, x0[ok], y0[ok], step=0.005, steps=300)
    dist = S.distances(x0[ok], adv)[found.numpy()]
    lo, hi = inner.interval
    bound = S.isoperimetric_bounds(inner.mu, d) if 0 < inner.mu < 1 else None
    return {
        "step": step, "d": d,
        "mu": inner.mu, "mu_ci95": [lo, hi], "errors": inner.errors, "samples": inner.samples,
        "outer_mu": outer.mu,
        "attacked": int(ok.sum()), "found": float(found.float().mean()) if len(found) else 0.0,
        "distance_mean": float(dist.mean()) if dist.size else None,
        "distance_median": float(np.median(dist)) if dist.size else None,
        "bound": bound,
        # the bound at the ends of mu's interval: a smaller mu allows a larger distance
        "bound_mean_range": [S.isoperimetric_bounds(hi, d)["mean"] if hi < 1 else 0.0,
                             S.isoperimetric_bounds(lo, d)["mean"] if lo > 0 else None],
    }


def _spheres(cfg: AttackConfig, tick: Callable[[str], None]) -> dict:
    sweep, gilmer = [], []
    main: dict = {}
    for d in cfg.sphere_dims:
        is_main = d == cfg.sphere_dims[-1]
        tick(f"spheres d={d}: training ({cfg.sphere_steps} steps)")
        model = S.sphere_classifier(d, hidden=cfg.sphere_hidden, seed=cfg.seed)
        checkpoints = S.train_spheres(model, d, steps=cfg.sphere_steps,
                                      checkpoints=cfg.sphere_checkpoints if is_main else (), seed=cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + d)
        x, y = S.sample_spheres(cfg.attack_points, d, gen)
        row = {"model": "MLP", "d": d, "clean_accuracy": D.accuracy(model, x, y)}
        tick(f"spheres d={d}: DeepFool, minimal FGM and boundary distances")
        row.update(_minimal(model, x, y, cfg))
        # from the inner sphere only: lines from the outer sphere (nearly tangent in high d) never
        # meet a boundary that encloses the inner one
        inner = x[y == 0][: cfg.boundary_points]
        bd = measure_boundary(model, inner, torch.zeros(len(inner), dtype=torch.long),
                              n_directions=cfg.directions, generator=gen)
        row["boundary"] = bd.summary()
        tick(f"spheres d={d}: error-set measure and on-sphere PGD")
        if is_main:
            final = {k: v.clone() for k, v in model.state_dict().items()}
            for step in sorted(checkpoints):
                model.load_state_dict(checkpoints[step])
                gilmer.append(_gilmer_point(model, d, cfg, step, gen))
            model.load_state_dict(final)
            row["gilmer"] = gilmer[-1]
            tick(f"spheres d={d}: FGM, PGD-L2 and noise at {len(cfg.budgets)} budgets")
            main["MLP"] = {"d": d, "clean_accuracy": row["clean_accuracy"], "test_accuracy": row["clean_accuracy"],
                           "points": len(y),
                           "curves": _curves(model, x, y, cfg)}
        else:
            row["gilmer"] = _gilmer_point(model, d, cfg, cfg.sphere_steps, gen)
        sweep.append(row)
    return {"models": main, "sweep": sweep, "examples": None, "gilmer": gilmer}


def _theory_curves(cfg: AttackConfig, body: dict) -> dict:
    """Exact curves for the figures: the flat-boundary ratio law over d, and Gilmer's bound over μ."""
    dims = [r["d"] for r in body["sweep"]] + list(cfg.linear_dims)
    grid = np.unique(np.round(np.geomspace(max(2, min(dims) / 2), max(dims) * 2, 60)).astype(int))
    curves = {
        "ratio_d": grid.tolist(),
        "ratio_median": np.asarray(random_ratio_quantile(0.5, grid)).tolist(),
        "ratio_q10": np.asarray(random_ratio_quantile(0.1, grid)).tolist(),
        "ratio_q90": np.asarray(random_ratio_quantile(0.9, grid)).tolist(),
        "ratio_asymptote": (np.sqrt(grid) / MEDIAN_ABS_NORMAL).tolist(),
    }
    if body.get("gilmer"):
        mus = np.geomspace(1e-6, 0.3, 40)
        curves["gilmer"] = {}
        for d in sorted({r["d"] for r in body["sweep"]}):
            bounds = [S.isoperimetric_bounds(float(m), d) for m in mus]
            curves["gilmer"][str(d)] = {"mu": mus.tolist(), "mean": [b["mean"] for b in bounds],
                                        "gaussian": [b["gaussian"] for b in bounds]}
    return curves


def stages(cfg: AttackConfig) -> int:
    """How many times :func:`run_experiment` reports progress (a progress bar's total)."""
    if cfg.dataset == "digits":
        return len(cfg.sizes) * 4 + 2 + 2
    return len(cfg.sphere_dims) * 3 + 1 + 2


def run_experiment(cfg: AttackConfig = AttackConfig(), progress: Progress | None = None) -> dict:
    """Run every measurement; returns a JSON-ready dict (no inf or NaN) with computed sentences.

    Args:
        cfg: what to measure.
        progress: called as ``progress(stage, done, total)`` when each stage starts.
    """
    total = stages(cfg)
    done = 0

    def tick(stage: str) -> None:
        nonlocal done
        if progress is not None:
            progress(stage, min(done, total), total)
        done += 1

    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        with D.seeded(cfg.seed):  # any draw from torch's global generator is seeded; its state is restored
            body = _digits(cfg, tick) if cfg.dataset == "digits" else _spheres(cfg, tick)
            tick("exact linear classifiers: the √d ratio across d")
            anchor = linear_ratio_sweep(cfg.linear_dims, points=cfg.linear_points,
                                        directions=cfg.linear_directions, seed=cfg.seed)
            tick("random linear maps: the linearity law")
            linearity = linearity_sweep(cfg.linearity_dims, eps=cfg.linearity_eps, seed=cfg.seed)
    finally:
        torch.set_num_threads(threads)
    if progress is not None:
        progress("done", total, total)
    config = asdict(replace(cfg, eps=cfg.budgets))
    body["curves"] = _theory_curves(cfg, body)
    results = {
        "config": config,
        "dataset": cfg.dataset,
        "norm": cfg.norm,
        "eps": list(cfg.budgets),
        **body,
        "linear_anchor": anchor,
        "linearity": linearity,
    }
    results = _finite(results)
    results["sentences"] = _finite(sentences(results))
    return results


def _finite(obj: object) -> object:
    """inf and NaN are not JSON: they become None (each is documented where it can arise)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _finite(obj.item())
    return obj
