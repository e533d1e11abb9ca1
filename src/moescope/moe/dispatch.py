"""Token-to-expert dispatch: several interchangeable paths, one contract.

Every path computes, for tokens x (T, H) and a routing (indices, weights) of shape (T, k),

    out_t = Σ_j w_tj · expert_{i_tj}(x_t)          (output weighting, the default)
    out_t = Σ_j expert_{i_tj}(w_tj · x_t)          (input weighting, Llama 4)

skipping slots with i_tj = -1. The paths differ only in how they batch the S ≤ T·k
(token, expert) pairs into GEMMs:

* ``loop``   — for each expert that received tokens, gather them, run it, ``index_add_``
               the result (the transformers "eager" algorithm). The simplest; it pays autograd
               bookkeeping and an allocation per expert, which dominate with many experts.
* ``sorted`` — sort the pairs by expert once, then run the whole expert MLP chunk by chunk
               over the sorted rows: gather a chunk's tokens, one GEMM per expert into one
               buffer, the activation once per chunk with the routing weight folded in, one
               GEMM per expert again, ``index_add_`` into the output. Forward and backward are
               one custom autograd function (:class:`_SortedExperts`). The same GEMMs as
               ``loop``, without its per-expert overhead; the general-purpose path.
* ``bmm``    — pad every expert's rows to m, the most any expert received, and run each
               projection as one ``torch.bmm`` over the whole (E, ·, ·) bank (one batched GEMM,
               no per-expert Python loop), weight-side (W·xᵀ) from m = 4 rows on; the backward
               (``moescope.moe.padded``) writes each weight gradient with one more ``bmm``, zero
               for experts without tokens. It reads every expert's weights and computes
               E·m ≥ S rows, so it pays off only where the routing is balanced and every expert
               has rows to do.
* ``reference`` — a per-token loop, the slow oracle the tests hold the others against.

``auto`` (:func:`auto_method`; one rule per compute dtype) picks ``bmm`` where its conditions hold —
enough rows per expert on average, padding that at most doubles the rows, padded buffers within ``_CHUNK_ELEMENTS`` —
and ``sorted`` everywhere else. ``moescope bench moe`` times every path on the benchmark's
shapes (one column per path beside the one ``auto`` ran); the README quotes its results.

What ``sorted`` does to be fast on CPU:

* Chunks. glibc serves allocations of 32 MiB and more with fresh ``mmap`` pages, which
  page-fault on first touch, and an (S, 2I) buffer passes that size at prefill-sized batches.
  Chunks whose widest buffer holds at most ``_CHUNK_ELEMENTS`` values keep every temporary
  small enough to be reused and in cache; the backward keeps only the chunks' (n, 2I)
  pre-activations and recomputes the activation from them.
* GEMM orientation. For some row counts n (``_TRANSPOSED_ROWS``) MKL's ``x @ w.T`` is much
  slower than ``(w @ x.T).T``; :func:`_mm_t` takes whichever orientation is fast for n.
* Python overhead. Per-expert weight views and row blocks come from one ``unbind`` /
  ``split`` each (indexing and transposing per expert cost as much as a small GEMM), and
  chunks in which every expert has fewer than 16 rows (small batches, many experts) run
  each projection as one ``F.grouped_mm`` (float32/bf16/fp16 on CPU, 16-byte rows).
* The routing weight scales the (n, I) activation in place (or the (n, H) input for
  Llama 4) instead of a pass over (S, H); its gradient, a row-wise dot product of the
  activation with its gradient, uses what the backward computes anyway.
* SwiGLU with SiLU (all but GPT-OSS and Switch) has a hand-written backward
  (``aten.silu_backward`` into a preallocated buffer); other activations run autograd on
  the chunk.
* No ``nonzero``: empty slots (-1) sort first and are cut off by a count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from moescope.moe._activation import Recomputed, activation
from moescope.moe._autocast import autocast_off, operands
from moescope.moe.experts import Experts
from moescope.moe.padded import bmm_dispatch
from moescope.moe.result import count_tokens

METHODS = ("auto", "sorted", "loop", "bmm", "reference")
# ``auto`` runs ``bmm`` where the experts get at least this many rows each on average (and the
# padding and the padded buffers stay small; see :func:`auto_method`), else ``sorted``.
_BMM_MIN_MEAN_ROWS = 8
# In bfloat16, ``bmm`` wherever its widest padded buffer, (E·m, 2I | H) values, holds at most this many bytes.
_BMM_BF16_BYTES = 8 << 20

# At most this many values in a chunk's widest buffer, (n, 2I) or (n, H): 2**21 float32 = 8 MiB,
# well under glibc's 32 MiB mmap threshold and inside the L3 cache (1024 rows at H=512, 2I=2048).
_CHUNK_ELEMENTS = 1 << 21
# Row counts for which MKL's (n, in) @ (out, in).T is slow and (w @ x.T).T is not (measured).
_TRANSPOSED_ROWS = (16, 64)

def _mm_t(a: Tensor, w_t: Tensor, out: Tensor) -> Tensor:
    """out = a @ w_t for a (n, in) and w_t (in, out) a transposed (out, in) weight, in whichever
    orientation MKL runs faster."""
    if _TRANSPOSED_ROWS[0] <= a.shape[0] < _TRANSPOSED_ROWS[1]:
        out.copy_(torch.mm(w_t.t(), a.t()).t())
    else:
        torch.mm(a, w_t, out=out)
    return out


@dataclass(frozen=True)
class _Chunk:
    """Rows [start, stop) of the sorted pairs: the experts in them and their row counts.

    ``offsets`` (E,) int32, the cumulative rows per expert, is set when the chunk's GEMMs run
    as one ``F.grouped_mm`` each (many experts with few rows: a per-expert Python loop would
    cost more than the GEMMs).
    """

    start: int
    stop: int
    experts: list[int]
    sizes: list[int]
    offsets: Tensor | None = None


@dataclass(frozen=True)
class _Plan:
    """tok (S,): the token of each pair, pairs sorted by expert (stable: by token within an
    expert); the chunks covering them in order; the expert bank and the weighting."""

    tok: Tensor
    chunks: list[_Chunk]
    experts: Experts
    weight_input: bool


def _chunks(counts: list[int], rows: int) -> list[tuple[int, int, list[int], list[int]]]:
    """Whole experts packed into chunks of at most ``rows`` rows; an expert with more rows than
    that gets chunks of its own, of near-equal size. Returns (start, stop, experts, sizes)."""
    chunks, experts, sizes, start, pos = [], [], [], 0, 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        if n > rows or pos + n - start > rows:
            if experts:
                chunks.append((start, pos, experts, sizes))
            experts, sizes, start = [], [], pos
        if n > rows:
            parts = -(-n // rows)
            for p in range(parts):
                lo, hi = pos + n * p // parts, pos + n * (p + 1) // parts
                chunks.append((lo, hi, [e], [hi - lo]))
            start = pos + n
        else:
            experts.append(e)
            sizes.append(n)
        pos += n
    if experts:
        chunks.append((start, pos, experts, sizes))
    return chunks


def _grouped_mm_ok(x: Tensor, gate_up: Tensor, down: Tensor) -> bool:
    """Whether ``F.grouped_mm`` takes these operands: on CPU, float32/bfloat16/float16, rows of
    whole 16-byte units, contiguous 16-byte-aligned weights."""
    if not hasattr(F, "grouped_mm") or x.device.type != "cpu":
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not x.dtype == gate_up.dtype == down.dtype:
        return False
    size = x.element_size()
    return (all(d * size % 16 == 0 for d in (*gate_up.shape[1:], down.shape[2]))
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (gate_up, down)))


def _plan(x: Tensor, indices: Tensor, experts: Experts, weight_input: bool) -> tuple[_Plan, Tensor]:
    """The plan and ``order`` (S,): each sorted pair's position in the flattened (T·k) routing."""
    k, num_experts = indices.shape[-1], experts.num_experts
    flat = indices.reshape(-1)
    expert, order = torch.sort(flat, stable=True)              # empty slots (-1) first
    counts = torch.bincount(expert + 1, minlength=num_experts + 1).tolist()
    order = order[counts[0]:]
    rows = max(1, _CHUNK_ELEMENTS // max(experts.gate_up_proj.shape[1:]))   # the widest (n, ·) buffer
    grouped = _grouped_mm_ok(x, experts.gate_up_proj, experts.down_proj)
    chunks = []
    for start, stop, ids, sizes in _chunks(counts[1:], rows):
        offsets = None
        if grouped and max(sizes) < _TRANSPOSED_ROWS[0]:
            per_expert = [0] * num_experts
            for e, n in zip(ids, sizes, strict=True):
                per_expert[e] = n
            offsets = torch.tensor(per_expert, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        chunks.append(_Chunk(start, stop, ids, sizes, offsets))
    return _Plan(torch.div(order, k, rounding_mode="floor"), chunks, experts, weight_input), order


class _Bank:
    """A stacked weight (E, out, in) and its per-expert views, made once (on first use) by one
    ``unbind``: indexing and transposing per expert costs ~4 µs a GEMM, as much as a small
    GEMM itself."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self._t: tuple[Tensor, ...] | None = None
        self._n: tuple[Tensor, ...] | None = None

    def transposed(self) -> tuple[Tensor, ...]:
        if self._t is None:
            self._t = self.weight.transpose(1, 2).unbind(0)            # (in, out) each
        return self._t

    def plain(self) -> tuple[Tensor, ...]:
        if self._n is None:
            self._n = self.weight.unbind(0)                            # (out, in) each
        return self._n


def _times_t(a: Tensor, bank: _Bank, chunk: _Chunk) -> Tensor:
    """Each expert's rows of ``a`` (n, in) times its weight transposed -> (n, out)."""
    if chunk.offsets is not None:
        return F.grouped_mm(a, bank.weight.transpose(1, 2), offs=chunk.offsets)
    out = a.new_empty(a.shape[0], bank.weight.shape[1])
    w_t = bank.transposed()
    for e, ab, ob in zip(chunk.experts, a.split(chunk.sizes), out.split(chunk.sizes), strict=True):
        _mm_t(ab, w_t[e], ob)
    return out


def _times(a: Tensor, bank: _Bank, chunk: _Chunk) -> Tensor:
    """Each expert's rows of ``a`` (n, out) times its weight -> (n, in) (the input gradient)."""
    if chunk.offsets is not None:
        return F.grouped_mm(a, bank.weight, offs=chunk.offsets)
    out = a.new_empty(a.shape[0], bank.weight.shape[2])
    w = bank.plain()
    for e, ab, ob in zip(chunk.experts, a.split(chunk.sizes), out.split(chunk.sizes), strict=True):
        torch.mm(ab, w[e], out=ob)
    return out


def _forward(x: Tensor, w: Tensor, gate_up: Tensor, down: Tensor, gate_up_bias: Tensor | None,
             down_bias: Tensor | None, plan: _Plan, keep: bool) -> tuple[Tensor, list[Tensor]]:
    """The output (T, H) and, if ``keep``, each chunk's first projection (for the backward)."""
    out = x.new_zeros(x.shape)
    kept = []
    gate_up_bank, down_bank = _Bank(gate_up), _Bank(down)
    for chunk in plan.chunks:
        tok, wc = plan.tok[chunk.start:chunk.stop], w[chunk.start:chunk.stop].unsqueeze(-1)   # (n,), (n, 1)
        xs = x.index_select(0, tok)                                    # (n, H)
        if plan.weight_input:
            xs.mul_(wc)
        h = _times_t(xs, gate_up_bank, chunk)                          # (n, 2I | I)
        if gate_up_bias is not None:
            for e, hb in zip(chunk.experts, h.split(chunk.sizes), strict=True):
                hb += gate_up_bias[e]
        a = activation(plan.experts, h)                                # (n, I)
        if not plan.weight_input:
            a.mul_(wc)                                                 # w·(a W^T + b) = (w·a) W^T + w·b
        y = _times_t(a, down_bank, chunk)                              # (n, H)
        if down_bias is not None:
            for e, yb, wb in zip(chunk.experts, y.split(chunk.sizes), wc.split(chunk.sizes), strict=True):
                if plan.weight_input:
                    yb += down_bias[e]
                else:
                    yb.addr_(wb[:, 0], down_bias[e])
        out.index_add_(0, tok, y)
        if keep:
            kept.append(h)
    return out, kept


class _ExpertGrad:
    """The gradient of a stacked (E, ...) parameter, built chunk by chunk: a per-expert slice is
    written by its first contribution and accumulated after; experts never seen are zeroed."""

    def __init__(self, like: Tensor | None, needed: bool) -> None:
        self.like = like if needed else None
        self.grad: Tensor | None = None
        self._parts: tuple[Tensor, ...] = ()
        self.seen: set[int] = set()
        self.everything = False                   # a whole (E, ...) contribution was added

    def _slices(self) -> tuple[Tensor, ...]:
        if self.grad is None:
            self.grad = torch.empty_like(self.like)
        if not self._parts:
            self._parts = self.grad.unbind(0)
        return self._parts

    def outer(self, g: Tensor, b: Tensor, chunk: _Chunk) -> None:
        """grad[e] += g_e^T b_e for each expert's rows g_e, b_e of the chunk."""
        if self.like is None:
            return
        if chunk.offsets is not None:
            self.whole(F.grouped_mm(g.t(), b, offs=chunk.offsets))
            return
        parts = self._slices()
        for e, gb, bb in zip(chunk.experts, g.split(chunk.sizes), b.split(chunk.sizes), strict=True):
            if self.everything or e in self.seen:
                parts[e].addmm_(gb.t(), bb)
            else:
                torch.mm(gb.t(), bb, out=parts[e])
                self.seen.add(e)

    def add(self, e: int, v: Tensor) -> None:
        if self.like is None:
            return
        parts = self._slices()
        if self.everything or e in self.seen:
            parts[e].add_(v)
        else:
            parts[e].copy_(v)
            self.seen.add(e)

    def whole(self, v: Tensor) -> None:
        if self.grad is None:
            self.grad = v
        else:
            self._zero_unseen()
            self.grad.add_(v)
        self.everything = True

    def _zero_unseen(self) -> None:
        if not self.everything:
            parts = self._slices()
            for e in range(len(parts)):
                if e not in self.seen:
                    parts[e].zero_()

    def result(self) -> Tensor | None:
        if self.like is None:
            return None
        if self.grad is None:
            return torch.zeros_like(self.like)
        self._zero_unseen()
        return self.grad


class _SortedExperts(torch.autograd.Function):
    """The ``sorted`` path as one autograd node; inputs x (T, H), w (S,) the sorted pairs'
    routing weights, the expert weights and biases, and the plan."""

    @staticmethod
    def forward(ctx, x, w, gate_up, down, gate_up_bias, down_bias, plan):
        out, kept = _forward(x, w, gate_up, down, gate_up_bias, down_bias, plan, keep=True)
        ctx.save_for_backward(x, w, gate_up, down, gate_up_bias, down_bias)
        ctx.plan, ctx.kept = plan, kept
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        x, w, gate_up, down, gate_up_bias, down_bias = ctx.saved_tensors
        plan, need = ctx.plan, ctx.needs_input_grad
        experts, win = plan.experts, plan.weight_input
        g_out = g_out.contiguous()
        g_x = torch.zeros_like(x) if need[0] else None
        g_w = torch.empty_like(w) if need[1] else None
        g_gate_up, g_down = _ExpertGrad(gate_up, need[2]), _ExpertGrad(down, need[3])
        g_gate_up_bias, g_down_bias = _ExpertGrad(gate_up_bias, need[4]), _ExpertGrad(down_bias, need[5])
        need_g_xs = need[0] or (win and need[1])
        gate_up_bank, down_bank = _Bank(gate_up), _Bank(down)
        for chunk, h in zip(plan.chunks, ctx.kept, strict=True):
            start, stop, sizes = chunk.start, chunk.stop, chunk.sizes
            tok, wc = plan.tok[start:stop], w[start:stop].unsqueeze(-1)
            g_y = g_out.index_select(0, tok)                                   # (n, H)
            act = Recomputed(experts, h)                                       # the activation again
            a0 = act.a0
            a = a0 if win else a0 * wc                                         # what down_proj saw
            g_a = _times(g_y, down_bank, chunk)                                # (n, I)
            g_down.outer(g_y, a, chunk)
            if down_bias is not None:
                for e, gyb, wb in zip(chunk.experts, g_y.split(sizes), wc.split(sizes), strict=True):
                    g_down_bias.add(e, gyb.sum(0) if win else wb[:, 0] @ gyb)
            if not win:
                if g_w is not None:
                    g_wc = (g_a * a0).sum(-1)
                    if down_bias is not None:
                        for e, gyb, gwb in zip(chunk.experts, g_y.split(sizes), g_wc.split(sizes), strict=True):
                            gwb += gyb @ down_bias[e]
                    g_w[start:stop] = g_wc
                g_a.mul_(wc)                                                   # now d/d a0
            g_h = act.backward(g_a)
            if gate_up_bias is not None:
                for e, ghb in zip(chunk.experts, g_h.split(sizes), strict=True):
                    g_gate_up_bias.add(e, ghb.sum(0))
            if not (need_g_xs or need[2]):
                continue
            x_rows = x.index_select(0, tok)                                    # (n, H)
            xs = x_rows * wc if win else x_rows
            g_gate_up.outer(g_h, xs, chunk)
            if not need_g_xs:
                continue
            g_xs = _times(g_h, gate_up_bank, chunk)                            # (n, H)
            if win:
                if g_w is not None:
                    g_w[start:stop] = (g_xs * x_rows).sum(-1)
                g_xs.mul_(wc)
            if g_x is not None:
                g_x.index_add_(0, tok, g_xs)
        return (g_x, g_w, g_gate_up.result(), g_down.result(), g_gate_up_bias.result(), g_down_bias.result(),
                None)


def _sorted(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts, weight_input: bool) -> Tensor:
    plan, order = _plan(x, indices, experts, weight_input)
    w = weights.reshape(-1).index_select(0, order).to(x.dtype)                 # (S,)
    args = operands(x, w, experts)
    with autocast_off(x):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return _SortedExperts.apply(*args, plan).to(x.dtype)
        return _forward(*args, plan, keep=False)[0].to(x.dtype)


def _loop(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts, weight_input: bool) -> Tensor:
    out = x.new_zeros(x.shape)
    hit = torch.unique(indices[indices >= 0]).tolist()
    for e in hit:
        tok, slot = torch.where(indices == e)
        w = weights[tok, slot].to(x.dtype).unsqueeze(-1)
        rows = x[tok]
        y = experts.expert(e, rows * w) if weight_input else experts.expert(e, rows) * w
        out = out.index_add(0, tok, y.to(out.dtype))   # under autocast the expert's GEMMs ran in its dtype
    return out


def reference_dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts,
                       weight_input: bool = False) -> Tensor:
    """The definition, one token and one slot at a time (slow; the tests' oracle)."""
    rows = []
    for t in range(x.shape[0]):
        acc = x.new_zeros(x.shape[-1])
        for j in range(indices.shape[-1]):
            e = int(indices[t, j])
            if e < 0:
                continue
            w = weights[t, j].to(x.dtype)
            xt = x[t : t + 1]
            acc = acc + (experts.expert(e, xt * w) if weight_input else experts.expert(e, xt) * w)[0].to(x.dtype)
        rows.append(acc)
    return torch.stack(rows) if rows else x.new_zeros(x.shape)


def _compute_dtype(experts: Experts) -> torch.dtype:
    """The dtype the experts' GEMMs run in: autocast's where it is on for the weights' device, else the weights'."""
    device = experts.gate_up_proj.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else experts.gate_up_proj.dtype


def auto_method(indices: Tensor, experts: Experts) -> str:
    """``bmm`` where it was measured faster than ``sorted``, else ``sorted``; a rule per compute dtype.

    **bfloat16** (``moescope bench moe --dtype bfloat16``: AMX, 2 threads, both benchmark shapes,
    T = 16 … 4096): the padded ``bmm`` — one oneDNN batched GEMM per projection — beat ``sorted`` wherever
    its widest padded buffer held at most ``_BMM_BF16_BYTES`` (8 MiB), however few rows each expert got
    (up to 2× at T ≤ 64 with 64 experts), and lost beyond it (1.6× slower in forward+backward at 8
    experts, T = 4096). So in bfloat16 that size alone decides.

    **float32 and other dtypes.** ``bmm`` runs all E experts on m rows each, m the most any expert
    got. It wins (the weight-side batched GEMM, one call per projection) when every expert has enough rows (a mean of
    ``_BMM_MIN_MEAN_ROWS``), the padding at most doubles the rows (E·m ≤ 2·S: balanced routing)
    and its widest (E·m, 2I | H) buffer stays within ``_CHUNK_ELEMENTS`` (larger buffers page-
    fault; ``sorted`` works in chunks of that size). Decided from the counts alone; below the
    mean the counts are not even taken.
    """
    num_experts = experts.num_experts
    widest = max(experts.gate_up_proj.shape[1], experts.hidden)
    if _compute_dtype(experts) == torch.bfloat16:
        counts = count_tokens(indices, num_experts)
        most = int(counts.max()) if counts.numel() else 0
        return "bmm" if 0 < num_experts * most * widest * 2 <= _BMM_BF16_BYTES else "sorted"
    if indices.numel() < _BMM_MIN_MEAN_ROWS * num_experts:
        return "sorted"
    counts = count_tokens(indices, num_experts)
    pairs, most = (int(v) for v in torch.stack((counts.sum(), counts.max())).tolist())
    rows = num_experts * most
    if pairs >= _BMM_MIN_MEAN_ROWS * num_experts and rows <= 2 * pairs and rows * widest <= _CHUNK_ELEMENTS:
        return "bmm"
    return "sorted"


_PATHS = {"sorted": _sorted, "loop": _loop, "bmm": bmm_dispatch, "reference": reference_dispatch}


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts, *,
             weight_input: bool = False, method: str = "auto") -> Tensor:
    """Run the routed experts. x (T, H), indices and weights (T, k) -> (T, H)."""
    if method not in METHODS:
        raise ValueError(f"dispatch method must be one of {', '.join(METHODS)}; got method={method!r}")
    if x.ndim != 2 or x.shape[-1] != experts.hidden:
        raise ValueError(f"x must have shape (T, {experts.hidden}); got {tuple(x.shape)}")
    if indices.shape != weights.shape or indices.shape[0] != x.shape[0]:
        raise ValueError(f"indices {tuple(indices.shape)} and weights {tuple(weights.shape)} must both be (T, k)"
                         f" with T={x.shape[0]}")
    if indices.numel() and int(indices.max()) >= experts.num_experts:
        raise ValueError(f"expert index {int(indices.max())} out of range for {experts.num_experts} experts")
    path = _PATHS[auto_method(indices, experts) if method == "auto" else method]
    return path(x, indices, weights, experts, weight_input)
