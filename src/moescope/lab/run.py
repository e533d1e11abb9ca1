"""``moescope lab``: every claim of the lecture, tested in one command.

Runs the experiments each selected claim needs (sharing them between claims), evaluates the
claims into :class:`~moescope.lab.verdict.Verdict` s and returns one JSON-ready dict:
the verdicts, the raw measurements the report draws its figures from, provenance and
timings. Profiles: ``quick`` (the README's main command, a few minutes on 2 CPU cores) and
``full`` (longer training, more samples and seeds).

With ``model`` (``moescope lab --model PATH``) the claims that need one trained MoE model
(:data:`MODEL_CLAIMS`: 6, 10–14) are measured on that Hugging Face checkpoint instead of the
lab's tiny model (experiment ``checkpoint``, :mod:`moescope.lab.external`); the claims that
need the lab's own training runs (:data:`TRAINING_ONLY`) are refused; the others run as usual.
"""

from __future__ import annotations

import importlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from moescope.lab.claims import all_claims
from moescope.lab.model import ARCHS, LAB_ARCH
from moescope.lab.runs import TRAIN_DTYPES

PROFILES = ("quick", "full")
CLAIMS = all_claims()                      # claim id -> its module (moescope.lab.claims)
ALL_CLAIMS = tuple(CLAIMS)
# claims measurable on a user's checkpoint, and those that need the lab's own training runs (with why)
MODEL_CLAIMS = tuple(i for i, m in CLAIMS.items() if hasattr(m, "from_checkpoint"))
TRAINING_ONLY = {i: m.NEEDS_TRAINING for i, m in CLAIMS.items() if hasattr(m, "NEEDS_TRAINING")}


@dataclass(frozen=True)
class LabConfig:
    """What one ``moescope lab`` run does.

    ``claims`` None means all claims, or :data:`MODEL_CLAIMS` with a ``model``.
    """

    profile: str = "quick"
    claims: tuple[int, ...] | None = None
    seed: int = 0
    workdir: Path = Path("out/lab")  # checkpoints, logs and the tokenizer of the training runs
    model: Path | None = None        # a Hugging Face MoE checkpoint: claims 6, 10-14 measured on it
    tensorboard: bool = False        # also write the training curves as TensorBoard events
    # --model's parameters (moescope.models.DTYPES; float32 keeps results exact), or without a model how the lab's
    # runs train (TRAIN_DTYPES): float32, or bfloat16 autocast (float32 weights; measured in float32)
    dtype: str = "float32"
    device: str = "cpu"              # where --model runs (moescope.models.DEVICES)
    arch: str = LAB_ARCH             # the body the lab's runs train (moescope.lab.model.ARCHS)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got profile={self.profile!r}")
        if self.claims is None:
            object.__setattr__(self, "claims", ALL_CLAIMS if self.model is None else MODEL_CLAIMS)
        unknown = sorted(set(self.claims) - set(CLAIMS))
        if unknown or not self.claims:
            raise ValueError(f"claims must be among {list(ALL_CLAIMS)}; got {list(self.claims)}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got arch={self.arch!r}")
        if self.tensorboard:
            from moescope.lab.tensorboard import require

            require()
        if self.model is None and self.device != "cpu":
            raise ValueError(f"device={self.device!r} applies to a given model only (--model); the lab's own runs "
                             "train on the CPU")
        if self.model is None and self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: the lab's own runs train in float32 or under bfloat16 autocast "
                             f"(one of {', '.join(TRAIN_DTYPES)}); other dtypes apply to a given model (--model)")
        if self.model is not None:
            from moescope.lab.external import check_checkpoint
            from moescope.models.loading import check_device, check_dtype

            check_dtype(self.dtype)
            check_device(self.device)

            refused = sorted(set(self.claims) & set(TRAINING_ONLY))
            if refused:
                need = "; ".join(f"{c}: {TRAINING_ONLY[c]}" for c in refused)
                raise ValueError(f"claims {refused} need the lab's own training runs ({need}) and cannot be measured "
                                 f"on a given checkpoint; with --model choose among {list(MODEL_CLAIMS)} (and "
                                 f"{sorted(set(ALL_CLAIMS) - set(MODEL_CLAIMS) - set(TRAINING_ONLY))}, which "
                                 f"do not use a model)")
            object.__setattr__(self, "model", check_checkpoint(self.model))

    def needs(self, claim: int) -> tuple[str, ...]:
        """The experiments ``claim`` reads: the checkpoint's measurements instead of training with a model."""
        return ("checkpoint",) if self.model is not None and claim in MODEL_CLAIMS else CLAIMS[claim].NEEDS


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
    from moescope.lab.claims.c05_sparse_compute import measure

    return measure(repeats=5 if cfg.profile == "quick" else 15, seed=cfg.seed)


def _curvature(cfg: LabConfig) -> dict:
    from moescope.lab.curvature import CurvatureConfig, run_curvature

    if cfg.profile == "quick":  # the tree alone decides claim 16
        return run_curvature(CurvatureConfig(graphs=("tree",), steps=400, restarts=4, seed=cfg.seed))
    return run_curvature(CurvatureConfig(seed=cfg.seed))


def _training(cfg: LabConfig) -> dict:
    """Train the profile's runs (resuming interrupted ones) and measure every trained model.

    Every run gets its routing, weight geometry and permutation null; the baseline's seeds also the
    random-router null and the head/expert output shares, and the baseline's and the upcycled run's
    seeds their checkpoints' trajectory (:func:`moescope.lab.trained.measure_run`).
    """

    from moescope.lab import trained
    from moescope.lab.claims._trained import seeds
    from moescope.lab.runs import (
        BASELINE,
        DENSE_TOTAL,
        FINE_GRAINED,
        FINE_NO_SHARED,
        SOFT,
        UPCYCLED,
        lab_profile,
        prepare,
        run_profile,
        standard_runs,
    )

    p = lab_profile(cfg.profile, cfg.seed, cfg.arch, cfg.dtype)
    workdir = Path(cfg.workdir) / "training"
    results = run_profile(p, workdir, progress=False, tensorboard=cfg.tensorboard)
    _, tokens = prepare(p, workdir)
    specs = {s.name: s for s in standard_runs(p)}
    def ids(*names: str) -> set[int]:
        return {id(r) for n in names for r in seeds(results, n)}

    baseline = ids(BASELINE)
    dynamic = baseline | ids(UPCYCLED)                        # claim 7
    experts = ids(FINE_GRAINED, FINE_NO_SHARED, DENSE_TOTAL)  # claim 10's ablation, claim 6's dense control
    runs = {name: trained.measure_run(specs[name], r, tokens.val, dynamics=id(r) in dynamic,
                                      null=id(r) in baseline, experts=id(r) in experts, seed=cfg.seed)
            for name, r in results.items()}
    base = trained.load_run(specs[BASELINE], results[BASELINE].checkpoints[max(results[BASELINE].checkpoints)])
    soft = trained.load_run(specs[SOFT], results[SOFT].checkpoints[max(results[SOFT].checkpoints)])
    return {"runs": runs,
            "output_shares": [r["output_shares"] for r in seeds(runs, BASELINE)],
            "soft": trained.soft_statistics(soft, tokens.val),
            "top_k": base.cfg.moe.top_k, "num_experts": base.cfg.moe.num_experts,
            "provenance": {"tokens": tokens.provenance(), "profile": p.to_dict()}}


def _checkpoint(cfg: LabConfig) -> dict:
    """Measure the user's checkpoint (``cfg.model``) for claims 6, 10-14; the same sizes for every profile."""
    from moescope.lab.external import ExternalConfig, describe, measure_checkpoint

    t = measure_checkpoint(cfg.model, ExternalConfig(seed=cfg.seed, dtype=cfg.dtype, device=cfg.device))
    return {**t, "where": describe(t["model"])}


# Claims 17-21, the lecture's curvature systems: experiment NAME is run_NAME(profile, seed) in moescope.lab.NAME,
# its figures moescope.report.NAME_figures.FIGURES.
CURVED_SYSTEMS = ("product_forests", "curvature_experts", "hyplora", "hyperbolic_vit", "spectral_gnn")


def _curved(name: str) -> Callable[[LabConfig], dict]:
    def run(cfg: LabConfig) -> dict:
        return getattr(importlib.import_module(f"moescope.lab.{name}"), f"run_{name}")(cfg.profile, cfg.seed)

    return run


EXPERIMENTS: dict[str, Callable[[LabConfig], dict]] = {
    "sphere": _sphere, "digits": _digits, "sparse": _sparse, "curvature": _curvature, "training": _training,
    "checkpoint": _checkpoint, **{name: _curved(name) for name in CURVED_SYSTEMS},
}


def run_lab(cfg: LabConfig = LabConfig(), on_stage: Callable[[str], None] | None = None) -> dict:
    """Run the experiments the selected claims need and evaluate them.

    Args:
        cfg: profile, claims, seed, and optionally the checkpoint to measure.
        on_stage: called with each experiment's name before it starts (progress display).

    Returns ``profile``, ``seed``, ``claims``, ``verdicts``, ``data`` (by experiment), ``timings``,
    ``seconds``, ``machine``, and with a model ``provenance["checkpoint"]`` (path, model type,
    layers, experts, token counts).
    """
    start = time.perf_counter()
    needed = list(dict.fromkeys(name for c in sorted(cfg.claims) for name in cfg.needs(c)))
    data, timings = {}, {}
    for name in needed:
        if on_stage is not None:
            on_stage(name)
        t0 = time.perf_counter()
        data[name] = EXPERIMENTS[name](cfg)
        timings[name] = time.perf_counter() - t0
    verdicts = [(CLAIMS[c].from_checkpoint if cfg.needs(c) == ("checkpoint",) else CLAIMS[c].from_lab)(data)
                .to_dict() for c in sorted(cfg.claims)]
    results = {
        "profile": cfg.profile, "seed": cfg.seed, "claims": sorted(cfg.claims),
        "verdicts": verdicts, "data": data, "timings": timings,
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    if "training" in data:   # what the lab's own models were: their body and the dtype they trained in
        results["models"] = {"arch": cfg.arch, "dtype": cfg.dtype,
                             "trained": "float32" if cfg.dtype == "float32" else f"{cfg.dtype} autocast"}
    if "checkpoint" in data:
        ckpt = data["checkpoint"]["provenance"]
        results["provenance"] = {"checkpoint": {**ckpt["checkpoint"], "tokens": ckpt["tokens"],
                                                "tokens_total": ckpt["tokens_total"], "seq_len": ckpt["seq_len"]}}
    return results
