"""Load a local Hugging Face MoE checkpoint: model, tokenizer (if any) and its MoE layer views.

``load_moe_model(path)`` never touches the network (``local_files_only=True`` everywhere) and
checks, before transformers gets to fail deep inside, that ``path`` is a model directory
with a ``config.json`` of a supported ``model_type`` and readable weight files; a
corrupt ``*.safetensors`` file is named in the error.

The supported model types, and the transformers class each is loaded with, are those of the
family registry (:data:`moescope.models.families.BY_MODEL_TYPE`; ``Family.auto_class``):
``AutoModelForCausalLM`` for the decoder-only families, another class where a family's file
says why (Switch Transformers is loaded as its encoder).
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
from moescope.models.view import MoELayerView

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


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
    """Every safetensors file must have a readable header (cheap: the tensors are not read)."""
    from safetensors import safe_open

    files = sorted(f for pattern in _WEIGHT_FILES for f in path.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{path} has no weights; expected model.safetensors (or model-*-of-*.safetensors)")
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            with safe_open(f, framework="pt") as st:
                st.keys()
        except Exception as err:  # safetensors raises its own error types, and OSError
            raise ValueError(f"corrupt safetensors file {f}: {err}") from err


def _auto_class(family: Family):
    import transformers

    return getattr(transformers, family.auto_class)


def load_moe_model(path: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, object | None, list[MoELayerView]]:
    """Load the MoE model in ``path`` for analysis: ``(model in eval mode, tokenizer or None, views)``.

    Args:
        path: a local directory holding ``config.json``, the weights and optionally the tokenizer.
        dtype: the parameters' dtype (float32 by default: exact routing statistics on CPU;
            ``"auto"`` keeps the checkpoint's).
        device: where the model lives (CPU by default).

    The tokenizer is loaded when tokenizer files exist, else None (the caller then passes
    token ids).

    Raises:
        FileNotFoundError: no such path, no ``config.json``, or no weight file.
        ValueError: not a directory, an unsupported ``model_type`` (the message lists the
            supported ones), invalid ``config.json``, or a corrupt safetensors file (named).
    """
    path = Path(path).expanduser()
    _check_dir(path)
    family = _family(path)
    _check_weights(path)
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
