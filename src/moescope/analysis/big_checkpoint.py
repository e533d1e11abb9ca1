"""A Mixtral-8x7B-shaped checkpoint of random bf16 weights on disk, made once and cached.

:func:`make_mixtral_checkpoint` writes what ``MixtralForCausalLM.save_pretrained`` would write for a
model of the given shape (Mixtral-8x7B's by default, Jiang et al. 2024: H = 4096, I = 14336, E = 8
experts, 32 query / 8 key-value heads, a 32000-token vocabulary), with ``layers`` decoder layers
(four: 12.1 GB in bf16) instead of 32:

* ``config.json`` from transformers' own :class:`~transformers.MixtralConfig` (``save_pretrained``);
* the tensor names and shapes of the checkpoint format, derived from the real model class built on
  the ``meta`` device (nothing allocated) and mapped back to the on-disk names by transformers' own
  ``revert_weight_conversion`` — the function ``save_pretrained`` calls (the fused ``gate_up_proj``
  becomes the per-expert ``w1``/``w3``), so the names are transformers' and not copied here;
* shards ``model-0000i-of-0000n.safetensors`` of about ``shard_bytes`` each plus
  ``model.safetensors.index.json``, written tensor by tensor (one tensor in memory at a time);
* a byte-level BPE tokenizer (the ``tokenizers`` library) trained on the built-in sample text, so
  that ``moescope analyze`` can turn text into ids.

The weights are i.i.d.-looking N(0, 0.02²) in bf16 (norm gains 1): one pool of Gaussian values is
drawn once with a seeded ``torch.Generator`` and every tensor is assembled from pieces of it at
random offsets with random signs — a few seconds for 6 G values where drawing each one costs half a
minute on two cores. Enough for a benchmark (distinct, non-degenerate matrices); not a model.

The folder is written atomically: into a temporary sibling, files flushed to disk, a marker
(:data:`MARKER`, holding the shape) written last, then renamed into place. A folder without the
marker (a half-written cache) is rebuilt; one whose marker matches the requested shape is reused.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import torch

from moescope._files import fsync_path
from moescope.analysis.checkpoint import write_safetensors

__all__ = ["MARKER", "MIXTRAL_8X7B_4_LAYERS", "bench_cache_dir", "checkpoint_spec", "make_mixtral_checkpoint"]

#: Mixtral-8x7B's shape (its config.json on the Hub) with four decoder layers instead of 32.
MIXTRAL_8X7B_4_LAYERS = {"layers": 4, "hidden": 4096, "intermediate": 14336, "experts": 8, "vocab": 32000,
                         "heads": 32, "kv_heads": 8}
#: Written last into a finished checkpoint folder; its JSON is the shape the folder holds.
MARKER = "moescope-complete.json"
_STD = 0.02          # the initializer_range of Mixtral's config: the scale of a freshly initialised weight
_POOL = 1 << 25  # 32 Mi Gaussian values (64 MB in bf16) drawn once; pieces of half of it have 16 Mi offsets each
# What a finished or half-written folder may hold: anything else means the folder is not ours to replace.
_OURS = re.compile(r"^(config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|"
                   r"model\.safetensors\.index\.json|tokenizer(_config)?\.json|special_tokens_map\.json|"
                   + re.escape(MARKER) + r")$")


def bench_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/moescope/bench`` (``~/.cache/moescope/bench`` when unset): where benchmarks keep
    what they make once."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "moescope" / "bench"


def _config(*, layers: int, hidden: int, intermediate: int, experts: int, vocab: int, heads: int, kv_heads: int):
    from transformers import MixtralConfig

    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate),
                        ("experts", experts), ("heads", heads), ("kv_heads", kv_heads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
    if experts < 2:
        raise ValueError(f"experts must be >= 2 (Mixtral routes every token to 2); got experts={experts}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}) and heads a multiple of kv_heads "
                         f"({kv_heads})")
    if vocab < 300:  # 256 byte-level symbols + 3 special tokens, and some merges
        raise ValueError(f"vocab must be >= 300 (the byte-level tokenizer alone has 259 tokens); got vocab={vocab}")
    return MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         num_local_experts=experts, num_experts_per_tok=2, max_position_embeddings=32768,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, dtype="bfloat16")


def _layer_order(name: str) -> tuple[int, str]:
    """Embeddings first, decoder layers in order, then the final norm and the head (a reader's order)."""
    m = re.match(r"model\.layers\.(\d+)\.", name)
    if m:
        return 1 + int(m.group(1)), name
    return (0, name) if "embed" in name else (1 << 30, name)


def checkpoint_spec(config) -> list[tuple[str, tuple[int, ...]]]:
    """(on-disk name, shape) of every tensor ``MixtralForCausalLM(config).save_pretrained`` writes, in file order.

    Built from the real class on the ``meta`` device and transformers' ``revert_weight_conversion``
    (what ``save_pretrained`` applies), so a transformers release that renames keys changes this too.
    """
    from transformers import MixtralForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    state = revert_weight_conversion(model, model.state_dict())
    return sorted(((name, tuple(t.shape)) for name, t in state.items()), key=lambda s: _layer_order(s[0]))


def _shards(spec: list[tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive groups of tensors of at most ``shard_bytes`` each (bf16), one tensor at least per group."""
    groups, size = [[]], 0
    for name, shape in spec:
        nbytes = 2 * math.prod(shape)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    return groups


class _Weights:
    """Random N(0, 0.02²) bf16 tensors assembled from one Gaussian pool: pieces of at most half the pool
    at random offsets with random signs (norm gains are ones, as at initialisation). Every tensor is
    built in one reused buffer of ``largest`` values (a view of it is returned: write it before the next call)."""

    def __init__(self, seed: int, largest: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.size = min(_POOL, max(2 * largest, 1 << 16))  # a tiny model needs no 64 MB pool
        self.pool = torch.empty(self.size, dtype=torch.bfloat16).normal_(0.0, _STD, generator=self.gen)
        self.buffer = torch.empty(largest, dtype=torch.bfloat16)

    def __call__(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        out = self.buffer[:n]
        if name.endswith("norm.weight"):
            return out.fill_(1.0).view(shape)
        piece = self.size // 2
        for start in range(0, n, piece):
            k = min(piece, n - start)
            offset = int(torch.randint(0, self.size - k + 1, (1,), generator=self.gen))
            sign = 1.0 if torch.rand((), generator=self.gen) < 0.5 else -1.0
            torch.mul(self.pool[offset : offset + k], sign, out=out[start : start + k])
        return out.view(shape)


def _save_tokenizer(path: Path, vocab: int) -> None:
    """A byte-level BPE tokenizer of at most ``vocab`` tokens trained on the built-in sample text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from moescope.analysis.sample_text import sample_domains

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(sample_domains().values()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def _finished(root: Path, shape: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == shape
    except (OSError, ValueError):
        return False


def _check_replaceable(root: Path) -> None:
    """``root`` (which exists) holds only what this module writes; else refuse to delete it."""
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; give another checkpoint folder")
    foreign = sorted(p.name for p in root.iterdir() if not _OURS.match(p.name))
    if foreign:
        raise ValueError(f"{root} is not a finished benchmark checkpoint and holds files this module does not write "
                         f"({', '.join(foreign[:5])}); it will not be replaced: give another folder or remove it")


def _remove_stale_temps(root: Path) -> None:
    """Delete temporary siblings left by writers that died (their process id no longer exists)."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def make_mixtral_checkpoint(root: str | os.PathLike, *, layers: int = 4, hidden: int = 4096,
                            intermediate: int = 14336, experts: int = 8, vocab: int = 32000, heads: int = 32,
                            kv_heads: int = 8, seed: int = 0, shard_bytes: int = 2 * 10**9) -> Path:
    """The Mixtral checkpoint of this shape in folder ``root``: reused if finished, else written (atomically).

    Args:
        root: the checkpoint folder. Reused when its :data:`MARKER` names this very shape and seed;
            rebuilt when it has no marker or another shape (only if it holds nothing but checkpoint
            files); created otherwise, through a temporary sibling renamed into place.
        layers, hidden, intermediate, experts, vocab, heads, kv_heads: the config's
            ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_local_experts``,
            ``vocab_size``, ``num_attention_heads``, ``num_key_value_heads`` (Mixtral-8x7B's by default).
        seed: of the weights.
        shard_bytes: the most bytes of tensors per shard (a shard holds one tensor at least).

    Returns:
        ``root``, a folder ``MixtralForCausalLM.from_pretrained`` and ``moescope.models.load_moe_model`` load.

    Raises:
        ValueError: a bad shape, ``root`` holding files that are not a checkpoint's, too little free disk.
    """
    root = Path(root).expanduser().absolute()
    config = _config(layers=layers, hidden=hidden, intermediate=intermediate, experts=experts, vocab=vocab,
                     heads=heads, kv_heads=kv_heads)
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1; got {shard_bytes}")
    shape = {"layers": layers, "hidden": hidden, "intermediate": intermediate, "experts": experts, "vocab": vocab,
             "heads": heads, "kv_heads": kv_heads, "seed": seed, "shard_bytes": shard_bytes, "dtype": "bfloat16"}
    if _finished(root, shape):
        return root
    if root.exists():
        _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    spec = checkpoint_spec(config)
    total = sum(2 * math.prod(s) for _, s in spec)
    free = shutil.disk_usage(root.parent).free
    if free < total + 2**28:
        raise ValueError(f"{root.parent} has {free / 1e9:.1f} GB free; this checkpoint needs {total / 1e9:.1f} GB")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config.save_pretrained(tmp)
        groups, make = _shards(spec, shard_bytes), _Weights(seed, max(math.prod(s) for _, s in spec))
        weight_map = {}
        for i, group in enumerate(groups, 1):
            fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            shapes = dict(group)
            write_safetensors(tmp / fname, [(n, s, torch.bfloat16) for n, s in group],
                              lambda n, shapes=shapes: make(n, shapes[n]))
            fsync_path(tmp / fname)
            weight_map.update(dict.fromkeys(shapes, fname))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _save_tokenizer(tmp, vocab)
        (tmp / MARKER).write_text(json.dumps(shape))
        if root.exists():
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _finished(root, shape):  # another writer did not win the race either
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
