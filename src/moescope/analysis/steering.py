r"""Steering by experts, after SteerMoE (Fayyaz et al., ICLR 2026): find the experts that tell two kinds
of text apart, then switch them on or off and measure what changes.

1. **Detection.** Both text sets are cut into windows and routed; for every MoE layer *l* and expert
   *e*, ``p_A`` and ``p_B`` are the shares of each set's tokens whose chosen experts include *e*
   (the experts the block actually used, from the :class:`~moescope.models.RoutingRecorder`).
   The risk difference Δ = p_A − p_B gets a percentile bootstrap interval over windows, each set
   resampled on its own (the documents are the units). The *A-linked* experts are the ``top``
   cells with the largest Δ whose interval lies above zero.
2. **Steering.** The router's logits are rewritten (:mod:`~moescope.analysis.router_rewrite`) so
   that a steered expert's *selection score* — the quantity the family's top-k reads — lies ε above
   the token's largest selection score (*activate*) or ε below its smallest (*deactivate*); the
   target is computed on the unsteered row, so several experts steered in one layer share it. The
   family's own scoring, selection, renormalisation and scaling then run on the rewritten logits.

   * **Softmax routers** (SteerMoE's rule): the selection score is the log-softmax score, which
     differs from the logit by one constant per token, so z_e ← max_j z_j + ε (activate) or
     min_j z_j − ε (deactivate). The expert is then always chosen (as long as a layer has at most k
     of them) or never; an activated expert's weight is the softmax of the rewritten row.
   * **Sigmoid routers** (DeepSeek-V3 and the families that select like it): the selection score is
     s_j = σ(z_j) + b_j, with b the selection (correction) bias, 0 where the router has none. With
     S = max_j s_j + ε (activate) or min_j s_j − ε (deactivate), the logit becomes
     z_e ← logit(clip(S − b_e, δ, 1 − δ)), δ = 10⁻⁶, so σ(z_e) + b_e = S whenever the sigmoid can
     reach it. The combine weight is the family's own: σ(z_e) = clip(S − b_e, δ, 1 − δ) among the
     chosen, renormalised over the k chosen and scaled where the family does so. The logit alone
     cannot *guarantee* the choice: σ is bounded, so S − b_e may lie outside (0, 1) when the biases
     differ by more than 1 − ε, and group-limited routing (n_group > 1) keeps the ``topk_group``
     groups with the largest sum of their *top-2* selection scores — a lone expert at S can lose to
     a group holding two experts near the maximum. So, where the router has a selection bias (every
     group-limited family has one), the steered expert's bias is also read as +∞ (activate) or −∞
     (deactivate) in the forward — the device of re-route ablation: an edited copy the forward
     reads, never written into the model, so that layer-streamed and offloaded models are steered
     alike (the rule reads the unsteered bias of that same forward). The bias
     enters only the group scores and the top-k, never the weights (they are gathered from σ(z)), so
     an activated expert's group is kept and the expert chosen for every token (for at most k
     experts per layer, in at most ``topk_group`` groups), a deactivated one never, and the weight is
     still the one above. Without a selection bias (and then without groups) top-k on σ(z) is top-k
     on z, and the rewritten logit exceeds every other while the row's largest logit is below
     logit(1 − δ) ≈ 13.8; above it (σ rounds to 1 in float32 near 16.6) ties can occur.
   * **Sigmoid weights, selection on the logits** (:data:`SELECTS_ON_LOGITS`: Llama 4 and Cohere2-MoE
     in sigmoid mode take the top-k of z, Kolibri-1 of z + b): the selection score is z + b, unbounded,
     so the softmax rule applied to it — z_e ← max_j (z_j + b_j) + ε − b_e, or the minimum − ε − b_e — guarantees the
     choice; the weight is the family's σ(z_e) (renormalised where it does so).

   Refused, with the reason (:func:`check_steerable`): the families of :data:`REFUSED`, Soft MoE
   (no top-k to steer) and any other scoring.
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
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from moescope.analysis.router_rewrite import RouterRewriteError, rewriting_logits
from moescope.analysis.window_loss import window_losses
from moescope.models import RoutingRecorder
from moescope.models.families import FAMILIES
from moescope.models.view import MoELayerView
from moescope.stats import DEFAULT_LEVEL, bootstrap_interval, permutation_pvalue

DIRECTIONS = ("activate", "deactivate")
EPSILON = 1e-2


class SteeringError(RouterRewriteError):
    """A model or request that cannot be steered (named in the message)."""


#: Families whose router cannot be steered by a logit rewrite, and why.
REFUSED = {
    "deepseek_v4": "its first layers are hash-routed (the experts come from the token id, not the logits) and the "
                   "others score with √softplus",
    "laguna": "its router soft-caps the logits (c·tanh(z/c)) after the linear map, so a rewritten logit does not "
              "reach the sigmoid as set",
}
#: Sigmoid-weighted families whose top-k reads the logits plus any selection bias, not the sigmoid: the
#: family records with ``selection_logits``.
SELECTS_ON_LOGITS = frozenset(f.name for f in FAMILIES if f.selection_logits is not None)
#: The sigmoid rule's clip: σ(z) is kept within [δ, 1 − δ], so the rewritten logit is finite (|z| ≤ 13.8).
DELTA = 1e-6


def refusal(view: MoELayerView) -> str | None:
    """Why ``view``'s router cannot be steered, or None when it can."""
    if view.family in REFUSED:
        return REFUSED[view.family]
    if view.scoring == "soft":
        return "Soft MoE mixes every expert into every slot: there is no top-k to steer"
    if view.scoring not in ("softmax", "sigmoid"):
        return f"its {view.scoring} scores have no steering rule (softmax and sigmoid do)"
    if view.scoring == "sigmoid" and view.n_group > 1 and view.selection_bias is None:
        return "its group-limited routing has no selection bias to pin an activated expert's group with"
    return None


def check_steerable(views: list[MoELayerView]) -> None:
    """Refuse layers whose router has no steering rule, naming each family and the reason."""
    bad = {f"{v.family} ({v.scoring}): {why}" for v in views if (why := refusal(v)) is not None}
    if bad:
        raise SteeringError(f"these routers cannot be steered by rewriting their logits: {'; '.join(sorted(bad))}")


def logit_rule(logits: Tensor, experts: list[int], direction: str, epsilon: float,
               bias: Tensor | None = None) -> Tensor:
    r"""Selection on z + b: z_e ← max_j (z_j + b_j) + ε − b_e (activate) or min_j (z_j + b_j) − ε − b_e.

    With b = 0 this is SteerMoE's rule on log-softmax scores (Fayyaz et al., ICLR 2026, §3): the
    log-softmax of a row differs from its logits by one constant. ``logits`` (…, E) is changed in
    place and returned; ``bias`` (E,) or None.
    """
    score = logits if bias is None else logits + bias
    target = score.amax(dim=-1, keepdim=True) + epsilon if direction == "activate" else \
        score.amin(dim=-1, keepdim=True) - epsilon
    logits[..., experts] = target if bias is None else target - bias[experts]
    return logits


def sigmoid_rule(logits: Tensor, experts: list[int], direction: str, epsilon: float,
                 bias: Tensor | None = None) -> Tensor:
    r"""Selection on s = σ(z) + b: z_e ← logit(clip(S − b_e, δ, 1 − δ)), S = max_j s_j + ε or min_j s_j − ε.

    So σ(z_e) + b_e = S wherever S − b_e ∈ [δ, 1 − δ] (see the module docstring for why the bias is
    pinned as well). Computed in float32 and cast back to the logits' dtype; ``logits`` (…, E) is
    changed in place and returned; ``bias`` (E,), the *unsteered* selection bias, or None.
    """
    z = logits.float()
    b = torch.zeros(z.shape[-1], device=z.device) if bias is None else bias.float()
    s = z.sigmoid() + b
    target = s.amax(dim=-1, keepdim=True) + epsilon if direction == "activate" else \
        s.amin(dim=-1, keepdim=True) - epsilon
    logits[..., experts] = torch.logit((target - b[experts]).clamp(DELTA, 1 - DELTA)).to(logits.dtype)
    return logits


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


def _pin(bias: Tensor, experts: list[int], value: float) -> None:
    bias[experts] = value


def _keep(bias: Tensor) -> None:
    """Leave the selection bias as it is (it is still read in the forward, for the rule)."""


class _LiveRule:
    """``rule`` applied with the unsteered selection bias of the running forward, read from ``reading`` (the
    :class:`~moescope.analysis.router_rewrite.Reading` of the rewrite this rule is installed in)."""

    def __init__(self, rule: Callable[..., Tensor], view: MoELayerView, experts: list[int], direction: str,
                 epsilon: float) -> None:
        self.rule, self.view, self.experts, self.direction, self.epsilon = rule, view, experts, direction, epsilon
        self.reading = None

    def __call__(self, logits: Tensor) -> Tensor:
        bias, view = None, self.view
        if view.selection_bias is not None:
            bias = self.reading.bias
            if bias is None:
                raise SteeringError(f"{view.name}: the {view.family} selection bias was not in place when the router's "
                                    "logits were computed (offloaded to a module whose forward runs later?); the "
                                    "steering rule needs it: load the model in memory")
            bias = bias.to(logits.device)
        return self.rule(logits, experts=self.experts, direction=self.direction, epsilon=self.epsilon, bias=bias)


@contextmanager
def steering(views: list[MoELayerView], cells: list[tuple[int, int]], direction: str,
             epsilon: float = EPSILON) -> Iterator[None]:
    """Within the model: every (view position, expert) of ``cells`` activated or deactivated.

    The selection bias is read from, and pinned in, the tensor the forward reads
    (:func:`~moescope.analysis.router_rewrite.rewriting_logits`), so a layer-streamed or offloaded model is
    steered as the same model in memory; nothing in the model is written.
    """
    if direction not in DIRECTIONS:
        raise SteeringError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    check_steerable([views[li] for li, _ in cells])
    by_layer: dict[int, list[int]] = {}
    for li, e in cells:
        if not 0 <= e < views[li].num_experts:
            raise SteeringError(f"{views[li].name}: expert {e} does not exist (0..{views[li].num_experts - 1})")
        by_layer.setdefault(li, []).append(e)

    with ExitStack() as stack:
        for li, experts in by_layer.items():
            view = views[li]
            if view.scoring == "softmax":   # SteerMoE's rule on the logits as they are: no bias read, none pinned
                rewrite, pin = partial(logit_rule, experts=experts, direction=direction, epsilon=epsilon), None
            else:
                sigmoid = view.family not in SELECTS_ON_LOGITS   # a sigmoid layer here: ranks_logits is the same
                rewrite = _LiveRule(sigmoid_rule if sigmoid else logit_rule, view, experts, direction, epsilon)
                if view.selection_bias is None:
                    pin = None
                elif sigmoid:   # the bias reaches selection only: pinning it keeps the choice (and the group)
                    pin = partial(_pin, experts=experts, value=math.inf if direction == "activate" else -math.inf)
                else:           # selection on z + b: the rule alone decides, but it reads the bias
                    pin = _keep
            reading = stack.enter_context(rewriting_logits(view, rewrite, purpose="steering", error=SteeringError,
                                                           selection_bias=pin))
            if isinstance(rewrite, _LiveRule):
                rewrite.reading = reading
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
