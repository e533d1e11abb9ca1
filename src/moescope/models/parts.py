"""Building blocks of family adapters: read a block's experts where it keeps them.

Each function turns one storage layout of a live module into moescope's orientation (rows
index the output): gate (I, H), up (I, H), down (H, I). Every stacked layout is checked
against the shapes it must have, so a transformers version that changes a layout fails loudly
instead of silently transposing an expert. The tensors returned are detached *views* of the
live parameters (no copy): treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from moescope.models.family import Parts
from moescope.models.view import ExpertWeights


def stacked(gate_up: Tensor, down: Tensor, *, transposed: bool = False, interleaved: bool = False,
             where: str = "") -> Callable[[int], ExpertWeights]:
    """Expert e of stacked weights, in moescope orientation.

    ``gate_up`` (E, 2I, H) and ``down`` (E, H, I); with ``transposed`` (E, H, 2I) and (E, I, H).
    ``interleaved``: gate and up alternate along the 2I axis (GPT-OSS) instead of [gate; up].
    """
    gate_up, down = gate_up.detach(), down.detach()
    if gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[0] != down.shape[0]:
        raise ValueError(f"{where}: expected stacked expert weights (E, ., .); got gate_up "
                         f"{tuple(gate_up.shape)} and down {tuple(down.shape)}")
    num_experts = gate_up.shape[0]
    hidden, inter = (down.shape[2], down.shape[1]) if transposed else (down.shape[1], down.shape[2])
    want = (num_experts, hidden, 2 * inter) if transposed else (num_experts, 2 * inter, hidden)
    if tuple(gate_up.shape) != want:
        raise ValueError(f"{where}: gate_up_proj has shape {tuple(gate_up.shape)} but down_proj "
                         f"{tuple(down.shape)} implies {want} (transposed={transposed}); the layout changed?")

    def expert(e: int) -> ExpertWeights:
        check_expert(e, num_experts)
        gu = gate_up[e].t() if transposed else gate_up[e]                     # (2I, H)
        gate, up = (gu[0::2], gu[1::2]) if interleaved else (gu[:inter], gu[inter:])
        return ExpertWeights(gate=gate, up=up, down=down[e].t() if transposed else down[e])  # down (H, I)

    return expert


def check_expert(e: int, num_experts: int) -> None:
    """Refuse an expert index outside [0, E)."""
    if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < num_experts:
        raise ValueError(f"expert index must be an int in [0, {num_experts}); got e={e!r}")


def mlp(module: nn.Module, gate: str | None = "gate_proj", up: str = "up_proj",
        down: str = "down_proj") -> Callable[[], ExpertWeights]:
    """A gated MLP of three Linear layers (Hugging Face naming) as a shared expert."""
    def shared() -> ExpertWeights:
        return ExpertWeights(gate=None if gate is None else getattr(module, gate).weight.detach(),
                             up=getattr(module, up).weight.detach(), down=getattr(module, down).weight.detach())

    return shared


def fused_mlp(module: nn.Module) -> Callable[[], ExpertWeights]:
    """GraniteMoE-shared MLP: ``input_linear`` (2S, H) = [gate; up], ``output_linear`` (H, S)."""
    def shared() -> ExpertWeights:
        w = module.input_linear.weight.detach()
        s = w.shape[0] // 2
        return ExpertWeights(gate=w[:s], up=w[s:], down=module.output_linear.weight.detach())

    return shared


def param(t: Tensor | None) -> Tensor | None:
    """A parameter detached, or None."""
    return None if t is None else t.detach()


def topk_family(family: str, router: nn.Module, experts: nn.Module, name: str, **extra) -> Parts:
    """The parts of a softmax top-k block whose router has ``weight`` (E, H) and ``top_k`` and whose
    experts are transformers' stacked ``gate_up_proj`` (E, 2I, H) / ``down_proj`` (E, H, I)."""
    return dict(family=family, num_experts=router.weight.shape[0], top_k=int(router.top_k), scoring="softmax",
                router_weight=router.weight.detach(),
                expert=stacked(experts.gate_up_proj, experts.down_proj, where=name), **extra)
