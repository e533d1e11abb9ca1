"""Expert parallelism on torch.distributed: experts sharded over ranks, tokens all-to-all.

Each of W ranks holds E/W consecutive experts (rank r owns experts [r·E/W, (r+1)·E/W)) and
a replica of the router and of any shared expert. A forward pass:

1. routes the local tokens (replicated router, so every rank chooses exactly as a single
   process would on the same tokens);
2. sorts the (token, expert) pairs by owning rank and exchanges the counts, then the token
   rows and their local expert ids, with ``all_to_all_single`` (variable split sizes);
3. runs the owned experts on what it received (moescope's grouped dispatch);
4. sends the outputs back the same way and combines them with the routing weights.

Both exchanges are differentiable (the backward of an all-to-all is the all-to-all with the
split sizes swapped), so gradients reach remote tokens and the owned experts. Nothing here
assumes CPU or gloo: the same code runs on NCCL with CUDA tensors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moescope.moe.dispatch import dispatch
from moescope.moe.experts import Experts
from moescope.moe.result import MoEOutput


class _AllToAll(torch.autograd.Function):
    """Differentiable ``all_to_all_single`` along dim 0 with explicit split sizes."""

    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], group) -> Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        back = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                               group=ctx.group)
        return back, None, None, None


def all_to_all(x: Tensor, send: list[int], recv: list[int], group=None) -> Tensor:
    """Rows x[sum(send[:r]) : sum(send[:r+1])] go to rank r; returns the sum(recv) rows received."""
    return _AllToAll.apply(x, send, recv, group)


def exchange_counts(send: Tensor, group=None) -> list[int]:
    """Tell every rank how many rows to expect: send (W,) int64 counts -> recv counts."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.tolist()


class ExpertParallelMoE(nn.Module):
    """An MoE layer whose experts are sharded over the ranks of a process group.

    Args:
        router: a token-choice moescope router over all E experts (replicated on every rank).
        experts: this rank's E/W experts (an :class:`Experts` with ``num_experts = E / W``).
        shared: a replicated shared expert, or None.
        group: the process group (default: the world).
        dispatch: local dispatch path for the owned experts.

    Build it from a single-process layer with :meth:`from_layer` to shard its weights.
    """

    def __init__(self, *, router: nn.Module, experts: Experts, shared: nn.Module | None = None,
                 group=None, dispatch: str = "auto") -> None:
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoE needs torch.distributed initialised (e.g. under torchrun)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if router.num_experts != experts.num_experts * self.world:
            raise ValueError(f"router has {router.num_experts} experts but {self.world} ranks x "
                             f"{experts.num_experts} local experts = {experts.num_experts * self.world}")
        self.router, self.experts, self.shared, self.dispatch = router, experts, shared, dispatch
        self.local = experts.num_experts

    @classmethod
    def from_layer(cls, layer: nn.Module, group=None) -> ExpertParallelMoE:
        """Shard a single-process ``MoELayer``: this rank keeps copies of its own experts."""
        import copy

        world, rank = dist.get_world_size(group), dist.get_rank(group)
        full: Experts = layer.experts
        if full.num_experts % world:
            raise ValueError(f"{full.num_experts} experts do not split evenly over {world} ranks")
        n = full.num_experts // world
        local = Experts(n, full.hidden, full.intermediate, activation=full.activation_name, gate=full.gate,
                        bias=full.gate_up_bias is not None, limit=full.limit, alpha=full.alpha)
        with torch.no_grad():
            for name, p in local.named_parameters():
                p.copy_(getattr(full, name)[rank * n : (rank + 1) * n])
        local = local.to(device=full.gate_up_proj.device, dtype=full.gate_up_proj.dtype)
        return cls(router=copy.deepcopy(layer.router), experts=local,
                   shared=copy.deepcopy(layer.shared) if layer.shared is not None else None,
                   group=group, dispatch=layer.dispatch)

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> MoEOutput:
        """x (..., H) local tokens -> MoEOutput, as the single-process layer on the same tokens."""
        routing = self.router(x, attention_mask=attention_mask)
        flat = x.reshape(-1, x.shape[-1])
        k = routing.indices.shape[-1]
        idx = routing.indices.reshape(-1)
        valid = (idx >= 0).nonzero().squeeze(-1)
        tok, exp = valid // k, idx[valid]
        weight = routing.weights.reshape(-1)[valid].to(x.dtype).unsqueeze(-1)
        owner = exp // self.local
        order = torch.argsort(owner, stable=True)
        tok, exp, weight, owner = tok[order], exp[order], weight[order], owner[order]
        send = torch.bincount(owner, minlength=self.world)
        recv = exchange_counts(send, self.group)
        send = send.tolist()
        rows = flat[tok] * weight if routing.weight_input else flat[tok]
        got_rows = all_to_all(rows, send, recv, self.group)                              # (R, H)
        got_exp = all_to_all((exp - owner * self.local).unsqueeze(-1), send, recv, self.group)  # (R, 1) local ids
        ones = torch.ones_like(got_exp, dtype=x.dtype)
        out_rows = dispatch(got_rows, got_exp, ones, self.experts, method=self.dispatch)  # (R, H)
        back = all_to_all(out_rows, recv, send, self.group)                               # (S, H), our order
        if not routing.weight_input:
            back = back * weight
        out = flat.new_zeros(flat.shape).index_add(0, tok, back)
        if self.shared is not None:
            out = out + self.shared(flat)
        return MoEOutput(hidden=out.view(x.shape), routing=routing)
