"""Small helpers the training-based claims share."""

from __future__ import annotations

import math


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def layers(run: dict) -> list[dict]:
    return run["routing"]["layers"]


def geometry(run: dict) -> list[dict]:
    return run["weights"]


def seeds(runs: dict, prefix: str) -> list[dict]:
    """The run named ``prefix`` and its ``prefix-seedN`` repeats."""
    return [r for name, r in runs.items() if name == prefix or name.startswith(prefix + "-seed")]


def effective_experts(layer: dict) -> float:
    """exp(load entropy): how many experts the load is effectively spread over."""
    e = len(layer["load"])
    return math.exp(layer["load_entropy"] * math.log(e))
