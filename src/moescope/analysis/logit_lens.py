"""Expert logit lens: the tokens an expert's output directions and a router row point at.

An expert writes into the residual stream through its down projection W_down (H, I): every output
it can produce lies in the span of W_down's columns, led by its top left singular vector u. Read
through the model's last step — the final norm's gain g (elementwise; the norm's division by the
RMS only rescales a direction) and the unembedding W_U (V, H) — the direction u promotes the
tokens with the largest ``W_U (g ⊙ u)`` and −u those with the smallest (a singular vector's sign is
arbitrary, so both poles are shown). Router row r_e, the direction whose alignment with the hidden
state selects expert e, is read the same way (its + pole only: the sign is meaningful there).

This is the weight-only half of the lens (nostalgebraist 2020; Geva et al. 2022 read FFN value
vectors the same way); what an expert writes on real tokens needs its activations: its mean output is
read by :func:`read_outputs`, fed by :mod:`moescope.analysis.expert_activity`.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import Tensor, nn

from moescope.models.view import MoELayerView

TOP_TOKENS = 8


def final_norm_gain(model: nn.Module) -> Tensor | None:
    """(H,) the gain of the norm applied before the unembedding, or None if the model has none we know.

    Zero-centred norms (Gemma, Qwen3-Next: ``x · (1 + weight)``) are recognised from their forward's
    source, the one place that says which convention a class uses.
    """
    base = getattr(model, "base_model", model)
    for name in ("norm", "final_layernorm", "ln_f", "final_norm"):
        norm = getattr(base, name, None)
        norm = norm if norm is not None else getattr(model, name, None)
        weight = getattr(norm, "weight", None)
        if isinstance(weight, Tensor) and weight.dim() == 1:
            try:
                source = inspect.getsource(type(norm).forward)
            except (OSError, TypeError):
                source = ""
            centred = re.search(r"1(\.0)?\s*\+\s*self\.weight", source) is not None
            return weight.detach().float() + (1.0 if centred else 0.0)
    return None


def unembedding(model: nn.Module) -> Tensor:
    """(V, H) the output embedding matrix (tied or not)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None and hasattr(model, "wte"):  # moescope's TinyLM: the tied token embedding
        weight = model.wte.weight
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"{type(model).__name__} has no output embedding matrix to read directions through")
    return weight.detach().float()


def _read(direction: Tensor, w_u: Tensor, gain: Tensor | None, top: int) -> tuple[list[int], list[int]]:
    v = direction.float() * (gain if gain is not None else 1.0)
    logits = w_u @ v                                                     # (V,)
    return logits.topk(top).indices.tolist(), (-logits).topk(top).indices.tolist()


def expert_lens(model: nn.Module, views: list[MoELayerView], *, top: int = TOP_TOKENS) -> list[dict]:
    """Per MoE layer and expert: token ids promoted by ±u (the down projection's top direction) and by the
    router row, plus the share of W_down's energy along u. Token ids, to be decoded by the caller."""
    w_u, gain = unembedding(model), final_norm_gain(model)
    out = []
    for view in views:
        experts = []
        for e in range(view.num_experts):
            down = view.expert(e).down.float()                            # (H, I)
            total = float((down ** 2).sum())
            if total == 0:   # an expert that writes nothing points at no token
                experts.append({"expert": e, "down_plus": [], "down_minus": [], "router": [],
                                "top_direction_energy": 0.0})
                continue
            torch.manual_seed(0)  # svd_lowrank's random start: the same directions every run
            u, s, _ = torch.svd_lowrank(down, q=min(6, *down.shape), niter=6)
            plus, minus = _read(u[:, 0], w_u, gain, top)
            router_plus, _ = _read(view.router_weight[e], w_u, gain, top)
            energy = float(s[0] ** 2) / total
            experts.append({"expert": e, "down_plus": plus, "down_minus": minus, "router": router_plus,
                            "top_direction_energy": energy})
        out.append({"layer": view.index, "experts": experts})
    return out


def decode_lens(lens: list[dict], decode) -> list[dict]:
    """``lens`` with every token id list replaced by ``decode(id)`` strings (same structure)."""
    keys = ("down_plus", "down_minus", "router")
    return [{"layer": layer["layer"],
             "experts": [{**e, **{k: [decode(t) for t in e[k]] for k in keys}} for e in layer["experts"]]}
            for layer in lens]


def read_outputs(outputs: Tensor, w_u: Tensor, gain: Tensor | None, *, top: int = TOP_TOKENS
                 ) -> list[tuple[list[int], list[int]]]:
    """Per row of ``outputs`` (N, H) — e.g. experts' mean outputs on real tokens — the token ids it promotes and
    those it suppresses, read through the final norm's gain and the unembedding ``w_u`` (V, H) as
    :func:`expert_lens` reads a down projection's direction. A mean output's sign is meaningful (unlike a
    singular vector's), so + promotes and − suppresses. A zero row promotes nothing: ``([], [])``."""
    top = min(top, w_u.shape[0])
    out = []
    for row in outputs.to(w_u.device, torch.float32):
        out.append(([], []) if not bool(row.any()) else _read(row, w_u, gain, top))
    return out
