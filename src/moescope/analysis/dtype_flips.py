"""Routing flips between a float32 and a bfloat16 run of the same router: are they all near-ties?

A bfloat16 run rounds the router's input, weight and logits to 8 significant bits, so a token
whose k-th and (k+1)-th selection scores lie closer than that rounding may swap them: its expert
*set* differs from the float32 run's. :func:`dtype_flips` counts those tokens and checks each
against the project's one near-tie definition (:data:`moescope.analysis.routing.NEAR_TIE`, read
through :func:`moescope.analysis.routing.relative_margins`): the float32 margin

    (s_k − s_{k+1}) / |s_k| < 2⁻⁸

between the k-th and (k+1)-th selection score (the scores plus any selection bias). Flips that
are no near-tie do happen: bfloat16 keeps 8 significant bits, so rounding the scores themselves
moves each by up to 2⁻⁸ relative, and two moving apart can swap a margin up to 2⁻⁷; rounding the
*logits* (transformers' Mixtral: bfloat16 logits, float32 softmax) moves a margin by up to
2⁻⁸(|l_k| + |l_{k+1}|), which outgrows 2⁻⁸ once the logits exceed ~0.5 in magnitude. The share of
such flips is what this module reports; whether it is zero depends on the model.

``moescope analyze`` runs in the checkpoint's dtype (bfloat16 for most real checkpoints) and, when that is not
float32, re-runs its first windows in float32 (:func:`moescope.analysis.analyze._float32_flips`, the flip check);
:func:`float32_placement` decides where that float32 model lives (or why the check is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from moescope.analysis.routing import NEAR_TIE, relative_margins
from moescope.models.placement import Placement, proc_field


@dataclass(frozen=True)
class DtypeFlips:
    """What :func:`dtype_flips` found over ``tokens`` tokens."""

    tokens: int
    flips: int                  # tokens whose expert set differs between the two runs
    near_ties: int              # tokens whose float32 margin is below NEAR_TIE
    flips_not_near_ties: int    # flips whose float32 margin is not a near-tie

    @property
    def flip_share(self) -> float:
        return self.flips / self.tokens if self.tokens else 0.0

    @property
    def near_tie_share(self) -> float:
        return self.near_ties / self.tokens if self.tokens else 0.0

    @property
    def all_flips_near_ties(self) -> bool:
        return self.flips_not_near_ties == 0

    def __add__(self, other: DtypeFlips) -> DtypeFlips:
        """Counts over both sets of tokens (sums: batches merge in any order)."""
        return DtypeFlips(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict:
        """JSON-ready: the counts, and their shares of the tokens (``flips_not_near_ties_share`` is the share of
        all tokens that flipped although their float32 margin was no near-tie)."""
        share = (lambda n: n / self.tokens) if self.tokens else (lambda n: 0.0)
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "flip_share": share(self.flips),
                "near_tie_share": share(self.near_ties),
                "flips_not_near_ties_share": share(self.flips_not_near_ties),
                "all_flips_near_ties": self.all_flips_near_ties}


def _expert_sets(scores: Tensor, top_k: int, selection_bias: Tensor | None) -> Tensor:
    """(N, k) indices of the k highest selection scores, sorted ascending (a set, order-free)."""
    selection = scores + selection_bias.to(scores) if selection_bias is not None else scores
    return selection.topk(top_k, dim=-1).indices.sort(dim=-1).values


def dtype_flips(scores_fp32: Tensor, scores_bf16: Tensor, top_k: int,
                selection_bias: Tensor | None = None) -> DtypeFlips:
    """Tokens whose top-k expert set differs between a float32 and a bfloat16 run, and whether each is a near-tie.

    Args:
        scores_fp32: (..., E) what the router's top-k ranks, before any selection bias
            (:meth:`~moescope.models.view.RoutingRecord.ranked`: probabilities, sigmoid scores, or the logits
            where the family ranks those), in the float32 run; the near-tie margins are taken from these.
        scores_bf16: (..., E) the same tokens' scores in the bfloat16 run (bfloat16, or float32 where the
            family computes the softmax in float32 from bfloat16 logits, as transformers' Mixtral does).
        top_k: k experts per token, 1 ≤ k ≤ E.
        selection_bias: (E,) added to the scores to select (DeepSeek-V3's ``e_score_correction_bias``), in
            each run's dtype, as :func:`relative_margins` adds it.

    Returns:
        :class:`DtypeFlips`: counts of flips, near-ties and flips that are no near-tie, and their shares.
        With k = E there is no (k+1)-th score: no flips and no near-ties.
    """
    if scores_fp32.shape != scores_bf16.shape or scores_fp32.ndim < 1:
        raise ValueError(f"scores_fp32 and scores_bf16 must have the same shape (..., E); got "
                         f"{tuple(scores_fp32.shape)} and {tuple(scores_bf16.shape)}")
    num_experts = scores_fp32.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts} (the number of experts); got top_k={top_k}")
    if selection_bias is not None and selection_bias.shape != (num_experts,):
        raise ValueError(f"selection_bias must have shape ({num_experts},); got {tuple(selection_bias.shape)}")
    fp32 = scores_fp32.detach().reshape(-1, num_experts).float()              # (N, E)
    bf16 = scores_bf16.detach().reshape(-1, num_experts)                      # (N, E), the run's own dtype
    flipped = (_expert_sets(fp32, top_k, selection_bias) != _expert_sets(bf16, top_k, selection_bias)).any(-1)
    near = relative_margins(fp32, top_k, selection_bias) < NEAR_TIE           # NaN (k = E) compares False
    return DtypeFlips(tokens=fp32.shape[0], flips=int(flipped.sum()), near_ties=int(near.sum()),
                      flips_not_near_ties=int((flipped & ~near).sum()))


def _available_memory() -> int | None:
    """``MemAvailable`` in bytes (Linux), else None."""
    return proc_field("/proc/meminfo", "MemAvailable")


def float32_bytes(path: str | Path, model: torch.nn.Module, *, tokens: int) -> int:
    """Bytes the checkpoint in ``path`` needs as a whole float32 model (weights and the activations of one forward
    of ``tokens`` tokens): the streaming planner's estimate, or for a family it cannot plan, 4 bytes per floating
    element of ``model``'s parameters and buffers, plus 10%."""
    from moescope.models.streaming import memory_plan

    try:
        return memory_plan(path, dtype=torch.float32, tokens=tokens).in_memory
    except (ValueError, NotImplementedError, KeyError):
        elements = sum(t.numel() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
        return int(4 * elements * 1.1)


def float32_placement(placement: Placement, *, need: int) -> tuple[Placement | None, str]:
    """Where the float32 reference run of a flip check holds its model: ``(placement, how)``, or ``(None, why
    not)`` when it is skipped.

    The reference uses the analysis's own placement in float32: streamed where the analysis streamed, under the
    same ``max_memory`` budget (which streams the float32 model if it no longer fits, or refuses it). Without a
    budget, the whole float32 model (``need`` bytes: its weights and activations) is loaded only if it fits the
    memory available now (``MemAvailable`` on the CPU, the free memory of a GPU); on the CPU it is otherwise
    streamed layer by layer within that memory, on a GPU skipped. A model spread by accelerate (``device_map``)
    is skipped: its float32 copy would need a placement of its own.
    """
    from moescope.models.sizes import format_size

    if placement.device_map is not None:
        return None, ("the model is spread by accelerate (--device-map); its float32 copy would need a placement "
                      "of its own, so the flip check is skipped")
    f32 = replace(placement, dtype="float32")
    if placement.stream_layers:
        return f32, "streamed layer by layer in float32, as the analysis was"
    if placement.max_memory is not None:
        return f32, f"in float32 within the same --max-memory {placement.max_memory} (streamed if it does not fit)"
    device = torch.device(placement.device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need > free:
            return None, (f"the float32 model needs about {format_size(need)} and {device} has {format_size(free)} "
                          "free, so the flip check is skipped")
        return f32, f"the whole model in float32 on {device}"
    available = _available_memory()
    if available is None or need <= available:
        return f32, "the whole model in float32, in memory"
    return (replace(f32, stream_layers=True, max_memory=available),
            f"streamed layer by layer in float32: the whole float32 model (about {format_size(need)}) does not fit "
            f"the {format_size(available)} of memory available")


__all__ = ["DtypeFlips", "dtype_flips", "float32_bytes", "float32_placement"]
