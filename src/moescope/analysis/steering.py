r"""Steering by experts, after SteerMoE (Fayyaz et al., ICLR 2026): find the experts that tell two kinds
of text apart, then switch them on or off and measure what changes.

1. **Detection.** Both text sets are cut into windows and routed; for every MoE layer *l* and expert
   *e*, ``p_A`` and ``p_B`` are the shares of each set's tokens whose chosen experts include *e*
   (the experts the block actually used, from the :class:`~moescope.models.RoutingRecorder`).
   The risk difference Δ = p_A − p_B gets a percentile bootstrap interval over windows, each set
   resampled on its own (the documents are the units). The *A-linked* experts are the ``top``
   cells with the largest Δ whose interval lies above zero.
2. **Steering.** The router's log-softmax scores are rewritten (:mod:`~moescope.analysis.router_rewrite`):
   *activate* sets each A-linked expert's score to the row maximum + ε, so the block picks it for
   every token (as long as a layer has at most k of them); *deactivate* sets it to the row minimum −
   ε, so it is never picked. Rewriting a logit by the same rule rewrites the log-softmax score (they
   differ by one constant per token), and the family's own top-k and renormalisation then run.
   Only softmax routers have log-softmax scores: sigmoid-scored families are refused by name.
3. **Effect, against a control.** Each set's next-token loss with and without the steering, paired
   per window, with a bootstrap interval; the same steering of as many *random* experts per layer
   (``random_draws`` draws) is the control, and the report gives where the steered change falls
   among the random ones (a two-sided Monte-Carlo p-value: twice the smaller tail, at most 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from moescope.analysis.ablation import window_losses
from moescope.analysis.router_rewrite import RouterRewriteError, rewriting_logits
from moescope.models import RoutingRecorder
from moescope.models.view import MoELayerView
from moescope.stats import DEFAULT_LEVEL, bootstrap_interval, permutation_pvalue

DIRECTIONS = ("activate", "deactivate")
EPSILON = 1e-2


class SteeringError(RouterRewriteError):
    """A model or request that cannot be steered (named in the message)."""


def check_steerable(views: list[MoELayerView]) -> None:
    """Refuse layers whose router has no log-softmax scores to rewrite."""
    bad = sorted({f"{v.family} ({v.scoring})" for v in views if v.scoring != "softmax"})
    if bad:
        raise SteeringError(f"steering rewrites log-softmax router scores; these families score otherwise: "
                            f"{', '.join(bad)}")


def activation_rates(model: nn.Module, views: list[MoELayerView], ids: Tensor, batch_size: int = 8) -> np.ndarray:
    """(W, L, E) share of each window's tokens whose chosen experts include e, per MoE layer of ``views``."""
    position = {v.index: i for i, v in enumerate(views)}
    E = max(v.num_experts for v in views)
    out = np.zeros((ids.shape[0], len(views), E))
    row = 0
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        for chunk in ids.split(batch_size):
            rec.set_batch(chunk, torch.ones_like(chunk))
            window_losses(model, chunk)
            B, T = chunk.shape
            for r in rec.pop():
                e = r.scores.shape[-1]
                out[row: row + B, position[r.layer], :e] = r.chosen().view(B, T, e).float().mean(dim=1).numpy()
            row += B
    return out


def risk_difference(rates_a: np.ndarray, rates_b: np.ndarray, *, level: float = DEFAULT_LEVEL, draws: int = 1000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Δ = mean_a − mean_b (L, E) and its percentile bootstrap interval (L, E, 2), windows resampled per set."""
    rng = np.random.default_rng(seed)
    delta = rates_a.mean(axis=0) - rates_b.mean(axis=0)
    if min(rates_a.shape[0], rates_b.shape[0]) < 10:
        return delta, np.stack([np.full_like(delta, -math.inf), np.full_like(delta, math.inf)], axis=-1)
    boot = np.empty((draws, *delta.shape), dtype=np.float32)
    for i in range(draws):
        a = rates_a[rng.integers(0, rates_a.shape[0], rates_a.shape[0])].mean(axis=0)
        b = rates_b[rng.integers(0, rates_b.shape[0], rates_b.shape[0])].mean(axis=0)
        boot[i] = a - b
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return delta, np.stack([lo, hi], axis=-1)


@contextmanager
def steering(views: list[MoELayerView], cells: list[tuple[int, int]], direction: str,
             epsilon: float = EPSILON) -> Iterator[None]:
    """Within the model: every (view position, expert) of ``cells`` activated or deactivated."""
    if direction not in DIRECTIONS:
        raise SteeringError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    check_steerable([views[li] for li, _ in cells])
    by_layer: dict[int, list[int]] = {}
    for li, e in cells:
        if not 0 <= e < views[li].num_experts:
            raise SteeringError(f"{views[li].name}: expert {e} does not exist (0..{views[li].num_experts - 1})")
        by_layer.setdefault(li, []).append(e)

    def rewrite(experts: list[int]) -> Callable[[Tensor], Tensor]:
        def fn(logits: Tensor) -> Tensor:
            if direction == "activate":
                logits[..., experts] = logits.amax(dim=-1, keepdim=True) + epsilon
            else:
                logits[..., experts] = logits.amin(dim=-1, keepdim=True) - epsilon
            return logits
        return fn

    with ExitStack() as stack:
        for li, experts in by_layer.items():
            stack.enter_context(rewriting_logits(views[li], rewrite(experts), purpose="steering",
                                                 error=SteeringError))
        yield


@dataclass(frozen=True)
class SteerConfig:
    """What :func:`steer` measures."""

    top: int = 8                 # A-linked experts steered (largest Δ with an interval above zero)
    random_draws: int = 39       # control: as many random experts per layer, this many times (p >= 2/40)
    batch_size: int = 8
    epsilon: float = EPSILON
    level: float = DEFAULT_LEVEL
    draws: int = 1000            # bootstrap draws
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top", "random_draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0; got {self.epsilon}")
        if self.draws < 100:
            raise ValueError(f"draws must be >= 100; got {self.draws}")


def _losses(model: nn.Module, ids: Tensor, batch_size: int) -> np.ndarray:
    return torch.cat([window_losses(model, c) for c in ids.split(batch_size)]).numpy()


def steer(model: nn.Module, views: list[MoELayerView], sets: dict[str, Tensor], cfg: SteerConfig = SteerConfig(),
          *, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Detect the experts linked to the first of two text sets and steer them (see the module docstring).

    Args:
        sets: exactly two names -> (W, T) token windows; the first is A, the second B.
    Returns:
        a JSON-ready dict: ``rates`` (p_A, p_B per layer × expert), ``delta`` and ``interval``, ``linked``
        (the steered cells), and per direction and set the loss change with its interval, the random
        control's changes and the Monte-Carlo p-value.
    """
    if len(sets) != 2:
        raise SteeringError(f"steering contrasts exactly two text sets; got {len(sets)}: {', '.join(sets)}")
    check_steerable(views)
    (name_a, ids_a), (name_b, ids_b) = sets.items()
    rates_a = activation_rates(model, views, ids_a, cfg.batch_size)
    rates_b = activation_rates(model, views, ids_b, cfg.batch_size)
    delta, interval = risk_difference(rates_a, rates_b, level=cfg.level, draws=cfg.draws, seed=cfg.seed)
    valid = np.array([[e < v.num_experts for e in range(delta.shape[1])] for v in views])
    score = np.where(valid & (interval[..., 0] > 0), delta, -np.inf)
    order = np.argsort(-score, axis=None, kind="stable")
    linked = [tuple(int(i) for i in np.unravel_index(f, score.shape)) for f in order[: cfg.top]
              if np.isfinite(score.flat[f])]
    out = {"sets": [name_a, name_b], "layers": [v.index for v in views],
           "rates": {name_a: rates_a.mean(axis=0).tolist(), name_b: rates_b.mean(axis=0).tolist()},
           "delta": delta.tolist(), "interval": interval.tolist(),
           "linked": [{"layer": views[li].index, "expert": e, "delta": float(delta[li, e]),
                       "interval": interval[li, e].tolist(), "p_a": float(rates_a[:, li, e].mean()),
                       "p_b": float(rates_b[:, li, e].mean())} for li, e in linked],
           "steering": {}}
    if not linked:
        return out
    rng = np.random.default_rng(cfg.seed)
    per_layer: dict[int, int] = {}
    for li, _ in linked:
        per_layer[li] = per_layer.get(li, 0) + 1
    controls = [[(li, int(e)) for li, n in per_layer.items()
                 for e in rng.choice(views[li].num_experts, size=n, replace=False)] for _ in range(cfg.random_draws)]
    base = {name: _losses(model, ids, cfg.batch_size) for name, ids in sets.items()}
    total, done = len(DIRECTIONS) * (1 + cfg.random_draws), 0
    for direction in DIRECTIONS:
        result = {}
        changes: dict[str, list[float]] = {name: [] for name in sets}
        with steering(views, linked, direction, cfg.epsilon):
            steered = {name: _losses(model, ids, cfg.batch_size) - base[name] for name, ids in sets.items()}
        done += 1
        if on_step is not None:
            on_step(done, total)
        for cells in controls:
            with steering(views, cells, direction, cfg.epsilon):
                for name, ids in sets.items():
                    changes[name].append(float((_losses(model, ids, cfg.batch_size) - base[name]).mean()))
            done += 1
            if on_step is not None:
                on_step(done, total)
        for name in sets:
            mean = float(steered[name].mean())
            two_sided = min(1.0, 2 * min(permutation_pvalue(mean, changes[name], "less"),
                                         permutation_pvalue(mean, changes[name], "greater")))
            result[name] = {"delta_loss": mean,
                            "interval": list(bootstrap_interval(steered[name], cfg.level, draws=max(cfg.draws, 100),
                                                                seed=cfg.seed)),
                            "per_window": steered[name].tolist(), "random": changes[name],
                            "random_mean": float(np.mean(changes[name])),
                            "p_value": two_sided}
        out["steering"][direction] = result
    out["base_loss"] = {name: float(v.mean()) for name, v in base.items()}
    return out
