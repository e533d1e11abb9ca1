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

``with layer.profile() as prof:`` times those phases (and the exchanges' and experts'
backward) and counts the bytes each exchange sends to other ranks; outside it the layer
runs exactly as without it (a few no-op context managers per call).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moescope.moe.dispatch import dispatch
from moescope.moe.experts import Experts
from moescope.moe.result import MoEOutput


@dataclass
class EPProfile:
    """What :meth:`ExpertParallelMoE.profile` measured on this rank, summed over the calls.

    ``seconds`` per phase: ``routing`` (router, sort by owner, gather of the rows),
    ``communication`` (count exchange and the three all-to-alls), ``experts`` (the owned
    experts), ``combine`` (routing weights, scatter-add, shared expert), and for a backward
    run through outputs made inside the block ``communication_backward`` (the all-to-alls of
    the gradients) and ``experts_backward`` (from the output gradient reaching the experts to
    their input gradient leaving; timed when the token rows need a gradient). A collective's
    time includes waiting for the slowest rank.

    ``bytes_sent`` / ``bytes_received`` per exchange (``counts``, ``tokens``, ``expert_ids``,
    ``outputs``; backward: ``tokens_grad``, ``outputs_grad``): bytes to and from *other* ranks
    (a rank's rows to itself are a local copy), from the split sizes times the row size.
    ``pairs``: (token, expert) pairs routed; ``remote_pairs``: those whose expert lives on
    another rank; ``tokens``: input tokens; ``calls``: forward calls.
    """

    seconds: Counter = field(default_factory=Counter)
    bytes_sent: Counter = field(default_factory=Counter)
    bytes_received: Counter = field(default_factory=Counter)
    pairs: int = 0
    remote_pairs: int = 0
    tokens: int = 0
    calls: int = 0
    cuda: bool = False  # synchronise the device around each phase (CUDA kernels run asynchronously)

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.seconds[name] += self.now() - start

    def count(self, name: str, send: list[int], recv: list[int], row_bytes: int, rank: int) -> None:
        self.bytes_sent[name] += (sum(send) - send[rank]) * row_bytes
        self.bytes_received[name] += (sum(recv) - recv[rank]) * row_bytes

    def time_backward(self, name: str, start: Tensor, end: Tensor) -> None:
        """Add to ``seconds[name]`` the time from the gradient of ``start`` being ready to that of
        ``end`` (``end`` made before ``start`` in the forward; autograd runs later nodes first)."""
        if not (start.requires_grad and end.requires_grad):
            return
        began: list[float] = []

        def first(grad: Tensor) -> None:
            began.append(self.now())

        def last(grad: Tensor) -> None:
            if began:
                self.seconds[name] += self.now() - began.pop()

        start.register_hook(first)
        end.register_hook(last)


_OFF = nullcontext()


def _phase(prof: EPProfile | None, name: str):
    return _OFF if prof is None else prof.phase(name)


class _AllToAll(torch.autograd.Function):
    """Differentiable ``all_to_all_single`` along dim 0 with explicit split sizes."""

    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], group, prof: EPProfile | None, name: str) -> Tensor:
        ctx.send, ctx.recv, ctx.group, ctx.prof, ctx.name = send, recv, group, prof, name
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        if prof is not None:
            prof.count(name, send, recv, math.prod(x.shape[1:]) * x.element_size(), dist.get_rank(group))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        prof = ctx.prof
        with _phase(prof, "communication_backward"):
            back = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
            dist.all_to_all_single(back, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                                   group=ctx.group)
        if prof is not None:
            prof.count(f"{ctx.name}_grad", ctx.recv, ctx.send, math.prod(grad.shape[1:]) * grad.element_size(),
                       dist.get_rank(ctx.group))
        return back, None, None, None, None, None


def all_to_all(x: Tensor, send: list[int], recv: list[int], group=None, *, prof: EPProfile | None = None,
               name: str = "rows") -> Tensor:
    """Rows x[sum(send[:r]) : sum(send[:r+1])] go to rank r; returns the sum(recv) rows received.

    With ``prof``, the bytes to and from other ranks are added to it under ``name`` (and, in
    the backward, ``name + "_grad"``) and the backward exchange is timed.
    """
    return _AllToAll.apply(x, send, recv, group, prof, name)


def exchange_counts(send: Tensor, group=None, *, prof: EPProfile | None = None) -> list[int]:
    """Tell every rank how many rows to expect: send (W,) int64 counts -> recv counts."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    if prof is not None:
        prof.count("counts", [1] * len(send), [1] * len(send), send.element_size(), dist.get_rank(group))
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
        self._prof: EPProfile | None = None  # set only inside `with self.profile()`

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

    @contextmanager
    def profile(self) -> Iterator[EPProfile]:
        """Time the phases of every forward run inside the block, and count its bytes.

        Yields an :class:`EPProfile` filled in place. A backward through outputs made inside
        the block adds its phases when it runs, even after the block has closed. Numerics are
        unchanged; on CUDA the device is synchronised around each phase.
        """
        if self._prof is not None:
            raise RuntimeError("ExpertParallelMoE.profile() is already active on this layer")
        self._prof = EPProfile(cuda=self.experts.gate_up_proj.is_cuda)
        try:
            yield self._prof
        finally:
            self._prof = None

    def forward(self, x: Tensor, *, attention_mask: Tensor | None = None) -> MoEOutput:
        """x (..., H) local tokens -> MoEOutput, as the single-process layer on the same tokens."""
        prof = self._prof
        with _phase(prof, "routing"):
            routing = self.router(x, attention_mask=attention_mask)
            flat = x.reshape(-1, x.shape[-1])                                             # (T, H)
            k = routing.indices.shape[-1]
            idx = routing.indices.reshape(-1)
            valid = (idx >= 0).nonzero().squeeze(-1)
            tok, exp = valid // k, idx[valid]
            weight = routing.weights.reshape(-1)[valid].to(x.dtype).unsqueeze(-1)
            owner = exp // self.local
            order = torch.argsort(owner, stable=True)
            tok, exp, weight, owner = tok[order], exp[order], weight[order], owner[order]
            send = torch.bincount(owner, minlength=self.world)
            rows = flat[tok] * weight if routing.weight_input else flat[tok]              # (S, H), by owner
        with _phase(prof, "communication"):
            recv = exchange_counts(send, self.group, prof=prof)
            send = send.tolist()
            got_rows = all_to_all(rows, send, recv, self.group, prof=prof, name="tokens")  # (R, H)
            got_exp = all_to_all((exp - owner * self.local).unsqueeze(-1), send, recv, self.group, prof=prof,
                                 name="expert_ids")                                        # (R, 1) local ids
        with _phase(prof, "experts"):
            ones = torch.ones_like(got_exp, dtype=x.dtype)
            out_rows = dispatch(got_rows, got_exp, ones, self.experts, method=self.dispatch)  # (R, H)
        with _phase(prof, "communication"):
            back = all_to_all(out_rows, recv, send, self.group, prof=prof, name="outputs")    # (S, H), our order
        with _phase(prof, "combine"):
            if not routing.weight_input:
                back = back * weight
            out = flat.new_zeros(flat.shape).index_add(0, tok, back)
            if self.shared is not None:
                out = out + self.shared(flat)
        if prof is not None:
            prof.time_backward("experts_backward", out_rows, got_rows)
            prof.pairs += len(tok)
            prof.remote_pairs += len(tok) - send[self.rank]
            prof.tokens += len(flat)
            prof.calls += 1
        return MoEOutput(hidden=out.view(x.shape), routing=routing)
