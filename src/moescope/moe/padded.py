"""The ``bmm`` dispatch path: every expert's rows padded to the most any expert got, each
projection one ``torch.bmm`` over the whole (E, ·, ·) expert bank (see :mod:`moescope.moe.dispatch`
for when ``auto`` takes it)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from moescope.moe._activation import Recomputed, activation
from moescope.moe._autocast import autocast_off, operands
from moescope.moe.experts import Experts

# From this many rows per expert on, MKL runs the padded (E, m, in)·(E, out, in)ᵀ faster weight-side,
# as w·aᵀ (the weights streamed as the left operand); with fewer rows a·wᵀ is the faster.
_WEIGHT_SIDE_ROWS = 4


class _PaddedExperts(torch.autograd.Function):
    """The ``bmm`` path as one autograd node: the expert MLP on the (E, m, ·) padded blocks, one
    ``torch.bmm`` per projection over the whole expert bank. Inputs x (T, H), w (E·m,) the
    routing weights in the padded layout (0 on padding), the expert weights and biases, ``tok``
    (E·m,) each padded row's token (T, a zero row, on padding), ``dest`` (S,) each sorted pair's
    padded row and ``tok_sorted`` (S,) its token; ``experts`` and ``weight_input`` as for
    ``sorted``. Padding rows read the zero row, carry weight 0 and are never scattered back, so
    they contribute nothing to the output or to any gradient."""

    @staticmethod
    def forward(ctx, x, w, gate_up, down, gate_up_bias, down_bias, tok, dest, tok_sorted, experts, weight_input):
        out, xs, h = _padded_forward(x, w, gate_up, down, gate_up_bias, down_bias, tok, dest, tok_sorted,
                                     experts, weight_input)
        ctx.save_for_backward(x, w, gate_up, down, gate_up_bias, down_bias, tok, dest, tok_sorted, xs, h)
        ctx.experts, ctx.weight_input = experts, weight_input
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        x, w, gate_up, down, gate_up_bias, down_bias, tok, dest, tok_sorted, xs, h = ctx.saved_tensors
        experts, win, need = ctx.experts, ctx.weight_input, ctx.needs_input_grad
        num_experts, m = h.shape[:2]
        wc = w.view(num_experts, m, 1)
        g_y = _gather_padded(g_out.contiguous(), tok).view(num_experts, m, x.shape[1])   # (E, m, H)
        act = Recomputed(experts, h)
        a0 = act.a0                                                             # (E, m, I)
        a = a0 if win else a0 * wc                                              # what down_proj saw
        g_down = torch.bmm(g_y.transpose(1, 2), a) if need[3] else None        # (E, H, I)
        g_down_bias = None
        if down_bias is not None and need[5]:
            g_down_bias = g_y.sum(1) if win else torch.bmm(wc.transpose(1, 2), g_y).squeeze(1)   # (E, H)
        g_a = torch.bmm(g_y, down)                                              # (E, m, I)
        g_w = None
        if not win:
            if need[1]:
                g_w = (g_a * a0).sum(-1)
                if down_bias is not None:
                    g_w += torch.bmm(g_y, down_bias.unsqueeze(-1)).squeeze(-1)
            g_a.mul_(wc)                                                        # now d/d a0
        g_h = act.backward(g_a)
        g_gate_up_bias = g_h.sum(1) if gate_up_bias is not None and need[4] else None
        g_gate_up = torch.bmm(g_h.transpose(1, 2), xs) if need[2] else None    # (E, 2I | I, H)
        g_x = None
        if need[0] or (win and need[1]):
            g_xs = torch.bmm(g_h, gate_up)                                      # (E, m, H)
            if win:
                if need[1]:
                    g_w = (g_xs * _gather_padded(x, tok).view_as(g_xs)).sum(-1)
                g_xs.mul_(wc)
            if need[0]:
                g_x = torch.zeros_like(x).index_add_(0, tok_sorted, g_xs.view(-1, x.shape[1]).index_select(0, dest))
        g_w = None if g_w is None else g_w.view(-1)
        return g_x, g_w, g_gate_up, g_down, g_gate_up_bias, g_down_bias, None, None, None, None, None


def _padded_times_t(a: Tensor, w: Tensor) -> Tensor:
    """a (E, m, in) times each expert's weight w (E, out, in) transposed -> (E, m, out), in the
    orientation MKL runs faster: from m = ``_WEIGHT_SIDE_ROWS`` rows on, as w·aᵀ (the weight
    streamed as the left operand, aᵀ made contiguous: MKL takes a transposed right operand 10–50%
    slower at small m; a transposed view is returned)."""
    if a.shape[1] >= _WEIGHT_SIDE_ROWS:
        return torch.bmm(w, a.transpose(1, 2).contiguous()).transpose(1, 2)
    return torch.bmm(a, w.transpose(1, 2))


def _gather_padded(x: Tensor, tok: Tensor) -> Tensor:
    """Rows ``tok`` (n,) of x (T, ·), where index T gives a zero row -> (n, ·)."""
    return torch.cat((x, x.new_zeros(1, x.shape[1]))).index_select(0, tok)


def _padded_forward(x, w, gate_up, down, gate_up_bias, down_bias, tok, dest, tok_sorted, experts, weight_input):
    """The output (T, H), the padded inputs xs (E, m, H) and first projection h (E, m, 2I | I)."""
    num_experts = gate_up.shape[0]
    m = w.numel() // num_experts
    wc = w.view(num_experts, m, 1)                                              # (E, m, 1)
    xs = _gather_padded(x, tok).view(num_experts, m, x.shape[1])                # (E, m, H)
    if weight_input:
        xs.mul_(wc)
    h = _padded_times_t(xs, gate_up)                                            # (E, m, 2I | I)
    if gate_up_bias is not None:
        h += gate_up_bias.unsqueeze(1)
    a = activation(experts, h)                                                 # (E, m, I)
    if not weight_input:
        a.mul_(wc)
    y = _padded_times_t(a, down)                                                # (E, m, H)
    if down_bias is not None:
        y += down_bias.unsqueeze(1) if weight_input else wc * down_bias.unsqueeze(1)
    out = torch.zeros_like(x).index_add_(0, tok_sorted, y.reshape(-1, x.shape[1]).index_select(0, dest))
    return out, xs, h


def _padded_layout(indices: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """The (E, m) padded layout of the valid (token, expert) pairs, m the most pairs any expert
    got: ``slot`` (E·m,) each padded row's position in the flattened (T·k) routing (T·k on
    padding), ``dest`` (S,) each pair's padded row, pairs sorted by expert then token, and
    ``order`` (S,) each sorted pair's position in the routing."""
    flat = indices.reshape(-1)
    expert, order = torch.sort(flat, stable=True)                               # empty slots (-1) first
    counts = torch.bincount(expert + 1, minlength=num_experts + 1)
    empty, m = (int(v) for v in torch.stack((counts[0], counts[1:].max())).tolist())
    expert, order = expert[empty:], order[empty:]
    per_expert = counts[1:]
    first = per_expert.cumsum(0) - per_expert                                   # (E,) each expert's first pair
    dest = expert * m + torch.arange(order.numel()) - first[expert]             # (S,)
    slot = flat.new_full((num_experts * m,), flat.numel()).index_copy_(0, dest, order)
    return slot, dest, order


def bmm_dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts, weight_input: bool) -> Tensor:
    k = indices.shape[-1]
    slot, dest, order = _padded_layout(indices, experts.num_experts)
    tok = torch.div(slot, k, rounding_mode="floor")                             # (E·m,), T on padding
    w = torch.cat((weights.reshape(-1), weights.new_zeros(1)))[slot].to(x.dtype)   # (E·m,), 0 on padding
    args = operands(x, w, experts)
    rest = (tok, dest, torch.div(order, k, rounding_mode="floor"), experts, weight_input)
    with autocast_off(x):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return _PaddedExperts.apply(*args, *rest).to(x.dtype)
        return _padded_forward(*args, *rest)[0].to(x.dtype)
