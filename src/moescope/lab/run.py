"""``moescope lab``: every claim of the lecture, tested in one command.

Runs the experiments each selected claim needs (sharing them between claims), evaluates the
claims into :class:`~moescope.lab.verdict.Verdict` s and returns one JSON-ready dict:
the verdicts, the raw measurements the report draws its figures from, provenance and
timings. Profiles: ``quick`` (the README's main command, a few minutes on 2 CPU cores) and
``full`` (longer training, more samples and seeds).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from moescope.lab.claims import (
    c01_orthogonality,
    c02_equidistance,
    c03_equator,
    c04_shortcuts,
    c05_sparse_compute,
    c06_expert_subspaces,
    c07_similarity_dynamics,
    c08_collapse,
    c09_uniformity,
    c10_shared_expert,
    c11_angle_routing,
    c12_heads_vs_experts,
    c13_domains,
    c14_heatmaps,
    c15_quality_compute,
    c16_trees,
)

PROFILES = ("quick", "full")
# claim -> the experiment it reads (claims sharing an experiment run it once)
NEEDS = {1: "sphere", 2: "sphere", 3: "sphere", 4: "digits", 5: "sparse", 16: "curvature",
         **{c: "training" for c in range(6, 16)}}
EVALUATORS = {
    1: c01_orthogonality.evaluate, 2: c02_equidistance.evaluate, 3: c03_equator.evaluate,
    4: c04_shortcuts.evaluate, 5: c05_sparse_compute.evaluate, 16: c16_trees.evaluate,
    6: lambda t: c06_expert_subspaces.evaluate(t["runs"]),
    7: lambda t: c07_similarity_dynamics.evaluate(t["runs"]),
    8: lambda t: c08_collapse.evaluate(t["runs"]),
    9: lambda t: c09_uniformity.evaluate(t["runs"]),
    10: lambda t: c10_shared_expert.evaluate(t["runs"]),
    11: lambda t: c11_angle_routing.evaluate(t["runs"], t["angle"]),
    12: lambda t: c12_heads_vs_experts.evaluate(t["subspaces_used"], t["top_k"], t["num_experts"]),
    13: lambda t: c13_domains.evaluate(t["runs"]),
    14: lambda t: c14_heatmaps.evaluate(t["runs"]),
    15: lambda t: c15_quality_compute.evaluate(t["runs"], t["soft"]),
}
ALL_CLAIMS = tuple(sorted(NEEDS))


@dataclass(frozen=True)
class LabConfig:
    """What one ``moescope lab`` run does."""

    profile: str = "quick"
    claims: tuple[int, ...] = ALL_CLAIMS
    seed: int = 0
    workdir: Path = Path("out/lab")  # checkpoints, logs and the tokenizer of the training runs

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got profile={self.profile!r}")
        unknown = sorted(set(self.claims) - set(NEEDS))
        if unknown or not self.claims:
            raise ValueError(f"claims must be among {list(ALL_CLAIMS)}; got {list(self.claims)}")


def _sphere(cfg: LabConfig) -> dict:
    from moescope.lab.sphere_laws import SphereConfig, run_sphere

    samples = 10_000 if cfg.profile == "quick" else 40_000
    return run_sphere(SphereConfig(samples=samples, seed=cfg.seed))


def _digits(cfg: LabConfig) -> dict:
    from moescope.adversarial.experiment import AttackConfig, run_experiment

    if cfg.profile == "quick":
        ac = AttackConfig(dataset="digits", seed=cfg.seed, attack_points=150, boundary_points=20, directions=15,
                          epochs=20, linear_dims=(10, 100, 1000), linear_directions=60)
    else:
        ac = AttackConfig(dataset="digits", seed=cfg.seed)
    return run_experiment(ac)


def _sparse(cfg: LabConfig) -> dict:
    return c05_sparse_compute.measure(repeats=5 if cfg.profile == "quick" else 15, seed=cfg.seed)


def _curvature(cfg: LabConfig) -> dict:
    from moescope.lab.curvature import CurvatureConfig, run_curvature

    if cfg.profile == "quick":  # the tree alone decides claim 16
        return run_curvature(CurvatureConfig(graphs=("tree",), steps=400, restarts=4, seed=cfg.seed))
    return run_curvature(CurvatureConfig(seed=cfg.seed))


def _training(cfg: LabConfig) -> dict:
    """Train the profile's runs (resuming interrupted ones) and measure every trained model."""
    from dataclasses import replace

    from moescope.lab import trained
    from moescope.lab.runs import prepare, profile, run_profile, standard_runs

    p = profile(cfg.profile)
    p = replace(p, train=replace(p.train, seed=cfg.seed))
    workdir = Path(cfg.workdir) / "training"
    results = run_profile(p, workdir, progress=False)
    _, tokens = prepare(p, workdir)
    specs = {s.name: s for s in standard_runs(p)}
    runs = {name: trained.measure_run(specs[name], r, tokens.val, dynamics=(name == "top2"))
            for name, r in results.items()}
    base = trained.load_run(specs["top2"], results["top2"].checkpoints[max(results["top2"].checkpoints)])
    soft = trained.load_run(specs["soft-moe"], results["soft-moe"].checkpoints[max(results["soft-moe"].checkpoints)])
    return {"runs": runs, "angle": trained.angle_agreement(base, tokens.val),
            "subspaces_used": trained.subspaces_used(base, tokens.val),
            "soft": trained.soft_statistics(soft, tokens.val),
            "top_k": base.cfg.moe.top_k, "num_experts": base.cfg.moe.num_experts,
            "provenance": {"tokens": tokens.provenance(), "profile": p.to_dict()}}


EXPERIMENTS: dict[str, Callable[[LabConfig], dict]] = {
    "sphere": _sphere, "digits": _digits, "sparse": _sparse, "curvature": _curvature, "training": _training,
}


def run_lab(cfg: LabConfig = LabConfig(), on_stage: Callable[[str], None] | None = None) -> dict:
    """Run the experiments the selected claims need and evaluate them.

    Args:
        cfg: profile, claims, seed.
        on_stage: called with each experiment's name before it starts (progress display).
    """
    start = time.perf_counter()
    needed = list(dict.fromkeys(NEEDS[c] for c in sorted(cfg.claims)))
    data, timings = {}, {}
    for name in needed:
        if on_stage is not None:
            on_stage(name)
        t0 = time.perf_counter()
        data[name] = EXPERIMENTS[name](cfg)
        timings[name] = time.perf_counter() - t0
    verdicts = [EVALUATORS[c](data[NEEDS[c]]).to_dict() for c in sorted(cfg.claims)]
    return {
        "profile": cfg.profile, "seed": cfg.seed, "claims": sorted(cfg.claims),
        "verdicts": verdicts, "data": data, "timings": timings,
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
