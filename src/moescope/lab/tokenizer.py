"""Byte-level BPE for the lab corpus (Hugging Face ``tokenizers``), cached beside the results.

The tokenizer is trained on the *training* split only (validation text must not shape the
vocabulary). Byte-level pre-tokenisation (GPT-2's scheme) maps every byte to a symbol, so
any string, non-ASCII included, encodes and decodes back exactly. Three special tokens come
first in the vocabulary: ``<|endoftext|>`` (0, separates documents in the token stream),
``<|mask|>`` (1, the masked-token objective's input) and ``<|pad|>`` (2).

``tokenizer.json`` is reused when the sidecar ``tokenizer.fingerprint.json`` names the same
corpus fingerprint and settings; otherwise it is retrained and both files are rewritten
atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from moescope._files import write_json_atomic, write_text_atomic
from moescope.lab.corpus import DOMAINS, Corpus

EOT, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
SPECIAL_TOKENS = (EOT, MASK, PAD)
TOKENIZER_FILE, FINGERPRINT_FILE = "tokenizer.json", "tokenizer.fingerprint.json"
_SCHEME = "byte-level-bpe/v1"  # bump when the training recipe changes: invalidates caches


def _check_vocab(vocab_size: int) -> None:
    smallest = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or not smallest <= vocab_size <= 65_536:
        raise ValueError(f"vocab_size must be an integer in [{smallest}, 65536] (the lab uses 2048–4096); "
                         f"got {vocab_size!r}")


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens (specials and the 256 byte symbols included)."""
    _check_vocab(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def fingerprint(corpus: Corpus, vocab_size: int) -> str:
    """What the cached tokenizer must match: the corpus, the vocabulary size, the recipe."""
    return hashlib.sha256(f"{_SCHEME}|{vocab_size}|{corpus.fingerprint}".encode()).hexdigest()


def load_or_train_tokenizer(corpus: Corpus, out_dir: str | Path, vocab_size: int = 2048) -> Tokenizer:
    """The tokenizer cached in ``out_dir`` if it matches ``corpus`` and ``vocab_size``, else a new one."""
    _check_vocab(vocab_size)
    out_dir = Path(out_dir)
    want = fingerprint(corpus, vocab_size)
    tok_path, fp_path = out_dir / TOKENIZER_FILE, out_dir / FINGERPRINT_FILE
    if tok_path.exists() and fp_path.exists():
        try:
            meta = json.loads(fp_path.read_text())
            if meta.get("fingerprint") == want:
                return Tokenizer.from_file(str(tok_path))
        except Exception:  # a damaged cache (bad JSON, unreadable file) is retrained, never trusted
            pass
    tok = train_tokenizer([d.text for d in corpus.train], vocab_size)
    write_text_atomic(tok_path, tok.to_str())
    write_json_atomic(fp_path, {"fingerprint": want, "corpus_fingerprint": corpus.fingerprint,
                                "vocab_size": vocab_size, "scheme": _SCHEME})
    return tok


def to_hf_tokenizer(tok: Tokenizer, *, model_max_length: int | None = None):
    """The lab tokenizer as a transformers ``PreTrainedTokenizerFast``, the same BPE underneath.

    The ``tokenizers`` object is wrapped, not retrained or re-serialised by hand, so the ids
    are the lab's: no special token is added around a text (the lab tokenizer has no
    post-processor), ``<|endoftext|>`` is the end-of-sequence token, ``<|pad|>`` the padding
    and ``<|mask|>`` the mask token. ``save_pretrained`` writes ``tokenizer.json`` beside its
    settings, which ``AutoTokenizer.from_pretrained`` reads back.
    """
    from transformers import PreTrainedTokenizerFast  # lazy: the lab trains without transformers loaded

    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"the tokenizer lacks the lab's special tokens {missing}; train it with train_tokenizer")
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()), eos_token=EOT,
                                   pad_token=PAD, mask_token=MASK, **kwargs)


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: list[int]) -> str:
    """Exact inverse of :func:`encode` (special tokens are kept, not skipped)."""
    return tok.decode(ids, skip_special_tokens=False)


@dataclass(frozen=True)
class CorpusTokens:
    """The corpus as token ids, what training and evaluation consume.

    Attributes:
        train: (N,) int64 the training documents' tokens, each document followed by
            ``<|endoftext|>``; batches are windows of this stream.
        val: domain -> (N_d,) int64 the validation documents of that domain, likewise.
        train_by_domain: domain -> (N_d,) the training documents of that domain (for the
            final train loss per domain and for routing analysis).
        vocab_size, eot_id, mask_id, pad_id: the tokenizer's.
        fingerprint: sha256 of the corpus fingerprint and the tokenizer's JSON.
    """

    train: Tensor
    val: dict[str, Tensor]
    train_by_domain: dict[str, Tensor]
    vocab_size: int
    eot_id: int
    mask_id: int
    pad_id: int
    fingerprint: str

    def provenance(self) -> dict:
        return {"vocab_size": self.vocab_size, "train_tokens": int(self.train.numel()),
                "train_tokens_by_domain": {k: int(v.numel()) for k, v in self.train_by_domain.items()},
                "val_tokens_by_domain": {k: int(v.numel()) for k, v in self.val.items()},
                "tokenizer_fingerprint": self.fingerprint}


def tokenize_corpus(corpus: Corpus, tok: Tokenizer) -> CorpusTokens:
    """Encode every document once; streams keep the corpus order, documents end with EOT."""
    eot = tok.token_to_id(EOT)
    ids = [e.ids for e in tok.encode_batch([d.text for d in corpus.documents], add_special_tokens=False)]
    val_ids = corpus.val_ids

    def stream(pick) -> Tensor:
        out: list[int] = []
        for doc, tokens in zip(corpus.documents, ids, strict=True):
            if pick(doc):
                out.extend(tokens)
                out.append(eot)
        return torch.tensor(out, dtype=torch.int64)

    size = tok.get_vocab_size()  # may fall short of the requested size on a tiny corpus
    return CorpusTokens(
        train=stream(lambda d: d.doc_id not in val_ids),
        val={dom: stream(lambda d, dom=dom: d.domain == dom and d.doc_id in val_ids) for dom in DOMAINS},
        train_by_domain={dom: stream(lambda d, dom=dom: d.domain == dom and d.doc_id not in val_ids)
                         for dom in DOMAINS},
        vocab_size=size, eot_id=eot, mask_id=tok.token_to_id(MASK), pad_id=tok.token_to_id(PAD),
        fingerprint=hashlib.sha256(f"{corpus.fingerprint}|{tok.to_str()}".encode()).hexdigest())
