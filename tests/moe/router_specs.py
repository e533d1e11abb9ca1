"""Build any catalogued router small, from a spec: what the shared router tests run over.

Every router in :data:`moescope.moe.routers.ROUTERS` builds itself from a block spec
(``from_spec``), so one spec builds them all and a new router needs nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

H, E = 12, 6


@dataclass(frozen=True)
class Spec:
    """A :class:`moescope.moe.routers.BlockSpec` (the fields of the lab's MoESpec a router reads)."""

    num_experts: int = E
    top_k: int = 2
    normalize_topk: bool = True
    balance: str = "switch"
    capacity_factor: float | None = None  # each router's own default
    n_group: int = 1
    topk_group: int = 1
    bias_update_rate: float = 1e-3
    temperature: float = 0.07


def make_router(kind: type[nn.Module], hidden: int = H, **spec) -> nn.Module:
    """``kind`` built from :class:`Spec` with ``spec`` overrides."""
    return kind.from_spec(hidden, replace(Spec(), **spec))


def router_id(kind: type) -> str:
    return kind.__name__
