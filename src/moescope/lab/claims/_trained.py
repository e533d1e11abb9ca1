"""Small helpers the training-based claims share."""

from __future__ import annotations

import math

import numpy as np

from moescope.stats import Evidence


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def layers(run: dict) -> list[dict]:
    return run["routing"]["layers"]


def geometry(run: dict) -> list[dict]:
    return run["weights"]


def _seed_of(name: str, prefix: str) -> int | None:
    """0 for the run ``prefix`` itself, k for ``prefix-seed<k>``, None for other runs."""
    if name == prefix:
        return 0
    tail = name[len(prefix) + len("-seed"):] if name.startswith(prefix + "-seed") else ""
    return int(tail) if tail.isdigit() else None


def seeds(runs: dict, prefix: str) -> list[dict]:
    """The run named ``prefix`` and its ``prefix-seedN`` repeats, in seed order."""
    found = sorted((s, name) for name in runs if (s := _seed_of(name, prefix)) is not None)
    return [runs[name] for _, name in found]


def paired(runs: dict, *prefixes: str) -> list[tuple[dict, ...]]:
    """Runs of every prefix trained with the same seed, as tuples, in seed order (unpaired seeds dropped)."""
    by = [{s: name for name in runs if (s := _seed_of(name, p)) is not None} for p in prefixes]
    common = sorted(set.intersection(*(set(b) for b in by)))
    return [tuple(runs[b[s]] for b in by) for s in common]


def effective_experts(layer: dict) -> float:
    """exp(load entropy): how many experts the load is effectively spread over."""
    e = len(layer["load"])
    return math.exp(layer["load_entropy"] * math.log(e))


def null_matrix(router_null: dict, key: str) -> tuple[list[float], list[list[float]]]:
    """Per layer, the trained router's ``key`` and its (layers, draws) values under the random routers."""
    obs = [lay[key] for lay in router_null["observed"]]
    null = np.array([[draw[i][key] for draw in router_null["null"]] for i in range(len(obs))])
    return obs, null.tolist()


def null_shift(router_null: dict, key: str) -> float:
    """Mean over layers of (trained − mean over random routers) of ``key``: one seed's effect."""
    obs, null = null_matrix(router_null, key)
    return float(np.mean([o - np.mean(n) for o, n in zip(obs, null, strict=True)]))


def fmt_interval(a) -> str:
    lo, hi = a.interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval (one replicate)"
    return f"[{lo:.3g}, {hi:.3g}]"


def loss_gain(runs: dict, model: str, dense: str, name: str, margin: float) -> tuple[list[tuple[dict, dict]], Evidence]:
    """Same-seed pairs of ``model`` and ``dense`` runs, and the evidence that ``model``'s validation loss is lower:
    per seed, dense − model (nats), a t-interval over seeds, ``margin`` on the side of the model."""
    pairs = paired(runs, model, dense)
    return pairs, Evidence(name, "t", [d["val_loss"] - m["val_loss"] for m, d in pairs], reference=0.0,
                           margin=margin, side="greater", unit="seed", extra={"unit_of_effect": "nats"})
