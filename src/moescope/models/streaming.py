r"""Layer-streamed models: the checkpoint's own forward, with one decoder layer's weights resident.

``stream_moe_model(path)`` returns what :func:`~moescope.models.loading.load_moe_model` returns,
``(model, tokenizer | None, views)``, but the model holds only what lies outside its repeated
decoder layers (embeddings, final norm, head, rotary tables). Every decoder layer stays on the
``meta`` device until its forward starts:

1. the skeleton is built the way ``from_pretrained`` builds it (the class's own init context:
   ``meta`` device, compute dtype), so the model is exactly transformers' class;
2. the decoder layers are the ``nn.ModuleList`` holding the MoE blocks that
   :func:`~moescope.models.adapters.find_moe_layers` finds (the outermost one, so that Switch's
   ``encoder.block`` wins over each block's ``layer`` list);
3. every checkpoint key is renamed with transformers' own weight conversions
   (``get_model_conversion_mapping``: Mixtral's ``experts.{e}.w1`` -> the fused ``gate_up_proj``,
   ...) and grouped by the layer its target lies in; keys whose target the model lacks (an MTP
   head, Switch's decoder) are never read;
4. everything outside the layers is loaded once through transformers'
   ``convert_and_load_state_dict_in_model``; non-persistent buffers (rotary ``inv_freq``), which no
   checkpoint holds, are recomputed by the model's own ``initialize_weights`` as ``from_pretrained``
   does, with every still-``meta`` layer tensor marked initialised so that nothing else is touched;
5. a forward pre-hook on layer *i* reads exactly that layer's tensors (``pread``, no memory map,
   so no page of the file stays in the resident set), converts them with the same machinery into
   the compute dtype and assigns them; a forward hook (``always_call``) puts the original ``meta``
   tensors back, which frees the weights; and ``posix_fadvise(WILLNEED)`` on layer *i + 1*'s byte
   ranges lets the kernel read it into the page cache while layer *i* computes — a read-ahead, not
   a second resident copy.

The :class:`~moescope.models.recorder.RoutingRecorder` hooks fire inside the layer's forward, while
its weights are resident, so recording works unchanged; the views' weight tensors are ``meta``
(their shapes are right, their values are not there: weight geometry is read from the safetensors
files by :mod:`moescope.analysis.checkpoint` instead).

Every forward reads every layer again: analyse many tokens per forward (large batches) so that
the reads are amortised; the page cache makes a re-read of a checkpoint that fits in RAM cheap.

**Memory.** :func:`memory_plan` says, from the safetensors headers and a ``meta`` skeleton, what the
in-memory and the streamed paths need (:class:`MemoryPlan`) and :func:`~moescope.models.sizes.parse_size` reads a budget
such as ``"4GB"``; :meth:`MemoryPlan.decide` picks the path for a budget or refuses it naming the
smallest budget this checkpoint can be streamed in.

This module drives private parts of transformers 5 (``core_model_loading``, ``PreTrainedModel``
loading helpers); ``tests/models/test_streaming.py`` checks it on every family's tiny checkpoint,
so a transformers release that moves them fails there first.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moescope.models.adapters import find_moe_layers
from moescope.models.family import Family
from moescope.models.fused_fill import fill_fused_op, filling
from moescope.models.loading import _auto_class, _check_dir, _check_weights, _family, load_tokenizer
from moescope.models.memory import bound_allocators
from moescope.models.shards import read_header, weight_files
from moescope.models.sizes import format_size, parse_size
from moescope.models.view import MoELayerView

__all__ = ["LayerStreamer", "MemoryPlan", "StreamingError", "decoder_layers", "memory_plan", "read_moe_model",
           "stream_moe_model"]


class StreamingError(ValueError):
    """A checkpoint that cannot be streamed layer by layer, or a memory budget it cannot meet."""


# --------------------------------------------------------------------------- shards

# safetensors dtype -> bytes per element (https://github.com/huggingface/safetensors, format)
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATING = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class ShardTensor:
    """Where one tensor lies: its file and absolute byte range ``[start, end)``, dtype and shape."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _weight_files(root: Path) -> list[Path]:
    """The checkpoint's safetensors files (:func:`moescope.models.shards.weight_files`); streaming reads
    safetensors only."""
    try:
        return weight_files(root, error=StreamingError)
    except FileNotFoundError as err:
        raise StreamingError(f"layer streaming reads safetensors only: {err}") from None


def _tensor_table(root: Path) -> dict[str, ShardTensor]:
    """Every tensor of the checkpoint in ``root`` -> where it lies (headers only; no tensor is read)."""
    table: dict[str, ShardTensor] = {}
    for file in _weight_files(root):
        size = file.stat().st_size
        header, data = read_header(file, error=StreamingError)
        for key, meta in header.items():
            start, end = meta["data_offsets"]
            if data + end > size:
                raise StreamingError(f"truncated safetensors file {file}: tensor {key!r} ends past the file")
            table[key] = ShardTensor(file, meta["dtype"], tuple(meta["shape"]), data + start, data + end)
    return table


# --------------------------------------------------------------------------- skeleton


def _skeleton(path: Path, family: Family, dtype: torch.dtype) -> nn.Module:
    """The model class ``from_pretrained`` would build, on the meta device in ``dtype``, no weight read."""
    from transformers import AutoConfig
    from transformers.modeling_utils import ContextManagers
    from transformers.monkey_patching import patch_output_recorders

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    cls = _auto_class(family)
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is not None:  # an Auto* class: the concrete class for this config
        from transformers.models.auto.auto_factory import _get_model_class

        cls = _get_model_class(config, mapping)
    config.dtype = dtype
    for sub in getattr(config, "sub_configs", {}):
        if getattr(config, sub, None) is not None:
            getattr(config, sub).dtype = dtype
    with ContextManagers(cls.get_init_context(dtype, False, False, None)):
        model = cls(config)
        patch_output_recorders(model)
    return model


def decoder_layers(model: nn.Module, views: list[MoELayerView] | None = None) -> tuple[str, nn.ModuleList]:
    """``(dotted path, ModuleList)`` of the repeated decoder layers that hold ``model``'s MoE blocks.

    The outermost ``nn.ModuleList`` above the first MoE block (Switch: ``encoder.block``, not the
    block's own ``layer`` list); every other MoE block must lie in the same list.
    """
    views = find_moe_layers(model) if views is None else views
    modules = dict(model.named_modules())
    found = None
    parts = views[0].name.split(".")
    for k in range(1, len(parts)):
        if isinstance(modules.get(".".join(parts[:k])), nn.ModuleList) and parts[k].isdigit():
            found = ".".join(parts[:k])
            break
    if found is None:
        raise StreamingError(f"{type(model).__name__}: the MoE block {views[0].name!r} is not inside a list of "
                             "repeated layers, so there is no decoder layer to stream")
    outside = [v.name for v in views if not re.match(rf"{re.escape(found)}\.\d+\.", v.name + ".")]
    if outside:
        raise StreamingError(f"{type(model).__name__}: MoE blocks {outside} lie outside the layer list {found!r}; "
                             "layer streaming needs every MoE block inside one list of decoder layers")
    return found, modules[found]


def _tensors(module: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    """(owner, attribute name, tensor) for every parameter and buffer in ``module``, owners deduplicated."""
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for name, t in store.items():
                if t is not None:
                    yield owner, name, t


@contextlib.contextmanager
def _quiet_sync_loading() -> Iterator[None]:
    """transformers' loader without its progress bar and thread pool (lazy reads keep the peak at one tensor)."""
    from transformers.utils import logging as hf_logging

    bars = not hf_logging.is_progress_bar_enabled()
    env = os.environ.get("HF_DEACTIVATE_ASYNC_LOAD")
    hf_logging.disable_progress_bar()
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("HF_DEACTIVATE_ASYNC_LOAD", None)
        else:
            os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = env
        if not bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- the streamer


class LayerStreamer:
    """Loads decoder layer *i* of ``model`` from the checkpoint when its forward starts, frees it after.

    Args:
        model: the ``meta`` skeleton of :func:`_skeleton` (its decoder layers stay ``meta``).
        root: the checkpoint directory.
        dtype: the compute dtype of the weights.
        device: where the weights go.
        views: ``find_moe_layers(model)`` (computed when None).
        readahead: ask the kernel to read layer i + 1 into the page cache while layer i runs.
    """

    def __init__(self, model: nn.Module, root: Path, *, dtype: torch.dtype, device: torch.device,
                 views: list[MoELayerView] | None = None, readahead: bool = True) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.modeling_utils import LoadStateDictConfig

        self.model, self.root, self.dtype, self.device = model, root, dtype, torch.device(device)
        self.readahead = readahead and hasattr(os, "posix_fadvise")
        self.layers_path, self.layers = decoder_layers(model, views)
        self.table = _tensor_table(root)
        self.load_config = LoadStateDictConfig(
            dtype=dtype, dtype_plan=model._get_dtype_plan(dtype), device_map={"": str(self.device)},
            weight_mapping=filling(get_model_conversion_mapping(model, None, None)))
        self.targets: dict[str, str] = {}  # checkpoint key -> the model tensor it is loaded into
        self.resident_keys, self.layer_keys = self._group()
        self._handles: list = []
        self._loaded: dict[int, list[tuple[nn.Module, str, torch.Tensor]]] = {}
        self._held: set[int] = set()
        self.layer_loads = 0
        self.bytes_read = 0

    # -- keys -----------------------------------------------------------------------------------
    def _group(self) -> tuple[list[str], list[list[str]]]:
        """Checkpoint keys -> (outside the layers, per layer), by the model key each is loaded into."""
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

        mapping = copy.deepcopy(self.load_config.weight_mapping or [])  # renamings may keep state
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        prefix = self.model.base_model_prefix
        meta = self.model.state_dict()
        layer_rx = re.compile(rf"^{re.escape(self.layers_path)}\.(\d+)\.")
        resident: list[str] = []
        per_layer: list[list[str]] = [[] for _ in self.layers]
        for key in sorted(self.table, key=dot_natural_key):
            target, _ = rename_source_key(key, renamings, converters, prefix, meta)
            if target not in meta and key in meta:
                target, _ = rename_source_key(key, [], [], prefix, meta)
            if target not in meta:
                continue  # transformers would report it as unexpected and skip it: never read it
            m = layer_rx.match(target)
            (per_layer[int(m.group(1))] if m else resident).append(key)
            self.targets[key] = target
        return resident, per_layer

    def _nbytes(self, key: str) -> int:
        """Bytes of checkpoint tensor ``key`` once loaded (floating tensors in the compute dtype)."""
        t = self.table[key]
        item = torch.empty((), dtype=self.dtype).element_size() if t.dtype in _FLOATING else _ITEMSIZE.get(t.dtype, 4)
        return math.prod(t.shape) * item

    # -- loading --------------------------------------------------------------------------------
    def _load(self, keys: list[str]):
        """Read ``keys`` (pread: nothing stays mapped) and load them into the model with transformers' loader."""
        from safetensors import safe_open
        from transformers.core_model_loading import convert_and_load_state_dict_in_model

        with contextlib.ExitStack() as stack:
            handles: dict[Path, object] = {}
            state = {}
            for key in keys:
                file = self.table[key].file
                if file not in handles:
                    try:
                        handles[file] = stack.enter_context(safe_open(str(file), framework="pt", backend="pread"))
                    except Exception as err:  # safetensors raises its own error types, and OSError
                        raise StreamingError(f"cannot read safetensors file {file}: {err}") from err
                state[key] = handles[file].get_slice(key)
            with _quiet_sync_loading():
                info, _ = convert_and_load_state_dict_in_model(self.model, state, self.load_config)
        self.bytes_read += sum(self.table[k].end - self.table[k].start for k in keys)
        bad = sorted(str(k) for k in info.mismatched_keys) + [f"{k}: {v}" for k, v in info.conversion_errors.items()]
        if bad:
            raise StreamingError(f"the checkpoint in {self.root} has weights of the wrong shape or that cannot be "
                                 f"converted: {_shown(bad)}")
        return info

    def load_resident(self) -> None:
        """Load everything outside the decoder layers and recompute the non-persistent buffers."""
        model = self.model
        info = self._load(self.resident_keys)
        in_layer = re.compile(rf"^{re.escape(self.layers_path)}\.\d+\.")
        info.missing_keys = {k for k in info.missing_keys if not in_layer.match(k)}
        for _, _, t in _tensors(self.layers):  # keep initialize_weights off the meta layers
            t._is_hf_initialized = True
        model.mark_tied_weights_as_initialized(info)
        model._move_missing_keys_from_meta_to_device(info.missing_keys, self.load_config.device_map, None, None)
        model._initialize_missing_keys(False)
        model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
        model._adjust_missing_and_unexpected_keys(info)
        if info.missing_keys:
            raise StreamingError(f"the checkpoint in {self.root} lacks weights the model needs: "
                                 f"{_shown(sorted(info.missing_keys))}")
        left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta and not in_layer.match(n)]
        if left:
            raise StreamingError(f"{type(model).__name__}: {_shown(left)} stayed on the meta device outside the "
                                 "decoder layers; this model cannot be streamed")

    def _pre(self, i: int):
        def hook(module: nn.Module, args) -> None:
            if i in self._held:
                return
            pending = [(owner, name, t) for owner, name, t in _tensors(module) if t.is_meta]
            self._load(self.layer_keys[i])
            left = [f"{self.layers_path}.{i}.{_path(module, owner)}{name}" for owner, name, _ in pending
                    if _get(owner, name).is_meta]
            if left:
                for owner, name, t in pending:
                    _put(owner, name, t)
                raise StreamingError(f"the checkpoint in {self.root} lacks weights of decoder layer {i}: "
                                     f"{_shown(left)}")
            self._loaded[i] = pending
            self.layer_loads += 1
            self.prefetch((i + 1) % len(self.layers))

        return hook

    def _post(self, i: int):
        def hook(module: nn.Module, args, output) -> None:
            if i in self._held:
                return
            for owner, name, meta in self._loaded.pop(i, []):
                _put(owner, name, meta)  # the loaded tensor's last reference goes: freed

        return hook

    @contextlib.contextmanager
    def hold(self, i: int) -> Iterator[None]:
        """Decoder layer ``i`` resident for the whole block: read once, its forwards neither read nor free it
        (what a layer-major run, :mod:`moescope.models.layer_major`, needs)."""
        layer = self.layers[i]
        self._pre(i)(layer, ())
        self._held.add(i)
        try:
            yield
        finally:
            self._held.discard(i)
            self._post(i)(layer, (), None)

    def prefetch(self, i: int) -> None:
        """Ask the kernel to read layer ``i``'s byte ranges into the page cache (no resident copy here)."""
        if not self.readahead:
            return
        ranges: dict[Path, list[tuple[int, int]]] = {}
        for key in self.layer_keys[i]:
            t = self.table[key]
            ranges.setdefault(t.file, []).append((t.start, t.end))
        for file, spans in ranges.items():
            fd = os.open(file, os.O_RDONLY)
            try:
                for start, end in _coalesce(spans):
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def attach(self) -> LayerStreamer:
        bound_allocators()
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre(i)))
            self._handles.append(layer.register_forward_hook(self._post(i), always_call=True))
        self.prefetch(0)
        return self

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def plan(self, tokens: int) -> MemoryPlan:
        """What this checkpoint needs in memory, in the streamer's compute dtype, for ``tokens`` per forward."""
        layers = [sum(self._nbytes(k) for k in keys) for keys in self.layer_keys]
        largest = max(layers, default=0)
        sources: dict[str, list[int]] = {}  # model tensor -> bytes of each checkpoint tensor fused into it
        for key in self.layer_keys[layers.index(largest)] if layers else ():
            sources.setdefault(self.targets[key], []).append(self._nbytes(key))
        filled = [m.target_patterns[0] for m in self.load_config.weight_mapping or ()
                  if isinstance(getattr(m, "operations", [None])[0], fill_fused_op())]
        # a filled tensor (fused_fill) needs one source beside it while it loads; transformers' ops all of them
        fused = {t: max(b) if len(b) > 1 and any(re.search(f, t) for f in filled) else sum(b)
                 for t, b in sources.items()}
        emb = self.model.get_input_embeddings().weight
        vocab, hidden = emb.shape[0], emb.shape[-1]
        item = torch.empty((), dtype=self.dtype).element_size()
        return MemoryPlan(
            whole=sum(self._nbytes(k) for k in self.resident_keys) + sum(layers),
            resident=sum(self._nbytes(k) for k in self.resident_keys),
            largest_layer=largest, conversion=max(fused.values(), default=0),
            activations=int(tokens * item * (ACTIVATION_WIDTHS * hidden + vocab)),
            num_layers=len(layers), tokens=tokens, per_token=hidden * item)


def _path(root: nn.Module, owner: nn.Module) -> str:
    """Dotted path of ``owner`` inside ``root`` with a trailing dot ('' for root itself)."""
    for name, m in root.named_modules():
        if m is owner:
            return f"{name}." if name else ""
    return "?."


def _get(owner: nn.Module, name: str) -> torch.Tensor:
    return owner._parameters[name] if name in owner._parameters else owner._buffers[name]


def _put(owner: nn.Module, name: str, t: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name] = t
    else:
        owner._buffers[name] = t


def _coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _shown(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


# --------------------------------------------------------------------------- memory plan

#: hidden-sized activations alive at once in a decoder layer's forward, per token: the residual, the
#: normed input, q/k/v/attention output, the router logits and each routed copy of the token through
#: its experts (k · (2I + I) / H ≈ 2 · 10 for Mixtral), rounded up; the logits add ``vocab`` more.
ACTIVATION_WIDTHS = 32
#: what a streamed model holds beyond its tensors: allocator slack, Python objects of the model and the
#: loader, the bounded oneDNN cache (models.memory); with 64 MiB a 0.8 GB bfloat16 Mixtral peaked at
#: 0.999x the plan, so 96
OVERHEAD = 96 * 2**20
#: residual-stream buffer of a layer-major run when no memory budget is given
DEFAULT_BUFFER = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a checkpoint needs, in the compute dtype, for the in-memory and the streamed path.

    Attributes:
        whole: every weight the model loads (the in-memory path holds all of them).
        resident: the weights outside the decoder layers (embeddings, final norm, head).
        largest_layer: the largest decoder layer's weights.
        conversion: what exists beside that layer's tensors while it loads: for a tensor fused from
            per-expert ones by :mod:`~moescope.models.fused_fill` (Mixtral's ``w1``/``w3`` into
            ``gate_up_proj``) its largest source, for one built by another of transformers' conversions
            all its sources.
        activations: the hidden states of one forward of ``tokens`` tokens (see
            :data:`ACTIVATION_WIDTHS`) plus its logits.
        num_layers: decoder layers.
        tokens: tokens per forward the activations were sized for.
        per_token: bytes of one token's residual stream, which a layer-major run
            (:mod:`moescope.models.layer_major`) keeps for every token between layers.
    """

    whole: int
    resident: int
    largest_layer: int
    conversion: int
    activations: int
    num_layers: int
    tokens: int
    per_token: int = 0

    @property
    def streamed(self) -> int:
        """The smallest budget the streamed path runs in: resident + one layer + the residual stream of one
        forward's tokens + the layer's conversion copy + the activations + :data:`OVERHEAD`, summed so as to err
        high. ``moescope bench analyze --big`` compares it with the measured peak."""
        return (self.resident + self.largest_layer + self.conversion + self.activations
                + self.per_token * self.tokens + OVERHEAD)

    def buffer_tokens(self, budget: int | str | None) -> int:
        """Tokens whose residual stream a layer-major run keeps at once: as many as ``budget`` leaves room for
        beyond :attr:`streamed` (without a budget, :data:`DEFAULT_BUFFER` bytes' worth), at least one forward's.

        Each decoder layer is read once per that many tokens, so a larger buffer means fewer reads.
        """
        room = DEFAULT_BUFFER if budget is None else parse_size(budget) - self.streamed
        return self.tokens + max(0, room) // max(1, self.per_token)

    @property
    def in_memory(self) -> int:
        """What the in-memory path holds: every weight plus the activations."""
        return self.whole + self.activations + OVERHEAD

    def decide(self, budget: int | str | None, *, stream: bool | None = None) -> bool:
        """Whether to stream: ``stream`` if given (checked against ``budget``), else only when the whole
        model would not fit ``budget``.

        Raises:
            StreamingError: ``budget`` is below :attr:`streamed`; the message names that minimum.
        """
        limit = None if budget is None else parse_size(budget)
        if limit is not None and limit < self.streamed and stream is not False:
            raise StreamingError(
                f"a memory budget of {format_size(limit)} is too small for this checkpoint: streaming it layer by "
                f"layer needs at least {format_size(self.streamed)} ({self.describe()}); raise --max-memory to at "
                f"least {math.ceil(self.streamed / 2**20)}MiB or route fewer tokens per forward")
        if stream is not None:
            if stream is False and limit is not None and limit < self.in_memory:
                raise StreamingError(f"a memory budget of {format_size(limit)} cannot hold the whole model "
                                     f"({format_size(self.in_memory)}); stream its layers instead")
            return stream
        return limit is not None and limit < self.in_memory

    def describe(self) -> str:
        return (f"embeddings and head {format_size(self.resident)}, largest decoder layer "
                f"{format_size(self.largest_layer)} + {format_size(self.conversion)} while it is converted, "
                f"activations of {self.tokens} tokens {format_size(self.activations)}; the whole model is "
                f"{format_size(self.whole)} in {self.num_layers} layers")


# --------------------------------------------------------------------------- entry points


def _open(path: str | os.PathLike, dtype: torch.dtype) -> tuple[Path, nn.Module, list[MoELayerView], Family]:
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16; got {dtype!r}")
    path = Path(path).expanduser()
    _check_dir(path)
    family = _family(path)
    _check_weights(path)
    model = _skeleton(path, family, dtype)
    return path, model, find_moe_layers(model), family


def memory_plan(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, tokens: int = 1024) -> MemoryPlan:
    """What the checkpoint in ``path`` needs in memory (:class:`MemoryPlan`), read from headers and a meta
    skeleton only: nothing is loaded."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1; got tokens={tokens}")
    path, model, views, _ = _open(path, dtype)
    return LayerStreamer(model, path, dtype=dtype, device=torch.device("cpu"), views=views).plan(tokens)


def read_moe_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, object | None, list[MoELayerView]]:
    """The whole model in memory, read by the streamer's reader: ``(model, tokenizer | None, views)``.

    What ``from_pretrained`` builds, but each tensor is read with ``pread`` into its place and no shard is
    memory-mapped, so the process holds one copy of the weights (plus one tensor while it is converted)
    instead of the converted model beside the mapped pages of every shard (measured 1.7-1.9x the model's
    size at the peak). :func:`~moescope.models.loading.load_moe_model` uses it by default.
    """
    path, model, views, _ = _open(path, dtype)
    streamer = LayerStreamer(model, path, dtype=dtype, device=torch.device(device), views=views, readahead=False)
    streamer.load_resident()
    for i, layer in enumerate(streamer.layers):
        streamer._pre(i)(layer, ())  # loaded and never freed: no hook is attached
    model.eval()
    return model, load_tokenizer(path), find_moe_layers(model)  # views of the loaded tensors, not the meta ones


def stream_moe_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     readahead: bool = True) -> tuple[nn.Module, object | None, list[MoELayerView]]:
    """The MoE model in ``path`` with its decoder layers streamed from disk: ``(model, tokenizer | None, views)``.

    Same contract as :func:`~moescope.models.loading.load_moe_model`; the model's forward loads each
    decoder layer when it starts and frees it when it ends (``model.moescope_streamer`` is the
    :class:`LayerStreamer`: ``layer_loads``, ``bytes_read``, :meth:`~LayerStreamer.plan`).

    Args:
        path: a local checkpoint directory with safetensors weights.
        dtype: the compute dtype of the weights (float32, bfloat16 or float16).
        device: where the layers run.
        readahead: ``posix_fadvise(WILLNEED)`` the next layer's bytes while a layer runs.

    Raises:
        FileNotFoundError, ValueError: as ``load_moe_model`` (missing path, unsupported model type, corrupt file).
        StreamingError (a ValueError): the model's MoE blocks are not in one list of decoder layers, weights
            the model needs are missing, or something outside the layers cannot be built.
    """
    path, model, views, _ = _open(path, dtype)
    streamer = LayerStreamer(model, path, dtype=dtype, device=torch.device(device), views=views, readahead=readahead)
    streamer.load_resident()
    streamer.attach()
    model.moescope_streamer = streamer
    model.eval()
    return model, load_tokenizer(path), views
