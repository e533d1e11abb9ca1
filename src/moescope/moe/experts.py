"""Expert banks stored stacked like the references, a dense FFN, and shared experts.

Layout (as in transformers' Mixtral/Qwen/DeepSeek experts): ``gate_up_proj`` (E, 2I, H)
with the gate in rows [0, I) and the up projection in rows [I, 2I), ``down_proj`` (E, H, I),
so ``F.linear(x, gate_up_proj[e])`` is expert e's first projection. Non-gated experts
(Switch Transformers) keep ``up_proj`` (E, I, H) instead. GPT-OSS's clamped SwiGLU with
biases is the ``gate="gpt_oss"`` variant (its interleaved, transposed weights are converted
on the way in by :func:`moescope.moe.from_hf`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
               "relu": F.relu}
GATES = ("swiglu", "gpt_oss", "none")


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got activation={name!r}")
    return ACTIVATIONS[name]


class Experts(nn.Module):
    """E feed-forward experts in stacked tensors.

    Args:
        num_experts: E.
        hidden: H.
        intermediate: I, each expert's inner width (fine-grained experts: small I, large E).
        activation: of the gate (gated) or of the hidden layer (non-gated).
        gate: ``swiglu`` (act(x W_g) * x W_u), ``gpt_oss`` (clamped, (up + 1) * g sigmoid(α g)),
            or ``none`` (a plain act(x W_u) MLP, Switch Transformers).
        bias: add per-expert biases to both projections (GPT-OSS).
        limit, alpha: GPT-OSS's clamp limit and sigmoid slope.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, *, activation: str = "silu",
                 gate: str = "swiglu", bias: bool = False, limit: float = 7.0, alpha: float = 1.702) -> None:
        super().__init__()
        for name, v in (("num_experts", num_experts), ("hidden", hidden), ("intermediate", intermediate)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}; got gate={gate!r}")
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
        self.gate, self.activation_name, self.limit, self.alpha = gate, activation, limit, alpha
        self.act = _activation(activation)
        first = 2 * intermediate if gate != "none" else intermediate
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, first, hidden))   # (E, 2I | I, H)
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))  # (E, H, I)
        if bias:
            self.gate_up_bias = nn.Parameter(torch.zeros(num_experts, first))
            self.down_bias = nn.Parameter(torch.zeros(num_experts, hidden))
        else:
            self.register_parameter("gate_up_bias", None)
            self.register_parameter("down_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init, expert by expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.uniform_(self.gate_up_proj, -1 / math.sqrt(self.hidden), 1 / math.sqrt(self.hidden))
        nn.init.uniform_(self.down_proj, -1 / math.sqrt(self.intermediate), 1 / math.sqrt(self.intermediate))

    @property
    def gated(self) -> bool:
        return self.gate != "none"

    def inner(self, first: Tensor) -> Tensor:
        """(N, 2I | I) first-projection output -> (N, I) the activation fed to down_proj."""
        if self.gate == "none":
            return self.act(first)
        gate, up = first[..., : self.intermediate], first[..., self.intermediate :]
        if self.gate == "swiglu":
            return self.act(gate) * up
        gate = gate.clamp(max=self.limit)
        up = up.clamp(-self.limit, self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when x's dtype is not the experts' (else a matmul fails deep inside)."""
        dtype = self.gate_up_proj.dtype
        if x.dtype != dtype:
            raise ValueError(f"x is {x.dtype} but the layer's experts are {dtype}; convert one of them "
                             f"(x.to({dtype}) or layer.to({x.dtype}))")

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e on (N, H) rows -> (N, H)."""
        first = F.linear(x, self.gate_up_proj[e], None if self.gate_up_bias is None else self.gate_up_bias[e])
        return F.linear(self.inner(first), self.down_proj[e], None if self.down_bias is None else self.down_bias[e])

    def active_params_per_token(self) -> int:
        """Weights one expert touches per token (for FLOP accounting: 2 FLOPs per weight)."""
        n = self.gate_up_proj[0].numel() + self.down_proj[0].numel()
        if self.gate_up_bias is not None:
            n += self.gate_up_bias.shape[-1] + self.down_bias.shape[-1]
        return n

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden={self.hidden}, intermediate={self.intermediate}, "
                f"gate={self.gate}, activation={self.activation_name}, bias={self.gate_up_bias is not None}")


class DenseFFN(nn.Module):
    """One feed-forward block (the dense baseline, and the body of a shared expert).

    Weights are named like Hugging Face's MLPs (``gate_proj``, ``up_proj``, ``down_proj``).
    """

    def __init__(self, hidden: int, intermediate: int, *, activation: str = "silu", gated: bool = True) -> None:
        super().__init__()
        self.act = _activation(activation)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False) if gated else None
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(..., H) -> (..., H)."""
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class SharedExpert(nn.Module):
    """An expert every token passes through: ungated (DeepSeek, Llama 4) or sigmoid-gated
    (Qwen2-MoE: sigmoid(x w_g) · FFN(x) with a learned w_g of shape (1, H))."""

    def __init__(self, hidden: int, intermediate: int, *, activation: str = "silu", gate: str | None = None) -> None:
        super().__init__()
        if gate not in (None, "sigmoid"):
            raise ValueError(f"shared-expert gate must be None or 'sigmoid'; got gate={gate!r}")
        self.ffn = DenseFFN(hidden, intermediate, activation=activation)
        self.gate = nn.Linear(hidden, 1, bias=False) if gate == "sigmoid" else None

    def forward(self, x: Tensor) -> Tensor:
        """(T, H) -> (T, H)."""
        out = self.ffn(x)
        return out if self.gate is None else torch.sigmoid(self.gate(x)) * out
