r"""Read the MoE layers of a Hugging Face checkpoint from safetensors, one tensor at a time.

Nothing here builds a model: ``config.json`` is read as JSON, the safetensors headers give
every tensor's name, shape and dtype, and a tensor (or one expert's slice of a stacked tensor)
is read only when asked for. Each read opens its file, copies the bytes out and closes it
again, because a ``safe_open`` handle keeps the file memory-mapped and every page touched
stays in the process's resident set until the map is closed (measured: +117 MB of RSS per
14336×4096 bf16 tensor read through one long-lived handle, +0 when reopened per read). So a
pass over a checkpoint larger than RAM holds about one expert at a time.

On-disk layouts: what ``save_pretrained`` of transformers 5.x writes (it converts back to the
hub layout), found by saving tiny models built from the real config classes; the tests in
``tests/analysis/test_weights.py`` re-check them against the live models. Keys are relative
to the layer prefix ``model.layers.{i}`` unless said otherwise; ``{e}`` is the expert number;
``*`` stands for ``gate_proj|up_proj|down_proj``.

mixtral, minimax, phimoe
    router   block_sparse_moe.gate.weight
    experts  block_sparse_moe.experts.{e}.w1|w3|w2.weight          gate | up | down
qwen2_moe
    router   mlp.gate.weight
    experts  mlp.experts.{e}.*.weight
    shared   mlp.shared_expert.*.weight, sigmoid gate mlp.shared_expert_gate.weight (1, H)
qwen3_moe, olmoe
    router   mlp.gate.weight
    experts  mlp.experts.{e}.*.weight
deepseek_v2, deepseek_v3, glm4_moe, dots1 (the first first_k_dense_replace layers are dense)
    router   mlp.gate.weight (+ mlp.gate.e_score_correction_bias (E,), all but v2)
    experts  mlp.experts.{e}.*.weight
    shared   mlp.shared_experts.*.weight                         all n_shared experts in one MLP
ernie4_5_moe
    router   mlp.gate.weight, mlp.moe_statics.e_score_correction_bias (1, E)
    experts  mlp.experts.{e}.*.weight
    shared   mlp.shared_experts.*.weight
hunyuan_v1_moe
    router   mlp.gate.wg.weight
    experts  mlp.experts.{e}.*.weight
    shared   mlp.shared_mlp.*.weight
jamba
    router   feed_forward.router.weight
    experts  feed_forward.experts.{e}.*.weight
llama4, llama4_text (prefix [language_model.]model.layers.{i})
    router   feed_forward.router.weight                          sigmoid scoring
    experts  feed_forward.experts.gate_up_proj (E, H, 2I)        columns [gate | up] (halves)
             feed_forward.experts.down_proj (E, I, H)
    shared   feed_forward.shared_expert.*.weight
gpt_oss
    router   mlp.router.weight, mlp.router.bias
    experts  mlp.experts.gate_up_proj (E, H, 2I)                 gate in even, up in odd columns
             mlp.experts.down_proj (E, I, H), *_bias             hub files are MXFP4 *_blocks/*_scales
granitemoe, granitemoeshared
    router   block_sparse_moe.router.layer.weight
    experts  block_sparse_moe.input_linear.weight (E, 2I, H)     rows [gate; up] (halves)
             block_sparse_moe.output_linear.weight (E, H, I)
    shared   shared_mlp.input_linear.weight (2I, H), shared_mlp.output_linear.weight (granitemoeshared)
switch_transformers (prefixes encoder.block.{i}.layer.1 and decoder.block.{i}.layer.2)
    router   mlp.router.classifier.weight (+ .bias with router_bias)
    experts  mlp.experts.expert_{e}.wi|wo.weight                 up | down; ReLU, no gate

A layer is an MoE layer when its router key exists, so dense layers (DeepSeek's first
``first_k_dense_replace``, Switch's dense blocks, Llama 4 Maverick's interleaved dense
layers) are skipped without a rule per family. Quantised checkpoints (GPT-OSS MXFP4
``*_blocks``/``*_scales``, DeepSeek-V3 FP8 ``weight_scale_inv``, GPTQ/AWQ/bitsandbytes) are
refused with a clear error: their geometry would be that of the quantisation grid.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from moescope.models.view import ExpertWeights, MoELayerView

__all__ = ["LAYOUTS", "CheckpointError", "DiskMoELayer", "MoECheckpoint", "open_checkpoint", "write_safetensors"]

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_QUANT_SUFFIXES = ("_blocks", "_scales", "weight_scale_inv", "weight_scale", ".qweight", ".qzeros", ".scales",
                   ".absmax", ".SCB", ".quant_state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: no weights, corrupt files, unknown or quantised layout."""


# --------------------------------------------------------------------------- layouts


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
class Layout:
    """Where one family keeps its MoE weights; keys are relative to the layer prefix."""

    layers: tuple[str, ...]                 # regexes of layer prefixes; group 1 = block number
    router: str
    experts: Separate | Stacked
    shared: tuple[Separate | Fused, ...] = ()
    shared_gate: str | None = None          # Qwen2-MoE's sigmoid gate of the shared expert, (1, H)
    router_bias: str | None = None          # added to the logits (GPT-OSS, Switch with router_bias)
    selection_bias: str | None = None       # used only to pick experts (DeepSeek-V3 family)
    scoring: str = "softmax"
    top_k: tuple[str, ...] = ("num_experts_per_tok",)  # config keys, first present wins


_DECODER = (r"model\.layers\.(\d+)",)
def _glu(module: str, experts: str = "experts.{e}") -> Separate:
    base = f"{module}.{experts}" if experts else module
    return Separate(gate=f"{base}.gate_proj.weight", up=f"{base}.up_proj.weight", down=f"{base}.down_proj.weight")


_W13 = Separate(gate="block_sparse_moe.experts.{e}.w1.weight", up="block_sparse_moe.experts.{e}.w3.weight",
                down="block_sparse_moe.experts.{e}.w2.weight")
_DEEPSEEK = Layout(_DECODER, "mlp.gate.weight", _glu("mlp"), shared=(_glu("mlp.shared_experts", ""),),
                   selection_bias="mlp.gate.e_score_correction_bias", scoring="sigmoid")
_GRANITE = Stacked("block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight")
_LLAMA4 = Layout((r"(?:language_model\.model|model\.language_model|model)\.layers\.(\d+)",),
                 "feed_forward.router.weight",
                 Stacked("feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj", hidden_first=True),
                 shared=(_glu("feed_forward.shared_expert", ""),), scoring="sigmoid")

LAYOUTS: dict[str, Layout] = {
    "mixtral": Layout(_DECODER, "block_sparse_moe.gate.weight", _W13),
    "minimax": Layout(_DECODER, "block_sparse_moe.gate.weight", _W13),
    "phimoe": Layout(_DECODER, "block_sparse_moe.gate.weight", _W13),
    "qwen2_moe": Layout(_DECODER, "mlp.gate.weight", _glu("mlp"), shared=(_glu("mlp.shared_expert", ""),),
                        shared_gate="mlp.shared_expert_gate.weight"),
    "qwen3_moe": Layout(_DECODER, "mlp.gate.weight", _glu("mlp")),
    "olmoe": Layout(_DECODER, "mlp.gate.weight", _glu("mlp")),
    "deepseek_v2": Layout(_DECODER, "mlp.gate.weight", _glu("mlp"), shared=(_glu("mlp.shared_experts", ""),)),
    "deepseek_v3": _DEEPSEEK,
    "glm4_moe": _DEEPSEEK,
    "dots1": _DEEPSEEK,
    "ernie4_5_moe": Layout(_DECODER, "mlp.gate.weight", _glu("mlp"), shared=(_glu("mlp.shared_experts", ""),),
                           selection_bias="mlp.moe_statics.e_score_correction_bias", top_k=("moe_k",)),
    "hunyuan_v1_moe": Layout(_DECODER, "mlp.gate.wg.weight", _glu("mlp"), shared=(_glu("mlp.shared_mlp", ""),),
                             top_k=("moe_topk",)),
    "jamba": Layout(_DECODER, "feed_forward.router.weight", _glu("feed_forward")),
    "llama4": _LLAMA4,
    "llama4_text": _LLAMA4,
    "gpt_oss": Layout(_DECODER, "mlp.router.weight",
                      Stacked("mlp.experts.gate_up_proj", "mlp.experts.down_proj", hidden_first=True, interleaved=True),
                      router_bias="mlp.router.bias"),
    "granitemoe": Layout(_DECODER, "block_sparse_moe.router.layer.weight", _GRANITE),
    "granitemoeshared": Layout(_DECODER, "block_sparse_moe.router.layer.weight", _GRANITE,
                               shared=(Fused("shared_mlp.input_linear.weight", "shared_mlp.output_linear.weight"),)),
    "switch_transformers": Layout((r"encoder\.block\.(\d+)\.layer\.1", r"decoder\.block\.(\d+)\.layer\.2"),
                                  "mlp.router.classifier.weight",
                                  Separate(up="mlp.experts.expert_{e}.wi.weight",
                                           down="mlp.experts.expert_{e}.wo.weight"),
                                  router_bias="mlp.router.classifier.bias", top_k=()),
}


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _read_header(file: Path) -> dict[str, TensorInfo]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: TensorInfo(file, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                    for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read safetensors file {file}: {err} (corrupt or truncated?)") from err


def _weight_files(root: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the index's shards, else model*.safetensors."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map'): {err}") from err
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("model*.safetensors")) or sorted(root.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in root.iterdir())[:12]
        hint = " (PyTorch .bin weights are not read; convert them to safetensors)" if any(
            n.endswith(".bin") for n in found) else ""
        raise FileNotFoundError(f"no *.safetensors weights in {root}; found: {', '.join(found) or 'nothing'}{hint}")
    return files


def _text_config(config: dict) -> dict:
    """The language model's config: multimodal wrappers (Llama 4) nest it under ``text_config``."""
    text = config.get("text_config")
    return {**text, "model_type": config["model_type"]} if isinstance(text, dict) else config


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class DiskMoELayer:
    """One MoE layer of a checkpoint on disk; every accessor reads what it returns from disk.

    Attributes:
        name: the layer prefix on disk (``model.layers.3``, ``decoder.block.5.layer.2``).
        index: position among the checkpoint's MoE layers (0-based), as in ``MoELayerView``.
        block: the transformer block number in the prefix.
        num_experts, hidden: E and H, from the router's shape.
        num_shared: number of shared-expert MLPs (DeepSeek's n_shared_experts are one MLP).
    """

    name: str
    index: int
    block: int
    num_experts: int
    hidden: int
    num_shared: int
    ckpt: MoECheckpoint = field(repr=False)

    def _key(self, rel: str, e: int | None = None) -> str:
        return f"{self.name}.{rel.format(e=e)}"

    def router_weight(self) -> Tensor:
        """(E, H) router matrix in its stored dtype; row e is expert e's centroid."""
        return self.ckpt.read(self._key(self.ckpt.layout.router))

    def _optional(self, rel: str | None) -> Tensor | None:
        if rel is None or self._key(rel) not in self.ckpt.tensors:
            return None
        return self.ckpt.read(self._key(rel)).reshape(-1)

    def router_bias(self) -> Tensor | None:
        return self._optional(self.ckpt.layout.router_bias)

    def selection_bias(self) -> Tensor | None:
        return self._optional(self.ckpt.layout.selection_bias)

    def input_projection(self, e: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """(2I | I, H): routed expert e's rows that read the token, [gate; up] (up alone if ungated)."""
        return self._input(self.ckpt.layout.experts, e, dtype)

    def shared_input_projection(self, j: int = 0, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """(2I_s, H): shared expert j's [gate; up]."""
        return self._input(self._shared_spec(j), None, dtype)

    def expert(self, e: int) -> ExpertWeights:
        """Routed expert e in moescope's orientation: gate (I, H), up (I, H), down (H, I)."""
        spec = self.ckpt.layout.experts
        return self._weights(spec, e)

    def shared(self, j: int = 0) -> ExpertWeights:
        return self._weights(self._shared_spec(j), None)

    def shared_gate(self) -> Tensor | None:
        """(1, H) Qwen2-MoE shared-expert gate, or None."""
        rel = self.ckpt.layout.shared_gate
        return None if rel is None or self._key(rel) not in self.ckpt.tensors else self.ckpt.read(self._key(rel))

    def _shared_spec(self, j: int) -> Separate | Fused:
        if not 0 <= j < self.num_shared:
            raise ValueError(f"shared expert j must lie in [0, {self.num_shared}); got j={j}")
        return self.ckpt.layout.shared[j]

    def _split(self, spec: Stacked | Fused, e: int | None) -> tuple[Tensor, Tensor]:
        """(gate, up), each (I, H), from a stacked or fused tensor (one expert's slice only)."""
        both = self.ckpt.read(self._key(spec.gate_up), e)
        if isinstance(spec, Stacked) and spec.hidden_first:
            both = both.T                                           # (H, 2I) -> (2I, H)
        if isinstance(spec, Stacked) and spec.interleaved:
            return both[0::2], both[1::2]
        half = both.shape[0] // 2
        return both[:half], both[half:]

    def _input(self, spec: Separate | Stacked | Fused, e: int | None, dtype: torch.dtype) -> Tensor:
        if isinstance(spec, Separate):
            if spec.gate is None:
                return self.ckpt.read(self._key(spec.up, e)).to(dtype)
            # Fill one float buffer matrix by matrix so that only one stored-dtype copy is alive.
            gate_shape = self.ckpt.tensors[self._key(spec.gate, e)].shape
            up_shape = self.ckpt.tensors[self._key(spec.up, e)].shape
            out = torch.empty(gate_shape[0] + up_shape[0], gate_shape[1], dtype=dtype)
            out[: gate_shape[0]].copy_(self.ckpt.read(self._key(spec.gate, e)))
            out[gate_shape[0]:].copy_(self.ckpt.read(self._key(spec.up, e)))
            return out
        gate, up = self._split(spec, e)
        return torch.cat([gate.to(dtype), up.to(dtype)])

    def _weights(self, spec: Separate | Stacked | Fused, e: int | None) -> ExpertWeights:
        if isinstance(spec, Separate):
            gate = None if spec.gate is None else self.ckpt.read(self._key(spec.gate, e))
            return ExpertWeights(up=self.ckpt.read(self._key(spec.up, e)),
                                 down=self.ckpt.read(self._key(spec.down, e)), gate=gate)
        gate, up = self._split(spec, e)
        down = self.ckpt.read(self._key(spec.down), e)
        if isinstance(spec, Stacked) and spec.hidden_first:
            down = down.T                                           # (I, H) -> (H, I)
        return ExpertWeights(up=up.contiguous(), down=down.contiguous(), gate=gate.contiguous())

    def view(self) -> MoELayerView:
        """This layer as a :class:`MoELayerView` whose expert accessors read from disk."""
        layout, cfg = self.ckpt.layout, self.ckpt.config
        top_k = next((cfg[k] for k in layout.top_k if cfg.get(k) is not None), 1)
        top_k = int(top_k[self.index] if isinstance(top_k, list) else top_k)
        grouped = layout.selection_bias is not None
        return MoELayerView(
            name=self.name, index=self.index, family=self.ckpt.model_type, num_experts=self.num_experts,
            top_k=top_k, scoring=layout.scoring, router_weight=self.router_weight(),
            expert=self.expert, router_bias=self.router_bias(), selection_bias=self.selection_bias(),
            n_group=int(cfg.get("n_group") or 1) if grouped else 1,
            topk_group=int(cfg.get("topk_group") or 1) if grouped else 1,
            shared=tuple((lambda j=j: self.shared(j)) for j in range(self.num_shared)),
        )


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True, eq=False)
class MoECheckpoint:
    """A checkpoint directory's config, tensor table and MoE layers (no tensor data held)."""

    path: Path
    config: dict
    model_type: str
    layout: Layout
    tensors: dict[str, TensorInfo] = field(repr=False)
    layers: tuple[DiskMoELayer, ...] = ()

    def read(self, key: str, index: int | None = None) -> Tensor:
        """Tensor ``key`` (or its slice ``[index]``) copied out of its file; the file is closed again."""
        info = self.tensors.get(key)
        if info is None:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint at {self.path}")
        _check_dtype(key, info)
        try:
            with safe_open(str(info.file), framework="pt") as f:
                t = f.get_tensor(key) if index is None else f.get_slice(key)[index: index + 1][0]
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read tensor {key!r} from {info.file}: {err}") from err
        return t

    def layer(self, index: int) -> DiskMoELayer:
        return self.layers[index]


def _check_dtype(key: str, info: TensorInfo) -> None:
    if info.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"tensor {key!r} has dtype {info.dtype}: quantised or integer weights are not "
                              f"supported (need one of {', '.join(FLOAT_DTYPES)}); dequantise the checkpoint first")


def _refuse_quantised(config: dict, tensors: dict[str, TensorInfo], root: Path) -> None:
    quant = config.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        raise CheckpointError(f"{root} holds quantised weights (quantization_config quant_method={method!r}); "
                              "quantised weights are not supported: dequantise to bf16/fp32 first "
                              "(e.g. load with transformers and save_pretrained)")
    odd = next((k for k in tensors if k.endswith(_QUANT_SUFFIXES)), None)
    if odd is not None:
        raise CheckpointError(f"{root} holds quantised weights (e.g. tensor {odd!r}); quantised weights are not "
                              "supported: dequantise to bf16/fp32 first")


def open_checkpoint(path: str | Path) -> MoECheckpoint:
    """Read the config and safetensors headers of a checkpoint directory and find its MoE layers.

    Args:
        path: a directory with ``config.json`` and ``model.safetensors`` or shards listed in
            ``model.safetensors.index.json``; or one ``.safetensors`` file beside a ``config.json``.

    Raises:
        FileNotFoundError: no such path, no config.json, or no safetensors weights.
        CheckpointError (a ValueError): corrupt files, unsupported model_type (the message lists
            the supported ones), quantised weights, no MoE layer, or an expert tensor missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    root, files = (path.parent, [path]) if path.is_file() else (path, None)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {root}: a Hugging Face checkpoint directory is needed")
    try:
        config = _text_config(json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {err}") from err
    model_type = config.get("model_type")
    if model_type not in LAYOUTS:
        raise CheckpointError(f"model_type {model_type!r} in {cfg_file} is not a supported MoE family; "
                              f"supported model types: {', '.join(sorted(LAYOUTS))}")
    layout = LAYOUTS[model_type]
    tensors: dict[str, TensorInfo] = {}
    for file in files or _weight_files(root):
        tensors.update(_read_header(file))
    _refuse_quantised(config, tensors, root)
    ckpt = MoECheckpoint(root, config, model_type, layout, tensors)
    layers = _find_layers(ckpt)
    object.__setattr__(ckpt, "layers", layers)
    return ckpt


def _find_layers(ckpt: MoECheckpoint) -> tuple[DiskMoELayer, ...]:
    layout = ckpt.layout
    router = re.escape(layout.router)
    found: list[tuple[int, int, str]] = []
    for order, pattern in enumerate(layout.layers):
        rx = re.compile(rf"^({pattern})\.{router}$")
        for key in ckpt.tensors:
            m = rx.match(key)
            if m:
                found.append((order, int(m.group(2)), m.group(1)))
    if not found:
        raise CheckpointError(f"found no MoE layer in {ckpt.path}: no tensor named like "
                              f"{layout.layers[0]}.{layout.router} (is this a dense model?)")
    layers = []
    for index, (_, block, prefix) in enumerate(sorted(found)):
        shape = ckpt.tensors[f"{prefix}.{layout.router}"].shape
        if len(shape) != 2:
            raise CheckpointError(f"router {prefix}.{layout.router} must be (E, H); got shape {shape}")
        num_shared = sum(1 for s in layout.shared if f"{prefix}.{s.down}" in ckpt.tensors)
        layer = DiskMoELayer(prefix, index, block, shape[0], shape[1], num_shared, ckpt)
        _check_experts(layer)
        layers.append(layer)
    return tuple(layers)


def _check_experts(layer: DiskMoELayer) -> None:
    """Every expert tensor the layout names must exist, be floating point and read the hidden size."""
    spec = layer.ckpt.layout.experts
    if isinstance(spec, Separate):
        keys = [layer._key(k, e) for e in range(layer.num_experts) for k in (spec.gate, spec.up) if k]
    else:
        keys = [layer._key(spec.gate_up)]
    for key in keys:
        info = layer.ckpt.tensors.get(key)
        if info is None:
            raise CheckpointError(f"MoE layer {layer.name} has a router with {layer.num_experts} experts but "
                                  f"tensor {key!r} is missing")
        _check_dtype(key, info)
        hidden_axis = -2 if isinstance(spec, Stacked) and spec.hidden_first else -1
        if info.shape[hidden_axis] != layer.hidden:
            raise CheckpointError(f"tensor {key!r} has shape {info.shape}; expected hidden size {layer.hidden} "
                                  f"(from the router) on axis {hidden_axis}")


# --------------------------------------------------------------------------- writing


_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path: str | Path, specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                      make: Callable[[str], Tensor]) -> int:
    """Write a safetensors file tensor by tensor, holding one tensor in memory at a time.

    ``safetensors.torch.save_file`` needs every tensor at once; this writes the header from
    ``specs`` first (format: u64 little-endian header length, JSON header padded to 8 bytes,
    then the raw little-endian data in header order; https://github.com/huggingface/safetensors),
    then calls ``make(name)`` for each tensor in turn and streams its bytes.

    Args:
        path: the file to write.
        specs: (name, shape, dtype) per tensor, in file order; dtype among float64/32/16, bfloat16.
        make: returns the tensor ``name`` (checked against its spec).

    Returns:
        the file size in bytes.
    """
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype of {name!r} must be one of {list(_DTYPE_NAMES)}; got {dtype}")
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype in specs:
            t = make(name)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"make({name!r}) returned {tuple(t.shape)} {t.dtype}; the spec says {shape} {dtype}")
            f.write(t.detach().cpu().contiguous().view(torch.uint8).numpy().data)
            del t
    return 8 + len(blob) + offset
