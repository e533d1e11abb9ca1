"""Where a family keeps its MoE weights in a checkpoint's safetensors files.

A :class:`Layout` names, relative to a layer prefix such as ``model.layers.{i}``, the router
tensor, the experts (one tensor per expert and matrix, :class:`Separate`; all experts in one
tensor, :class:`Stacked`) and the shared experts, plus the router's biases and scoring.
:mod:`moescope.analysis.checkpoint` reads a checkpoint through it without building the model;
each family file in :mod:`moescope.models.families` declares its own.

Layouts describe what ``save_pretrained`` of transformers 5.x writes (it converts back to the
hub layout), found by saving tiny models built from the real config classes; the tests re-check
every family's layout against its live model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Separate:
    """One (out, in) tensor per matrix; ``{e}`` in a key is the expert number (absent for a single MLP)."""

    up: str
    down: str
    gate: str | None = None


@dataclass(frozen=True)
class Stacked:
    """All experts in one tensor per projection.

    ``hidden_first=False``: gate_up (E, 2I, H), down (E, H, I) (Granite, transformers' live layout);
    ``hidden_first=True``: gate_up (E, H, 2I), down (E, I, H) (Llama 4, GPT-OSS).
    ``interleaved``: gate in the even, up in the odd rows/columns (GPT-OSS) instead of halves.
    """

    gate_up: str
    down: str
    hidden_first: bool = False
    interleaved: bool = False


@dataclass(frozen=True)
class Fused:
    """A single MLP whose gate and up projections are the two halves of one (2I, H) tensor."""

    gate_up: str
    down: str


@dataclass(frozen=True)
class Flat:
    """All experts of one matrix in a single (E·I, H) tensor, expert e in rows [e·I, (e+1)·I) (DBRX).

    Every matrix is stored (rows, H): ``gate`` and ``up`` are moescope's orientation, ``down``
    is transposed (expert e's down projection is its rows, transposed to (H, I)).
    """

    gate: str
    up: str
    down: str


@dataclass(frozen=True)
class Layout:
    """Where one family keeps its MoE weights; keys are relative to the layer prefix."""

    layers: tuple[str, ...]                 # regexes of layer prefixes; group 1 = block number
    router: str
    experts: Separate | Stacked | Flat
    shared: tuple[Separate | Fused, ...] = ()
    shared_gate: str | None = None          # Qwen2-MoE's sigmoid gate of the shared expert, (1, H)
    router_bias: str | None = None          # added to the logits (GPT-OSS, Switch with router_bias)
    selection_bias: str | tuple[str, ...] | None = None  # used only to pick experts (DeepSeek-V3 family);
                                                          # several names: the first present is read
    scoring: str = "softmax"
    scoring_key: str | None = None          # config key naming the scoring when a family lets it vary
    top_k: tuple[str, ...] = ("num_experts_per_tok",)  # config keys, first present wins
    n_group: tuple[str, ...] = ("n_group",)            # config keys of the number of expert groups
    topk_group: tuple[str, ...] = ("topk_group",)      # config keys of the groups kept per token


#: The layer prefix of a decoder-only model: ``model.layers.{i}``.
DECODER = (r"model\.layers\.(\d+)",)


def glu(module: str, experts: str = "experts.{e}") -> Separate:
    """Hugging Face gated MLP naming (``gate_proj``/``up_proj``/``down_proj``) under ``module``.

    ``experts`` is the per-expert sub-path (``""``: ``module`` is one MLP, e.g. a shared expert).
    """
    base = f"{module}.{experts}" if experts else module
    return Separate(gate=f"{base}.gate_proj.weight", up=f"{base}.up_proj.weight", down=f"{base}.down_proj.weight")
