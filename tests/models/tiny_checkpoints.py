"""Tiny random checkpoints of every model family in the registry, saved to disk.

One file per family in ``tests/models/tiny/`` (named by the family or by one of its model types,
e.g. ``llama4_text.py``) defines ``build()``, the untrained model built from its *real* config
class with the sizes of ``tiny/_common.py`` (two decoder layers, hidden 32, expert width 24 so
that no weight is square and a transposed layout cannot pass by accident), and optionally
``randomize(model, generator)``, called after the common randomisation with the same generator
to switch on that family's traps (DeepSeek-V3's non-zero ``e_score_correction_bias``, GPT-OSS
weights large enough to hit its ±limit clamp, ...). :data:`BUILDERS` is discovered from those
files, keyed by file name. :func:`save` gives the model random non-trivial weights and writes it
with ``save_pretrained`` next to a tiny byte-level BPE tokenizer trained here with the
``tokenizers`` library (no hub access anywhere).
"""

from __future__ import annotations

import importlib
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

if str(Path(__file__).parent) not in sys.path:  # tiny/: one file per family
    sys.path.insert(0, str(Path(__file__).parent))

from tiny._common import COMMON, VOCAB, E, H, I  # noqa: F401  (E, H, I: re-exported for the tests)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "Random vectors in high dimension are almost orthogonal.",
    "x = 3 * (y + 2) - 7 / z",
    "Mixture of experts routes every token to a few experts.",
    "Almost all of the sphere lies near the equator.",
    "for i in range(10): print(i ** 2)",
    "Experts specialise by domain: math, language and code.",
] * 4


def _discover() -> dict[str, object]:
    """file name -> module, for every ``tiny/<name>.py`` not starting with ``_``, sorted by name."""
    names = sorted(f.stem for f in (Path(__file__).parent / "tiny").glob("*.py") if not f.stem.startswith("_"))
    return {name: importlib.import_module(f"tiny.{name}") for name in names}


MODULES = _discover()
#: file name (a family name or one of its model types) -> build() of its untrained tiny model
BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {name: m.build for name, m in MODULES.items()}
#: The first twelve families: two decoder layers of 8 experts each (DeepSeek-V3's first layer dense),
#: checked beyond the common checks by ``test_families.py`` (the block's output rebuilt from the view).
ORIGINAL = ("deepseek_v2", "deepseek_v3", "gpt_oss", "granitemoe", "granitemoeshared", "llama4_text", "mixtral",
            "olmoe", "phimoe", "qwen2_moe", "qwen3_moe", "switch_transformers")


def saver(root: Path) -> Callable[[str], Path]:
    """family -> directory under ``root`` of its tiny checkpoint (with a tokenizer), saved on first request."""
    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            saved[family] = save(family, root / family, seed=seed_of(family))
        return saved[family]

    return get


def seed_of(family: str) -> int:
    """A seed for ``family``'s checkpoint that does not move when families are added (crc32 of the name)."""
    return zlib.crc32(family.encode()) % 10_000


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random N(0, 0.3²) weights everywhere (norm gains near 1), so routing is far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "norm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """``family``'s tiny model with the common random weights, then its own ``randomize`` hook, if any."""
    model = BUILDERS[family]()
    g = torch.Generator().manual_seed(seed)
    _randomize(model, g)
    hook = getattr(MODULES[family], "randomize", None)
    if hook is not None:
        hook(model, g)
    return model.float().eval()


def save_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer trained on :data:`SENTENCES`, loadable by ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def save(family: str, path: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """Build ``family``'s tiny model and save it (and the tokenizer) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    build(family, seed).save_pretrained(path)
    if tokenizer:
        save_tokenizer(path)
    return path


def save_dense(path: Path) -> Path:
    """A tiny dense Llama (no MoE layer) for the error path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(LlamaConfig(**COMMON, intermediate_size=40)).save_pretrained(path)
    return path
