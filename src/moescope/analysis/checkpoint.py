r"""Read the MoE layers of a Hugging Face checkpoint from safetensors, one tensor at a time.

Nothing here builds a model: ``config.json`` is read as JSON, the safetensors headers give
every tensor's name, shape and dtype, and a tensor (or one expert's slice of a stacked tensor)
is read only when asked for. Each read opens its file, copies the bytes out and closes it
again, because a ``safe_open`` handle keeps the file memory-mapped and every page touched
stays in the process's resident set until the map is closed (measured: +117 MB of RSS per
14336×4096 bf16 tensor read through one long-lived handle, +0 when reopened per read). So a
pass over a checkpoint larger than RAM holds about one expert at a time.

Where the MoE weights lie is each family's :class:`~moescope.models.layout.Layout`, declared in
its file in :mod:`moescope.models.families` beside the live adapter and checked against the live
model by the tests; :data:`LAYOUTS` (``model_type`` -> layout) is derived from that registry. A
layout names, relative to a layer prefix such as ``model.layers.{i}``, the router tensor, the
experts (one tensor per expert and matrix, or all experts stacked in one tensor, transposed or
with gate and up interleaved) and the shared experts, plus the router's biases and scoring.

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

from moescope.models.families import BY_MODEL_TYPE
from moescope.models.layout import Flat, Fused, Layout, Separate, Stacked
from moescope.models.shards import weight_files
from moescope.models.view import SCORINGS, ExpertWeights, MoELayerView

__all__ = ["LAYOUTS", "CheckpointError", "DiskMoELayer", "MoECheckpoint", "open_checkpoint", "write_safetensors"]

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_QUANT_SUFFIXES = ("_blocks", "_scales", "weight_scale_inv", "weight_scale", ".qweight", ".qzeros", ".scales",
                   ".absmax", ".SCB", ".quant_state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: no weights, corrupt files, unknown or quantised layout."""


# --------------------------------------------------------------------------- layouts


#: config ``model_type`` -> where that family keeps its MoE weights (derived from the registry).
LAYOUTS: dict[str, Layout] = {t: f.layout for t, f in BY_MODEL_TYPE.items()}


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


def _config_get(config: dict, dotted: str):
    """``config["a"]["b"]`` for ``"a.b"`` (DBRX nests k under ``ffn_config``), or None."""
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _first(config: dict, keys: tuple[str, ...], default):
    """The value of the first of ``keys`` (dotted paths allowed) present and not None in ``config``."""
    return next((v for v in (_config_get(config, k) for k in keys) if v is not None), default)


def _scoring(config: dict, layout: Layout) -> str:
    """The layout's scoring, or the config's own choice where the family lets it vary (checked)."""
    if layout.scoring_key is None or config.get(layout.scoring_key) is None:
        return layout.scoring
    value = config[layout.scoring_key]
    if value not in SCORINGS:
        raise CheckpointError(f"config {layout.scoring_key}={value!r} is not a scoring moescope reads; "
                              f"known: {', '.join(SCORINGS)}")
    return value


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
        names = self.ckpt.layout.selection_bias
        for rel in (names,) if names is None or isinstance(names, str) else names:
            found = self._optional(rel)
            if found is not None:
                return found
        return None

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

    def _rows(self, rel: str, e: int) -> Tensor:
        """Expert e's rows [e·n, (e+1)·n) of a Flat (E·n, H) tensor; only those rows are read."""
        key = self._key(rel)
        n = self.ckpt.tensors[key].shape[0] // self.num_experts
        return self.ckpt.read(key, rows=slice(e * n, (e + 1) * n))

    def _input(self, spec: Separate | Stacked | Fused | Flat, e: int | None, dtype: torch.dtype) -> Tensor:
        if isinstance(spec, Flat):
            return torch.cat([self._rows(spec.gate, e).to(dtype), self._rows(spec.up, e).to(dtype)])
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

    def _weights(self, spec: Separate | Stacked | Fused | Flat, e: int | None) -> ExpertWeights:
        if isinstance(spec, Flat):                                   # down stored transposed: (I, H) -> (H, I)
            return ExpertWeights(up=self._rows(spec.up, e), down=self._rows(spec.down, e).T.contiguous(),
                                 gate=self._rows(spec.gate, e))
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
        top_k = _first(cfg, layout.top_k, 1)
        top_k = int(top_k[self.index] if isinstance(top_k, list) else top_k)
        grouped = layout.selection_bias is not None
        return MoELayerView(
            name=self.name, index=self.index, family=self.ckpt.model_type, num_experts=self.num_experts,
            top_k=top_k, scoring=_scoring(cfg, layout), router_weight=self.router_weight(),
            expert=self.expert, router_bias=self.router_bias(), selection_bias=self.selection_bias(),
            n_group=int(_first(cfg, layout.n_group, 1) or 1) if grouped else 1,
            topk_group=int(_first(cfg, layout.topk_group, 1) or 1) if grouped else 1,
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

    def read(self, key: str, index: int | None = None, rows: slice | None = None) -> Tensor:
        """Tensor ``key`` (or its slice ``[index]``) copied out of its file; the file is closed again."""
        info = self.tensors.get(key)
        if info is None:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint at {self.path}")
        _check_dtype(key, info)
        try:
            with safe_open(str(info.file), framework="pt") as f:
                if rows is not None:
                    t = f.get_slice(key)[rows.start: rows.stop]
                else:
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
    for file in files or weight_files(root, error=CheckpointError):
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
    if isinstance(spec, Flat):
        keys = [layer._key(k) for k in (spec.gate, spec.up, spec.down)]
        for key in keys:
            info = layer.ckpt.tensors.get(key)
            if info is not None and (len(info.shape) != 2 or info.shape[0] % layer.num_experts):
                raise CheckpointError(f"tensor {key!r} has shape {info.shape}; expected (E·I, H) with "
                                      f"E = {layer.num_experts} (from the router)")
    elif isinstance(spec, Separate):
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
