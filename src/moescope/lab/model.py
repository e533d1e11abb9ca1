"""A tiny decoder-only transformer whose FFN is a dense MLP or a moescope MoE layer.

nanoGPT's ``model.py`` shape (Karpathy 2022): token + learned position embeddings, ``n_layer``
pre-norm blocks of causal self-attention and a feed-forward block, a final LayerNorm, and an
output head tied to the token embedding. The feed-forward block is the one knob the lab turns:
a SwiGLU :class:`~moescope.moe.DenseFFN`, or a :class:`~moescope.moe.MoELayer` /
:class:`~moescope.moe.SoftMoELayer` built from a :class:`MoESpec` (every FFN is SwiGLU, so
routing is the only difference between runs).

The routers the lab offers are read from the router catalogue (:data:`moescope.moe.routers.ROUTERS`,
each router's ``lab_name``) plus :class:`~moescope.moe.SoftMoELayer`; each builds itself from
the :class:`MoESpec` (``from_spec``), and its ``causal`` flag says whether the LM stays causal.

Causality. Token-choice routers (``topk``, ``switch``, ``deepseek_v3``, ``cosine``) decide
per token, so the LM stays causal (Switch's capacity is counted per sequence, in sequence
order, so a token's fate depends only on earlier tokens). **Soft MoE** (dispatch is a
softmax over the tokens of a sequence) and **Expert Choice** (experts pick their top tokens
across the batch) are not causal: a position's output depends on later tokens. They are
trained bidirectionally (``bidirectional=True``) on a masked-token objective
(:func:`mask_tokens`) and are compared only with each other and a dense masked-token model,
never with causal LMs. Building one in a causal model warns with
:class:`NonCausalRouterWarning` (the tests do so on purpose, to show the leak).

Two architectures (``LMConfig.arch``), one FFN knob:

* ``"nanogpt"`` (``LMConfig``'s default, so that configs written before ``arch`` existed read as
  they were; the lab's numbers were measured on it until the profiles moved to ``"llama"``,
  :data:`LAB_ARCH`): learned absolute positions, LayerNorm without bias, one fused ``c_attn``
  q/k/v projection;
* ``"llama"``: the body of the MoE LLMs the lab's routers come from (Llama, Mixtral,
  Qwen-MoE, GLM-4.5; DeepSeek-V3 differs only in its latent attention): rotary position
  embeddings on every head's full width (RoFormer, Su et al. 2021, eq. 34, in the rotate-half
  layout of transformers' ``apply_rotary_pos_emb``), RMSNorm (Zhang & Sennrich 2019) before
  attention, before the FFN and at the end, separate ``q_proj`` / ``k_proj`` / ``v_proj`` /
  ``o_proj``, no position table. A run of this architecture computes exactly what a
  transformers MoE family computes, so
  :mod:`moescope.lab.export_hf` can save it as a Hugging Face checkpoint that
  ``moescope analyze`` reads.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moescope.moe import DenseFFN, Experts, MoELayer, RouterResult, SharedExpert, SoftMoELayer
from moescope.moe import routers as _routers

# The lab's FFN kinds by MoESpec.router: every catalogued router with a lab_name, and Soft MoE
# (a layer with its own slots, not a router). Derived from the classes, never listed here.
FFN_KINDS: dict[str, type[nn.Module]] = {
    kind.lab_name: kind for kind in (*_routers.ROUTERS, SoftMoELayer) if kind.lab_name is not None}
ROUTERS = tuple(FFN_KINDS)
NON_CAUSAL_ROUTERS = tuple(name for name, kind in FFN_KINDS.items() if not kind.causal)
EXPERT_INITS = ("random", "upcycled")
ARCHS = ("nanogpt", "llama")
LAB_ARCH = "llama"  # the body the lab's profiles train; LMConfig's own default stays "nanogpt" (older configs)
IGNORE_INDEX = -100  # targets at this value carry no loss (F.cross_entropy's default)


class NonCausalRouterWarning(UserWarning):
    """A router that mixes tokens across positions was put into a causal LM."""


@dataclass(frozen=True)
class MoESpec:
    """The MoE feed-forward block. Defaults: Mixtral-like top-2 of 8, at the lab's tiny scale."""

    router: str = "topk"            # one of ROUTERS
    num_experts: int = 8            # the lecture's "2 of 8 experts"
    top_k: int = 2                  # experts per token (token-choice routers)
    expert_intermediate: int = 128  # I of each expert: 2·d_model at d_model 64, a small FFN
    shared_experts: int = 0         # DeepSeek-MoE's always-on experts (fused into one MLP)
    shared_intermediate: int = 0    # I of each shared expert; the fused MLP is count · this wide
    capacity_factor: float | None = None  # None: the router's default_capacity_factor (its paper's value)
    slots_per_expert: int | None = None   # Soft MoE; None: top_k·seq_len/num_experts (top-k's expert work)
    n_group: int = 1                # DeepSeek-V3 group-limited routing: off at this scale
    topk_group: int = 1
    bias_update_rate: float = 1e-3  # DeepSeek-V3's γ (the report's value); the lab sets it per run
    temperature: float = 0.07       # cosine router's initial τ (X-MoE)
    normalize_topk: bool = True     # renormalise the k chosen weights (Mixtral)
    balance: str = "switch"         # load-balance convention: E Σ f_i P_i, 1 at balance (Fedus et al.)
    # How the routed experts start: "random" (independent draws, similarity at chance) or
    # "upcycled" (copies of one FFN plus 1% noise, as sparse upcycling starts; see upcycle_experts).
    init: str = "random"
    upcycle_noise: float = 0.01     # upcycled: noise std as a fraction of the copied tensor's std

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}; got router={self.router!r}")
        if self.init not in EXPERT_INITS:
            raise ValueError(f"init must be one of {', '.join(EXPERT_INITS)}; got init={self.init!r}")
        if not self.upcycle_noise >= 0:
            raise ValueError(f"upcycle_noise must be >= 0; got {self.upcycle_noise!r}")
        for name in ("num_experts", "top_k", "expert_intermediate", "n_group", "topk_group"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be <= num_experts={self.num_experts}; got top_k={self.top_k}")
        if self.shared_experts < 0 or (self.shared_experts > 0) != (self.shared_intermediate > 0):
            raise ValueError(f"shared_experts and shared_intermediate must both be > 0 or both 0; got "
                             f"{self.shared_experts} and {self.shared_intermediate}")
        if self.shared_experts and self.router == "soft":
            raise ValueError("router='soft' takes no shared experts (SoftMoELayer has none); set shared_experts=0")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None; got {self.capacity_factor!r}")
        if self.slots_per_expert is not None and self.slots_per_expert < 1:
            raise ValueError(f"slots_per_expert must be >= 1 or None; got {self.slots_per_expert!r}")

    @property
    def capacity(self) -> float | None:
        """The capacity factor in force: ``capacity_factor``, else the router's
        ``default_capacity_factor`` (None for a router without capacity)."""
        if self.capacity_factor is not None:
            return self.capacity_factor
        return getattr(FFN_KINDS[self.router], "default_capacity_factor", None)

    @property
    def causal(self) -> bool:
        """The router's own ``causal`` flag."""
        return FFN_KINDS[self.router].causal


@dataclass(frozen=True)
class LMConfig:
    """The tiny LM. Defaults fit the lab's ``quick`` budget (a few seconds per run on 2 cores)."""

    vocab_size: int = 2048         # the lab tokenizer's default
    d_model: int = 64              # tiny, yet wide enough for 8 experts to differ
    n_layer: int = 2               # two MoE layers: layer-wise routing comparisons need >= 2
    n_head: int = 4                # head size 16
    seq_len: int = 64              # a line of code or a sentence or two of prose
    ffn: str = "moe"               # "dense" or "moe"
    dense_intermediate: int = 256  # the dense FFN's I (ffn="dense"); see dense_equivalent
    moe: MoESpec = field(default_factory=MoESpec)  # the MoE block (ffn="moe"); reset to the default when dense
    bidirectional: bool = False    # attend to all positions (masked-token objective only)
    # The body around the FFN (see the module docstring). "nanogpt" keeps every lab number as
    # measured; "llama" is what transformers' MoE families compute, so its runs export to them.
    arch: str = "nanogpt"
    rope_theta: float = 10_000.0   # llama: RoPE base θ (RoFormer's and Llama 1/2's); unused by nanogpt
    norm_eps: float = 1e-5         # llama: RMSNorm ε (Mixtral's and GLM-4.5's rms_norm_eps); unused by nanogpt

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "seq_len", "dense_intermediate"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.ffn not in ("dense", "moe"):
            raise ValueError(f"ffn must be 'dense' or 'moe'; got ffn={self.ffn!r}")
        if self.ffn == "dense" and self.moe != MoESpec():  # a dense model has no MoE spec: one canonical form
            object.__setattr__(self, "moe", MoESpec())
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got arch={self.arch!r}")
        for name in ("rope_theta", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"{name} must be a positive number; got {name}={v!r}")
        if self.arch == "llama" and (self.d_model // self.n_head) % 2:
            raise ValueError(f"arch='llama' rotates pairs of head dimensions: the head size d_model/n_head="
                             f"{self.d_model // self.n_head} must be even")
        if self.arch == "nanogpt":  # the llama-only knobs take no part: one canonical form
            object.__setattr__(self, "rope_theta", 10_000.0)
            object.__setattr__(self, "norm_eps", 1e-5)

    @property
    def router(self) -> str:
        """``dense`` or the MoE router's name."""
        return "dense" if self.ffn == "dense" else self.moe.router

    @property
    def causal(self) -> bool:
        """True when no position can see a later one (causal attention and a causal FFN)."""
        return not self.bidirectional and (self.ffn == "dense" or self.moe.causal)

    @property
    def slots_per_expert(self) -> int:
        """Soft MoE slots per expert in force: explicit, or enough for top_k experts' work per token."""
        s = self.moe.slots_per_expert
        return s if s is not None else max(1, round(self.moe.top_k * self.seq_len / self.moe.num_experts))

    def to_dict(self) -> dict:
        """The config as plain JSON values. A ``nanogpt`` config writes no ``arch``, ``rope_theta``
        or ``norm_eps``, so its dict (a run's identity, which checkpoints are keyed by) is what it
        was before the llama architecture existed."""
        d = asdict(self)
        if self.ffn == "dense":
            d.pop("moe")
        if self.arch == "nanogpt":
            for name in ("arch", "rope_theta", "norm_eps"):
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        """Inverse of :meth:`to_dict` (e.g. from a checkpoint's ``state.json``)."""
        d = dict(d)
        moe = d.pop("moe", None)
        return cls(**d, moe=MoESpec(**moe) if moe is not None else MoESpec())


# -- modules -------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (causal or not)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_head, self.causal = cfg.n_head, not cfg.bidirectional
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``attn_mask`` (B, 1, T, T) bool, True = may attend."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, C)
        return self.c_proj(y)

    @property
    def out_proj(self) -> nn.Linear:
        """W_o, the (C, C) projection of the concatenated heads (``c_proj``): one name for both archs."""
        return self.c_proj


def rope_cos_sin(T: int, head_dim: int, theta: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    r"""The rotary embedding's (cos, sin), each (T, head_dim) float32, for positions 0 … T-1.

    RoFormer (Su et al. 2021, eq. 34): dimension pair i of a head turns by the angle
    :math:`m\,\theta^{-2i/d}` at position m. In the rotate-half layout of GPT-NeoX and
    transformers' Llama/Mixtral/GLM (``rotate_half``), pair i is (x_i, x_{i+d/2}), so the
    angles ``freqs`` (T, d/2) are repeated once: ``cat(freqs, freqs)``. The inverse
    frequencies are computed as transformers' default RoPE computes them (float32), so an
    exported model sees the same angles to the last bit.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (d/2,)
    freqs = torch.arange(T, device=device).float()[:, None] * inv_freq.to(device)[None, :]           # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)                                                           # (T, d)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, nh, T, hs) rotated by position: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RotaryAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections and RoPE on q and k (Llama's).

    softmax(q kᵀ / sqrt(hs)) v per head through ``F.scaled_dot_product_attention``, q and k
    rotated by :func:`apply_rope` first; no biases, no q/k normalisation, as transformers'
    ``MixtralAttention`` (and ``Glm4MoeAttention`` with ``attention_bias=False``,
    ``use_qk_norm=False`` and a partial rotary factor of 1).
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_head, self.causal = cfg.n_head, not cfg.bidirectional
        d = cfg.d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, attn_mask: Tensor | None, rope: tuple[Tensor, Tensor]) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``attn_mask`` (B, 1, T, T) bool, True = may attend; ``rope``
        the (cos, sin) of :func:`rope_cos_sin`, each (T, hs)."""
        B, T, C = x.shape
        hs = C // self.n_head
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)   # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)   # (B, nh, T, hs)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, C)
        return self.o_proj(y)

    @property
    def out_proj(self) -> nn.Linear:
        """W_o, the (C, C) projection of the concatenated heads (``o_proj``): one name for both archs."""
        return self.o_proj


def build_norm(cfg: LMConfig) -> nn.Module:
    """The block's and the final norm: LayerNorm without bias (nanogpt) or RMSNorm (llama).

    RMSNorm (Zhang & Sennrich 2019, eq. 4): x / sqrt(mean(x²) + ε) · g, with ε = ``norm_eps``
    inside the square root, as transformers' ``MixtralRMSNorm``.
    """
    if cfg.arch == "llama":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, bias=False)


def build_ffn(cfg: LMConfig) -> nn.Module:
    """The feed-forward block of one layer: DenseFFN, MoELayer or SoftMoELayer."""
    d, spec = cfg.d_model, cfg.moe
    if cfg.ffn == "dense":
        return DenseFFN(d, cfg.dense_intermediate)
    experts = Experts(spec.num_experts, d, spec.expert_intermediate)
    kind = FFN_KINDS[spec.router]
    if kind is SoftMoELayer:
        return SoftMoELayer(hidden=d, experts=experts, slots_per_expert=cfg.slots_per_expert)
    router = kind.from_spec(d, spec)  # after the experts, before the shared expert: the seeded draw order
    shared = (SharedExpert(d, spec.shared_experts * spec.shared_intermediate) if spec.shared_experts else None)
    return MoELayer(router=router, experts=experts, shared=shared)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + ffn(ln(x)).

    ``ln`` is LayerNorm and ``attn`` :class:`SelfAttention` (nanogpt), or RMSNorm and
    :class:`RotaryAttention` (llama); built in this order, so a seeded model draws the same
    numbers as before the llama architecture existed.
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln_1 = build_norm(cfg)
        self.attn = RotaryAttention(cfg) if cfg.arch == "llama" else SelfAttention(cfg)
        self.ln_2 = build_norm(cfg)
        self.ffn = build_ffn(cfg)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, token_mask: Tensor | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, RouterResult | None]:
        """x (B, T, C) -> (B, T, C) and this layer's routing (None for a dense FFN).

        ``rope``: the (cos, sin) of :func:`rope_cos_sin` (llama; None for nanogpt).
        """
        h = self.ln_1(x)
        x = x + (self.attn(h, attn_mask) if rope is None else self.attn(h, attn_mask, rope))
        h = self.ln_2(x)
        if isinstance(self.ffn, DenseFFN):
            return x + self.ffn(h), None
        out = self.ffn(h, attention_mask=token_mask)  # MoEOutput over the B·T flattened tokens
        return x + out.hidden, out.routing


@dataclass(frozen=True)
class LMOutput:
    """What :class:`TinyLM` returns.

    Attributes:
        logits: (B, T, V); (N, V) at the N predicted positions with ``logits_at_targets``.
        loss: mean cross entropy over targets != -100 (float32 scalar), None without targets.
        routing: one RouterResult per layer (tokens flattened B·T), None for a dense model.
        aux_losses: auxiliary losses summed over layers, by name (unscaled; empty if dense).
    """

    logits: Tensor
    loss: Tensor | None
    routing: list[RouterResult] | None
    aux_losses: dict[str, Tensor]


class TinyLM(nn.Module):
    """The lab's language model (see the module docstring)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if not cfg.bidirectional and cfg.ffn == "moe" and not cfg.moe.causal:
            warnings.warn(f"router {cfg.moe.router!r} is not causal: in a causal LM each position sees later "
                          "tokens through the FFN; use bidirectional=True with the masked-token objective",
                          NonCausalRouterWarning, stacklevel=2)
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # learned positions (nanogpt); llama rotates q and k by position instead (RotaryAttention)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.arch == "nanogpt" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = build_norm(cfg)
        # nanoGPT's init for embeddings and attention: N(0, 0.02), residual projections scaled by
        # 1/sqrt(2·n_layer). FFNs keep their own init (dense and expert alike: U(±1/sqrt(fan_in))),
        # so dense and MoE runs start their FFNs the same way.
        for m in (self.wte, self.wpe):
            if m is not None:
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for b in self.blocks:
            a = b.attn
            for w in ((a.c_attn.weight,) if cfg.arch == "nanogpt" else (a.q_proj.weight, a.k_proj.weight,
                                                                         a.v_proj.weight)):
                nn.init.normal_(w, mean=0.0, std=0.02)
            nn.init.normal_(a.out_proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.ffn == "moe" and cfg.moe.init == "upcycled":  # after every other draw: the rest stays as "random"
            for layer in self.moe_layers():
                upcycle_experts(layer.experts, noise=cfg.moe.upcycle_noise)

    def moe_layers(self) -> list[nn.Module]:
        """The MoE blocks, layer order (empty for a dense model)."""
        return [b.ffn for b in self.blocks if not isinstance(b.ffn, DenseFFN)]

    def _attention_mask(self, attention_mask: Tensor | None, T: int) -> Tensor | None:
        """(B, T) 1 = real token -> (B, 1, T, T) bool; None when SDPA's own causal flag suffices."""
        if attention_mask is None:
            return None
        allowed = attention_mask.bool()[:, None, None, :]                       # (B, 1, 1, T) keys
        if not self.cfg.bidirectional:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
        return allowed | torch.eye(T, dtype=torch.bool, device=attention_mask.device)  # never an empty row

    def forward(self, idx: Tensor, *, targets: Tensor | None = None,
                attention_mask: Tensor | None = None, logits_at_targets: bool = False) -> LMOutput:
        """idx (B, T) int64 -> LMOutput.

        Args (keyword-only after ``idx``, so a routing recorder never mistakes targets for a mask):
            targets: (B, T) int64 token to predict at each position (the next token for the
                causal objective, the original token at masked positions for the masked one),
                -100 where there is nothing to predict.
            attention_mask: (B, T), 1 = real token, 0 = padding (kept out of attention, of the
                routers' auxiliary losses and of the loss).
            logits_at_targets: apply the output head only where a target is not -100, so
                ``logits`` is (N, V) over those N positions in row-major order and the loss is
                the same mean. The head (a V × d GEMM and a softmax over V per position, forward
                and backward) is most of a tiny LM's step; the masked-token objective predicts
                15% of the positions, so training it this way skips ~85% of that work.
        """
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} exceeds seq_len={self.cfg.seq_len}")
        x = self.wte(idx)                                                         # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            cos, sin = rope_cos_sin(T, self.cfg.d_model // self.cfg.n_head, self.cfg.rope_theta, idx.device)
            rope = (cos.to(x.dtype), sin.to(x.dtype))                             # each (T, hs)
        attn_mask = self._attention_mask(attention_mask, T)
        routing: list[RouterResult] = []
        for block in self.blocks:
            x, r = block(x, attn_mask, attention_mask, rope)
            if r is not None:
                routing.append(r)
        aux: dict[str, Tensor] = {}
        for r in routing:
            for name, value in r.aux_losses.items():
                aux[name] = aux[name] + value if name in aux else value
        if targets is not None and attention_mask is not None:
            targets = targets.masked_fill(attention_mask == 0, IGNORE_INDEX)
        h = self.ln_f(x)                                                          # (B, T, C)
        if logits_at_targets:
            if targets is None:
                raise ValueError("logits_at_targets=True needs targets (the positions to predict)")
            keep = targets.reshape(-1) != IGNORE_INDEX                            # (B·T,)
            h, targets = h.reshape(-1, h.shape[-1])[keep], targets.reshape(-1)[keep]  # (N, C), (N,)
        logits = F.linear(h, self.wte.weight)                                     # (B, T, V) or (N, V), tied head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return LMOutput(logits=logits, loss=loss, routing=routing or None, aux_losses=aux)


@torch.no_grad()
def upcycle_experts(experts: Experts, *, noise: float = 0.01, generator: torch.Generator | None = None) -> None:
    """Make every expert of ``experts`` a copy of expert 0 plus small Gaussian noise, in place.

    Sparse upcycling (Komatsuzaki et al. 2022, "Sparse Upcycling", §2) starts an MoE from a
    dense checkpoint by copying its FFN into every expert, so the experts start (nearly)
    identical and diverge only through routing. Here the copied FFN is expert 0's own random
    initialisation and each tensor W of expert e becomes ``W_0 + ε_e``, ε_e ~ N(0, (noise ·
    std(W_0))²) (expert 0 gets its noise too), so the experts' pairwise similarity starts near
    1 rather than at chance. Draws come from ``generator`` (the global one when None), in a
    fixed order, so a seeded model is reproducible.
    """
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; got noise={noise!r}")
    for bank in (experts.gate_up_proj, experts.down_proj, experts.gate_up_bias, experts.down_bias):
        if bank is None:
            continue
        first = bank[0].clone()                                                   # (2I, H), (H, I) or bias
        scale = noise * float(first.std()) if first.numel() > 1 else 0.0
        eps = torch.randn(bank.shape, generator=generator, dtype=bank.dtype, device=bank.device)
        bank.copy_(first.unsqueeze(0) + scale * eps)                              # (E, ...)


def mask_tokens(idx: Tensor, *, mask_id: int, rate: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The masked-token objective's (inputs, targets) for a batch idx (B, T).

    Exactly ``max(1, round(rate·T))`` positions per row, drawn uniformly without replacement
    from ``generator``, are replaced by ``mask_id`` in the inputs; the targets hold the
    original token there and -100 elsewhere (BERT's 15%, without its 80/10/10 split: every
    chosen position becomes the mask token, in training and evaluation alike).
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1); got rate={rate!r}")
    B, T = idx.shape
    n = max(1, round(rate * T))
    noise = torch.rand(B, T, generator=generator)
    chosen = torch.zeros(B, T, dtype=torch.bool)
    chosen.scatter_(1, noise.topk(n, dim=1).indices, True)                         # (B, T), n per row
    chosen = chosen.to(idx.device)
    return idx.masked_fill(chosen, mask_id), idx.masked_fill(~chosen, IGNORE_INDEX)


# -- parameter accounting ------------------------------------------------------------------------
def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _ffn_params(cfg: LMConfig) -> tuple[int, float]:
    """(total, active per token) parameters of one layer's FFN block (router included).

    Counted on the block :func:`build_ffn` builds, on the meta device (no memory, no random
    draws), so a router's own parameters (centroids, a bias, a temperature) and its expert
    evaluations per token (``mean_experts_per_token``) come from the router itself.
    """
    with torch.device("meta"):
        block = build_ffn(cfg)
    total = _numel(block)
    if isinstance(block, DenseFFN):
        return total, float(total)
    E = block.experts.num_experts
    expert = _numel(block.experts) // E                                        # one SwiGLU expert
    shared = _numel(getattr(block, "shared", None))
    router = total - E * expert - shared                                       # centroids, slots, τ...
    if isinstance(block, SoftMoELayer):
        per_token = E * block.slots_per_expert / cfg.seq_len                   # E·S slots per sequence
    else:
        per_token = block.router.mean_experts_per_token
    return total, router + per_token * expert + shared


def total_params(cfg: LMConfig) -> int:
    """Every parameter of :class:`TinyLM` (buffers such as DeepSeek's selection bias excluded).

    V·d (token embedding = tied output head) + T·d (learned positions; nanogpt only, llama
    has none) + d (final norm) + per layer 2d (norms) + 4d² (qkv and output projections) + the
    FFN block:

    * dense: 3·d·I (SwiGLU gate, up, down);
    * MoE: E·3·d·I_e (experts) + E·d (router centroids; +1 for the cosine router's
      temperature) + 3·d·n_s·I_s (shared experts, fused); Soft MoE: d·E·S slot parameters + 1
      scale instead of centroids.
    """
    d = cfg.d_model
    ffn, _ = _ffn_params(cfg)
    positions = cfg.seq_len * d if cfg.arch == "nanogpt" else 0
    return cfg.vocab_size * d + positions + d + cfg.n_layer * (2 * d + 4 * d * d + ffn)


def active_params_per_token(cfg: LMConfig) -> int:
    """Parameters one token's forward pass multiplies, on average (nearest integer).

    All parameters but the experts a token does not use: :func:`total_params` minus, per layer,
    (E − k_eff) expert MLPs, where k_eff is the expected number of expert evaluations per token:
    k for top-k, DeepSeek-V3 and cosine; 1 for Switch (an upper bound: dropped tokens use none);
    the capacity factor c for Expert Choice (E experts × c·T/E tokens each, over T tokens);
    E·S/seq_len for Soft MoE (E·S slots per sequence of seq_len tokens). Routers, shared experts
    and the tied embedding/head count as active (every token multiplies them). Attention's
    score computation, equal for all models of one d_model and seq_len, is not a parameter
    and is not counted.
    """
    total, active = _ffn_params(cfg)
    return round(total_params(cfg) - cfg.n_layer * (total - active))


def dense_equivalent(cfg: LMConfig, match: str = "active") -> LMConfig:
    """The dense LMConfig whose FFN matches ``cfg``'s active (or total) FFN parameters.

    Everything but the FFN is kept; the dense width is I_d = max(1, round(P / (3·d))) with P
    the MoE block's active-per-token (``match="active"``) or total (``"total"``) parameters per
    layer. Rounding to the nearest integer width leaves |3·d·I_d − P| <= 1.5·d per layer, so
    the dense model's total parameters differ from ``cfg``'s active (or total) count by at most
    1.5·d·n_layer.
    """
    if match not in ("active", "total"):
        raise ValueError(f"match must be 'active' or 'total'; got match={match!r}")
    total, active = _ffn_params(cfg)
    target = active if match == "active" else total
    width = max(1, round(target / (3 * cfg.d_model)))
    return replace(cfg, ffn="dense", dense_intermediate=width)
