"""Load a local Hugging Face MoE checkpoint: model, tokenizer (if any) and its MoE layer views.

``load_moe_model(path)`` never touches the network (``local_files_only=True`` everywhere) and
checks, before transformers gets to fail deep inside, that ``path`` is a model directory
with a ``config.json`` of a supported ``model_type`` and weight files that can be trusted; the
layer streamer (:mod:`moescope.models.streaming`) runs the same checks (:func:`_check_weights`).

**A bad checkpoint is refused in one line, before any work** (headers only, no tensor read): a
PyTorch pickle; a missing, truncated or corrupt shard, or an index that disagrees with its shards
(:func:`moescope.models.shards.checkpoint_tensors`); and a ``config.json`` whose sizes disagree with
the tensors. For the last, transformers' own loader is run *dry*: the model is built on the ``meta``
device (no memory) and fed ``meta`` stand-ins of the checkpoint's tensors, so every renaming and
fusion ``from_pretrained`` applies (Mixtral's per-expert ``w1``/``w3`` stacked into one
``gate_up_proj``) is applied to shapes only; a wrong shape names the tensor, both shapes and, where
changing one config field would fix every mismatch, that field.

The supported model types, and the transformers class each is loaded with, are those of the
family registry (:data:`moescope.models.families.BY_MODEL_TYPE`; ``Family.auto_class``):
``AutoModelForCausalLM`` for the decoder-only families, another class where a family's file
says why (Switch Transformers is loaded as its encoder).

**Dtype and device.** ``dtype`` is one of :data:`DTYPES` (``"auto"``: the checkpoint's own dtype,
from ``config.json``'s ``dtype``/``torch_dtype``, else the floating dtype most of the safetensors
bytes are stored in) and ``device`` one of :data:`DEVICES` (``cuda:N`` too) that this machine has;
both are checked (:func:`check_dtype`, :func:`check_device`) before anything is read. float16 is
allowed on the CPU; a checkpoint trained in bfloat16 can overflow in float16, so ``auto`` or
``bfloat16`` is the better choice. The
routing statistics do not depend on the compute dtype beyond rounding: every family's router takes
its softmax/sigmoid in float32, and the recorder stores scores and weights as float32.

**A model larger than one device.** ``device_map`` (one of :data:`DEVICE_MAPS`, or a dict of module
name -> device) hands placement to accelerate through ``from_pretrained``: ``"auto"`` fills the GPUs
in order, then CPU memory, then (with ``offload_folder``) disk, each capped by ``max_memory``;
accelerate's hooks move an offloaded layer's weights in for its forward and out after it, so the
routing recorder sees the same forward (:func:`check_placement` checks all of it first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from moescope.models.adapters import find_moe_layers
from moescope.models.families import BY_MODEL_TYPE, supported_model_types
from moescope.models.family import Family
from moescope.models.memory import bound_allocators
from moescope.models.shards import check_shapes, checkpoint_tensors, read_header, weight_files
from moescope.models.view import MoELayerView

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_PICKLE_FILES = ("pytorch_model*.bin", "*.pt", "*.pth")

#: ``--dtype`` names -> the parameters' dtype (``auto``: the checkpoint's own, see :func:`checkpoint_dtype`)
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
                                         "float16": torch.float16}
#: ``--device`` names (``cuda:N`` picks one GPU)
DEVICES = ("cpu", "cuda", "mps")
#: accelerate's placement strategies for ``device_map`` (a dict of module name -> device works too): ``auto`` and
#: ``balanced`` spread the layers evenly over the GPUs, ``balanced_low_0`` keeps GPU 0 light for generation,
#: ``sequential`` fills GPU 0 first; each spills to CPU memory, then disk, as ``max_memory`` says
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
#: how :func:`load_moe_model` reads the weights: moescope's ``pread`` reader (one copy) or ``from_pretrained``
LOADERS = ("pread", "transformers")
#: where a ``device_map`` entry or ``max_memory`` key can point besides GPU indices
_PLACES = ("cpu", "mps", "disk")
# safetensors header dtype -> torch dtype, for the floating dtypes a model can be run in
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def available_devices() -> tuple[str, ...]:
    """The :data:`DEVICES` this machine has (always ``cpu``)."""
    mps = getattr(torch.backends, "mps", None)
    return ("cpu", *(("cuda",) if torch.cuda.is_available() else ()),
            *(("mps",) if mps is not None and mps.is_available() else ()))


def check_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """A :data:`DTYPES` name (or one of its torch dtypes) -> the torch dtype, None for ``auto``."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype {str(dtype).removeprefix('torch.')!r} is not supported; choose one of "
                     f"{', '.join(DTYPES)}")


def check_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a torch device, if this machine has it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICES:
        raise ValueError(f"device {str(device)!r} is not supported; choose one of {', '.join(DEVICES)} "
                         "(cuda:N for one GPU)")
    have = available_devices()
    if dev.type not in have:
        raise ValueError(f"device {str(device)!r} is not available on this machine (torch {torch.__version__}); "
                         f"available: {', '.join(have)}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist; this machine has cuda:0..cuda:"
                         f"{torch.cuda.device_count() - 1}")
    return dev


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """A matmul in ``dtype`` runs on ``device`` (bfloat16 needs an Ampere GPU, or macOS 14 on mps)."""
    if device.type == "cpu":
        return  # every DTYPES entry has CPU kernels
    try:
        x = torch.ones(2, 2, dtype=dtype, device=device)
        (x @ x).sum().item()
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"dtype {str(dtype).removeprefix('torch.')} is not supported on {device}: "
                         f"{str(err).splitlines()[0]}; choose another --dtype") from None


def _gpu(value: int | str, what: str) -> int:
    """A GPU index (``2`` or ``"cuda:2"``) that this machine has, as accelerate names it (an int)."""
    suffix = value if isinstance(value, int) else value.removeprefix("cuda:")
    if not isinstance(suffix, int) and not suffix.isdigit():
        raise ValueError(f"{what} is {value!r}; a GPU is an index or cuda:N")
    index = int(suffix)
    if not 0 <= index < torch.cuda.device_count():
        have = f"GPUs 0..{torch.cuda.device_count() - 1}" if torch.cuda.device_count() else "no GPU"
        raise ValueError(f"{what} names GPU {value!r}, but this machine has {have}")
    return index


def check_placement(device: torch.device, device_map: str | dict | None, max_memory: dict | None,
                    offload_folder: str | os.PathLike | None) -> tuple[str | dict | None, dict | None, Path | None]:
    """Validate :func:`load_moe_model`'s placement arguments before anything is read.

    Returns ``(device_map, max_memory in bytes, offload_folder)`` as ``from_pretrained`` takes them.
    ``device_map`` is one of :data:`DEVICE_MAPS` or a dict of module name -> GPU index, ``cuda:N``,
    ``cpu``, ``mps`` or ``disk``; it excludes a non-CPU ``device`` (both would say where the model
    goes), and ``max_memory`` (GPU index or ``cpu``/``mps``/``disk`` -> bytes or a size such as
    ``"4GiB"``) and ``offload_folder`` need it. A ``disk`` entry needs ``offload_folder``.
    """
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder only apply with a device_map; pass device_map='auto' "
                             "(accelerate fills the GPUs, then CPU memory, then the offload folder)")
        return None, None, None
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r} and device_map={device_map!r} both say where the model goes; "
                         "pass one: device for a single device, device_map to spread it over several")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAPS:
            raise ValueError(f"device_map {device_map!r} is not a placement strategy; choose one of "
                             f"{', '.join(DEVICE_MAPS)}, or a dict of module name -> device")
    elif isinstance(device_map, dict) and device_map:
        placed = {}
        for module, where in device_map.items():
            what = f"device_map[{module!r}]"
            if not isinstance(module, str):
                raise ValueError(f"device_map keys are module names ('' for the whole model); got {module!r}")
            if isinstance(where, torch.device):
                where = str(where)
            if (isinstance(where, int) and not isinstance(where, bool)) or str(where).startswith("cuda"):
                placed[module] = _gpu(0 if where == "cuda" else where, what)
            elif where in _PLACES:
                placed[module] = check_device(where).type if where != "disk" else where
            else:
                raise ValueError(f"{what} is {where!r}; a device is a GPU index, cuda:N, {', '.join(_PLACES)}")
        device_map = placed
    else:
        raise ValueError(f"device_map must be one of {', '.join(DEVICE_MAPS)} or a non-empty dict of module name -> "
                         f"device; got {device_map!r}")
    if max_memory is not None:
        from moescope.models.sizes import parse_size  # the one reader of sizes such as "4GiB"

        if not isinstance(max_memory, dict) or not max_memory:
            raise ValueError(f"max_memory must be a dict of device -> size (e.g. {{0: '20GiB', 'cpu': '60GiB'}}); "
                             f"got {max_memory!r}")
        budget = {}
        for where, size in max_memory.items():
            ok = (isinstance(where, int) and not isinstance(where, bool)) or str(where).startswith("cuda:")
            if not ok and where not in _PLACES:
                raise ValueError(f"max_memory key {where!r} is not a device; use a GPU index, cuda:N, "
                                 f"{', '.join(_PLACES)}")
            budget[_gpu(where, "max_memory") if ok else where] = parse_size(size)
        max_memory = budget
    folder = None if offload_folder is None else Path(offload_folder).expanduser()
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ValueError(f"offload_folder {folder} is not a directory")
    if folder is None and isinstance(device_map, dict) and "disk" in device_map.values():
        raise ValueError("device_map puts modules on 'disk', which needs offload_folder (a directory for their "
                         "weights)")
    return device_map, max_memory, folder


def _placement_devices(device_map: str | dict) -> list[torch.device]:
    """The accelerators a ``device_map`` may put weights on (each must run the chosen dtype)."""
    if isinstance(device_map, dict):
        return [torch.device("cuda", w) if isinstance(w, int) else torch.device(w)
                for w in dict.fromkeys(device_map.values()) if w not in ("cpu", "disk")]
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())] + (
        [torch.device("mps")] if "mps" in available_devices() else [])


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: the path does not exist "
                                "(expected a local Hugging Face model directory with config.json and weights)")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory; expected a Hugging Face model directory "
                         "(config.json, model*.safetensors, optional tokenizer files)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face model directory "
                                "(config.json, model*.safetensors, optional tokenizer files)")


def _family(path: Path) -> Family:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'config.json'} is not valid JSON: {err}") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(f"{path / 'config.json'} has model_type={model_type!r}, not a supported MoE family; "
                         f"supported: {supported_model_types()}")
    return BY_MODEL_TYPE[model_type]


def _check_weights(path: Path) -> None:
    """The checkpoint's weights can be trusted before any work: safetensors files that exist (every shard its
    index names), whose headers are whole and consistent and agree with the index (:func:`checkpoint_tensors`)
    and that safetensors opens, and whose shapes are those ``config.json`` builds (:func:`_check_shapes`).
    Cheap: headers and a ``meta`` model only. PyTorch ``.bin`` pickles are refused, never unpickled: a pickle
    can run code when loaded."""
    from safetensors import safe_open

    try:
        tensors = checkpoint_tensors(path)
    except FileNotFoundError:
        pickles = sorted(p.name for pattern in _PICKLE_FILES for p in path.glob(pattern))
        if pickles:
            raise ValueError(f"{path / pickles[0]} is a PyTorch pickle, which moescope never loads (a pickle can run "
                             "code); convert the checkpoint to safetensors, e.g. load it once with transformers "
                             "and save_pretrained(..., safe_serialization=True)") from None
        raise FileNotFoundError(f"{path} has no weights; expected model.safetensors "
                                "(or model-*-of-*.safetensors with model.safetensors.index.json)") from None
    for f in dict.fromkeys(file for file, _ in tensors.values()):
        try:
            with safe_open(f, framework="pt") as st:
                st.keys()
        except Exception as err:  # safetensors raises its own error types, and OSError
            raise ValueError(f"corrupt safetensors file {f}: {_one_line(err)}") from err
    _check_shapes(path, _family(path), tensors)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())


def _meta_model(config, family: Family) -> nn.Module:
    """The class ``from_pretrained`` builds for ``config``, built in its own init context on the ``meta`` device:
    every parameter has its shape and no memory."""
    from transformers.modeling_utils import ContextManagers

    cls = _auto_class(family)
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is not None:  # an Auto* class: the concrete class for this config
        from transformers.models.auto.auto_factory import _get_model_class

        cls = _get_model_class(config, mapping)
    with ContextManagers(cls.get_init_context(torch.float32, False, False, None)):
        return cls(config)


def _check_shapes(path: Path, family: Family, tensors: dict[str, tuple[Path, dict]]) -> None:
    """``config.json`` builds the tensors the checkpoint holds (:func:`moescope.models.shards.check_shapes` on the
    family's class); a config transformers cannot even read is left to the real load to report."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception:  # the real load reports it in its own words
        return
    check_shapes(path, config, lambda c: _meta_model(c, family), tensors)


def checkpoint_dtype(path: str | os.PathLike) -> torch.dtype:
    """The dtype the checkpoint in ``path`` was saved in: ``config.json``'s ``dtype`` (``torch_dtype`` in
    transformers 4), else the floating dtype that holds most bytes in the safetensors headers.

    Raises:
        ValueError: that dtype is not one of :data:`DTYPES` (e.g. a float8 checkpoint): name another.
    """
    path = Path(path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    if name is None:
        nbytes: dict[str, int] = {}
        for f in weight_files(path):
            for meta in read_header(f)[0].values():
                start, end = meta["data_offsets"]
                nbytes[meta["dtype"]] = nbytes.get(meta["dtype"], 0) + end - start
        floating = {k: v for k, v in nbytes.items() if k.startswith(("F", "BF"))}
        if not floating:
            raise ValueError(f"{path}: no floating-point tensor in the safetensors files, so --dtype auto has "
                             f"nothing to follow; choose one of {', '.join(k for k in DTYPES if k != 'auto')}")
        stored = max(floating, key=floating.get)
        if stored in _SAFETENSORS_DTYPES:
            return _SAFETENSORS_DTYPES[stored]
        name = stored
    name = str(name).removeprefix("torch.")
    if DTYPES.get(name) is None:
        raise ValueError(f"{path} is stored in {name}, which moescope does not compute in; choose --dtype "
                         f"{'|'.join(k for k in DTYPES if k != 'auto')}")
    return DTYPES[name]


def _auto_class(family: Family):
    import transformers

    return getattr(transformers, family.auto_class)


def load_moe_model(path: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
                   device: str | torch.device = "cpu", device_map: str | dict | None = None,
                   max_memory: dict | None = None, offload_folder: str | os.PathLike | None = None,
                   loader: str = "pread") -> tuple[nn.Module, object | None, list[MoELayerView]]:
    """Load the MoE model in ``path`` for analysis: ``(model in eval mode, tokenizer or None, views)``.

    Args:
        path: a local directory holding ``config.json``, the weights and optionally the tokenizer.
        dtype: the parameters' dtype, a :data:`DTYPES` name or torch dtype (float32 by default: exact
            routing statistics on CPU; ``"auto"`` keeps the checkpoint's, see :func:`checkpoint_dtype`).
        device: where the model lives, one of :data:`DEVICES` this machine has (CPU by default).
        device_map: spread the model with accelerate instead: one of :data:`DEVICE_MAPS` or a dict of
            module name -> GPU index / ``cuda:N`` / ``cpu`` / ``mps`` / ``disk`` (see :func:`check_placement`).
            Offloaded weights are ``meta`` tensors outside their layer's forward, in the views too.
        max_memory: with ``device_map``, the most each device may hold: GPU index, ``cpu`` or ``mps`` ->
            bytes or a size such as ``"4GiB"`` (accelerate's default: what is free).
        offload_folder: with ``device_map``, where weights that fit nowhere else are written and read
            back from, layer by layer.
        loader: one of :data:`LOADERS`. ``pread`` (the default without a ``device_map``) builds the same
            transformers class but reads each tensor into place without memory-mapping the shards
            (:func:`moescope.models.streaming.read_moe_model`: one copy of the weights);
            ``transformers`` is ``from_pretrained`` itself (the shards stay mapped while it converts them;
            the tests' independent reference, and what ``device_map`` uses).

    The tokenizer is loaded when tokenizer files exist, else None (the caller then passes
    token ids).

    Raises:
        FileNotFoundError: no such path, no ``config.json``, or no weight file.
        ValueError: not a directory, an unsupported ``model_type`` (the message lists the
            supported ones), invalid ``config.json``, a truncated or corrupt safetensors file, an index
            that disagrees with its shards, a config whose sizes disagree with the tensors (each named),
            a dtype, device or placement that is unknown or not on this machine (the message lists what is).
    """
    path = Path(path).expanduser()
    if loader not in LOADERS:
        raise ValueError(f"loader {loader!r} is not one of {', '.join(LOADERS)}")
    wanted, device = check_dtype(dtype), check_device(device)
    device_map, max_memory, offload_folder = check_placement(device, device_map, max_memory, offload_folder)
    _check_dir(path)
    family = _family(path)
    _check_weights(path)
    dtype = checkpoint_dtype(path) if wanted is None else wanted
    for dev in _placement_devices(device_map) if device_map is not None else [device]:
        check_dtype_on_device(dtype, dev)
    bound_allocators()
    if loader == "pread" and device_map is None:
        from moescope.models.streaming import read_moe_model

        return read_moe_model(path, dtype=dtype, device=device)
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    placement = {} if device_map is None else {
        "device_map": device_map, "max_memory": max_memory,
        "offload_folder": None if offload_folder is None else str(offload_folder)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the skipped Switch decoder; we check it ourselves
    try:  # ignore_mismatched_sizes: a wrong shape comes back in info (named below) instead of a pointer to a log
        model, info = _auto_class(family).from_pretrained(path, config=config, local_files_only=True, dtype=dtype,
                                                              output_loading_info=True, ignore_mismatched_sizes=True,
                                                              **placement)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"could not load the {family.title} weights in {path}: {_one_line(err)}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = sorted(info.get("missing_keys", ())) + [f"{k} ({list(got)} in the checkpoint, {list(want)} for the config)"
                                                  for k, got, want in sorted(info.get("mismatched_keys", ()))]
    if bad:  # transformers would leave these randomly initialised: every statistic would be noise
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise ValueError(f"the checkpoint in {path} lacks (or has wrongly shaped) weights the model needs: {shown}")
    model = (model if device_map is not None else model.to(device)).eval()  # accelerate placed it already
    return model, load_tokenizer(path), find_moe_layers(model)


def load_tokenizer(path: str | Path):
    """The tokenizer saved in checkpoint directory ``path``, or None when it has no tokenizer files."""
    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)
