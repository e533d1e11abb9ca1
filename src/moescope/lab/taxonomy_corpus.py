"""A corpus with explicit hierarchy beside flat text, and its word-level tokenizer (claim 18's own data).

Generated deterministically from a seed; the lab's main corpus (:mod:`moescope.lab.corpus`) is untouched.

* **Hierarchical sentences** walk a taxonomy: a tree of named categories (``branching`` children per
  node, ``depth`` levels below the root, made-up pronounceable names). A sentence is a root-to-node path,
  ``"entity > bako > tiru > mesa ."``, or the same path read upwards, ``"mesa < tiru < bako < entity ."``:
  the upward form is predictable token by token once the tree is learnt (every node has one parent),
  the downward one has ``log(branching)`` nats of choice per step.
* **Flat sentences** have no hierarchy: one-digit sums, ``"3 + 4 = 7 ."``, and lists of 3–5 words drawn
  uniformly from a pool of words that never occur in the taxonomy.

Sentences are drawn half hierarchical, half flat, concatenated into one token stream and cut into
windows. Every token carries a label: 1 in a hierarchical sentence, 0 in a flat one, −1 for the
full stop that ends both kinds (it belongs to neither).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FLAT", "HIER", "SHARED", "TaxonomyCorpus", "WordTokenizer", "build_corpus", "make_taxonomy"]

HIER, FLAT, SHARED = 1, 0, -1
_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()
_ROOT, _STOP, _DOWN, _UP = "entity", ".", ">", "<"
_ARITH = ("+", "=")


def _names(count: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``count`` distinct two-syllable names (CVCV) not in ``taken`` (which they join)."""
    out = []
    while len(out) < count:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def make_taxonomy(branching: int, depth: int, rng: np.random.Generator, taken: set[str]) -> dict[str, str | None]:
    """parent of every category (the root ``entity`` has None), children named from ``rng``."""
    parent: dict[str, str | None] = {_ROOT: None}
    level = [_ROOT]
    for _ in range(depth):
        nxt = []
        for node in level:
            for child in _names(branching, rng, taken):
                parent[child] = node
                nxt.append(child)
        level = nxt
    return parent


class WordTokenizer:
    """Word-level: one id per whitespace-separated word of a fixed vocabulary (given in order)."""

    def __init__(self, vocab: list[str]) -> None:
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not repeat words")
        self.vocab = list(vocab)
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


@dataclass(frozen=True)
class TaxonomyCorpus:
    """Token windows with per-token labels.

    Attributes:
        tokenizer: the word-level tokenizer.
        train, held_out: (N, L + 1) int64 windows (inputs are [:, :-1], targets [:, 1:]).
        train_labels, held_out_labels: the same shapes, int64 HIER / FLAT / SHARED per token.
        parent: the taxonomy (child -> parent).
    """

    tokenizer: WordTokenizer
    train: torch.Tensor
    train_labels: torch.Tensor
    held_out: torch.Tensor
    held_out_labels: torch.Tensor
    parent: dict[str, str | None]


def _path(node: str, parent: dict[str, str | None]) -> list[str]:
    path = [node]
    while (p := parent[path[-1]]) is not None:
        path.append(p)
    return path[::-1]                                                  # root first


def _sentence(rng: np.random.Generator, nodes: list[str], parent: dict, flat_words: list[str]) -> tuple[str, int]:
    if rng.random() < 0.5:
        path = _path(nodes[int(rng.integers(len(nodes)))], parent)
        text = f" {_DOWN} ".join(path) if rng.random() < 0.5 else f" {_UP} ".join(path[::-1])
        return text, HIER
    if rng.random() < 0.5:
        a, b = (int(v) for v in rng.integers(0, 10, size=2))
        return f"{a} + {b} = {a + b}", FLAT
    return " ".join(flat_words[int(i)] for i in rng.integers(len(flat_words), size=int(rng.integers(3, 6)))), FLAT


def _stream(n_tokens: int, rng: np.random.Generator, tok: WordTokenizer, nodes: list[str], parent: dict,
            flat_words: list[str]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    stop = tok.ids[_STOP]
    while len(ids) < n_tokens:
        text, kind = _sentence(rng, nodes, parent, flat_words)
        words = tok.encode(text)
        ids += [*words, stop]
        labels += [kind] * len(words) + [SHARED]
    return ids[:n_tokens], labels[:n_tokens]


def _windows(ids: list[int], labels: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ids) // width
    shape = (n, width)
    return (torch.tensor(ids[: n * width], dtype=torch.int64).view(shape),
            torch.tensor(labels[: n * width], dtype=torch.int64).view(shape))


def build_corpus(seed: int, *, seq_len: int = 24, train_windows: int = 512, held_out_windows: int = 128,
                 branching: int = 3, depth: int = 3, flat_vocab: int = 40) -> TaxonomyCorpus:
    """The corpus of ``seed``: the taxonomy, the flat words and both token streams all come from it."""
    for name, v in (("seq_len", seq_len), ("train_windows", train_windows), ("held_out_windows", held_out_windows),
                    ("branching", branching), ("depth", depth), ("flat_vocab", flat_vocab)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
    rng = np.random.default_rng([seed, 18])
    taken = {_ROOT}
    parent = make_taxonomy(branching, depth, rng, taken)
    flat_words = _names(flat_vocab, rng, taken)
    nodes = [n for n in parent if n != _ROOT]
    vocab = [_STOP, _DOWN, _UP, *_ARITH, *(str(i) for i in range(19)), *parent, *flat_words]
    tok = WordTokenizer(vocab)
    width = seq_len + 1
    train = _windows(*_stream(train_windows * width, np.random.default_rng([seed, 18, 1]), tok, nodes, parent,
                              flat_words), width)
    held = _windows(*_stream(held_out_windows * width, np.random.default_rng([seed, 18, 2]), tok, nodes, parent,
                             flat_words), width)
    return TaxonomyCorpus(tokenizer=tok, train=train[0], train_labels=train[1], held_out=held[0],
                          held_out_labels=held[1], parent=parent)
