"""Load a local Hugging Face MoE checkpoint: model, tokenizer (if any) and its MoE layer views.

``load_moe_model(path)`` never touches the network (``local_files_only=True`` everywhere) and
checks, before transformers gets to fail deep inside, that ``path`` is a model directory
with a ``config.json`` of a supported ``model_type`` and readable weight files; a
corrupt ``*.safetensors`` file is named in the error.

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
from moescope.models.shards import read_header, weight_files
from moescope.models.view import MoELayerView

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_PICKLE_FILES = ("pytorch_model*.bin", "*.pt", "*.pth")

#: ``--dtype`` names -> the parameters' dtype (``auto``: the checkpoint's own, see :func:`checkpoint_dtype`)
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
                                         "float16": torch.float16}
#: ``--device`` names (``cuda:N`` picks one GPU)
DEVICES = ("cpu", "cuda", "mps")
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
    """The checkpoint's safetensors files exist (every shard its index names) and each has a readable
    header (cheap: the tensors are not read). PyTorch ``.bin`` pickles are refused, never unpickled:
    a pickle can run code when loaded."""
    from safetensors import safe_open

    try:
        files = weight_files(path)
    except FileNotFoundError:
        pickles = sorted(p.name for pattern in _PICKLE_FILES for p in path.glob(pattern))
        if pickles:
            raise ValueError(f"{path / pickles[0]} is a PyTorch pickle, which moescope never loads (a pickle can run "
                             "code); convert the checkpoint to safetensors, e.g. load it once with transformers "
                             "and save_pretrained(..., safe_serialization=True)") from None
        raise FileNotFoundError(f"{path} has no weights; expected model.safetensors "
                                "(or model-*-of-*.safetensors with model.safetensors.index.json)") from None
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                st.keys()
        except Exception as err:  # safetensors raises its own error types, and OSError
            raise ValueError(f"corrupt safetensors file {f}: {err}") from err


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
                   device: str | torch.device = "cpu") -> tuple[nn.Module, object | None, list[MoELayerView]]:
    """Load the MoE model in ``path`` for analysis: ``(model in eval mode, tokenizer or None, views)``.

    Args:
        path: a local directory holding ``config.json``, the weights and optionally the tokenizer.
        dtype: the parameters' dtype, a :data:`DTYPES` name or torch dtype (float32 by default: exact
            routing statistics on CPU; ``"auto"`` keeps the checkpoint's, see :func:`checkpoint_dtype`).
        device: where the model lives, one of :data:`DEVICES` this machine has (CPU by default).

    The tokenizer is loaded when tokenizer files exist, else None (the caller then passes
    token ids).

    Raises:
        FileNotFoundError: no such path, no ``config.json``, or no weight file.
        ValueError: not a directory, an unsupported ``model_type`` (the message lists the
            supported ones), invalid ``config.json``, a corrupt safetensors file (named), a dtype or
            device that is unknown or not on this machine (the message lists what is).
    """
    path = Path(path).expanduser()
    wanted, device = check_dtype(dtype), check_device(device)
    _check_dir(path)
    family = _family(path)
    _check_weights(path)
    dtype = checkpoint_dtype(path) if wanted is None else wanted
    check_dtype_on_device(dtype, device)
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the skipped Switch decoder; we check it ourselves
    try:
        model, info = _auto_class(family).from_pretrained(path, config=config, local_files_only=True, dtype=dtype,
                                                              output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"could not load the {family.title} weights in {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if bad:  # transformers would leave these randomly initialised: every statistic would be noise
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise ValueError(f"the checkpoint in {path} lacks (or has wrongly shaped) weights the model needs: {shown}")
    model = model.to(device).eval()
    tokenizer = None
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer, find_moe_layers(model)
