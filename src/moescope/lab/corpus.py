"""A three-domain corpus built at run time from what every Python installation has.

* **code** — Python source of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``), test packages and ``site-packages`` left out;
* **language** — the English prose of Python's bundled documentation topics
  (``pydoc_data.topics``), with headings, grammar rules, code examples and markup removed;
* **math** — generated arithmetic and algebra statements whose answers are correct (sums,
  differences, products, linear equations and their solutions, derivatives of polynomials),
  drawn from ``random.Random(seed)``.

Each domain is cut into documents of at most ``doc_chars`` characters (at line or paragraph
boundaries) until ``chars_per_domain`` characters are collected. Files are taken in the order
of a hash of their path relative to the standard library, so a small budget still samples
the whole library instead of its first letters. Train and validation are split *by
document*: within a domain, documents are sorted by a hash of their id and the first
``round(val_fraction · n)`` (at least one) go to validation. Nothing depends on the clock
or the file system's listing order, so the same interpreter and config give the same
corpus; the seed changes the math documents only.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import sysconfig
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

DOMAINS = ("code", "language", "math")
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class CorpusConfig:
    """What :func:`build_corpus` collects."""

    chars_per_domain: int = 300_000  # ~100k BPE tokens per domain: a few passes for a tiny LM
    val_fraction: float = 0.1        # held-out documents per domain, for per-domain validation loss
    seed: int = 0                    # drives the math generator only (code and prose are fixed text)
    doc_chars: int = 4_000           # a document is at most this long: many documents -> a fine split

    def __post_init__(self) -> None:
        if not isinstance(self.chars_per_domain, int) or self.chars_per_domain < 1_000:
            raise ValueError(f"chars_per_domain must be an integer >= 1000; got {self.chars_per_domain!r}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5); got {self.val_fraction!r}")
        if not isinstance(self.doc_chars, int) or not 200 <= self.doc_chars <= self.chars_per_domain:
            raise ValueError(f"doc_chars must be an integer in [200, chars_per_domain={self.chars_per_domain}]; "
                             f"got {self.doc_chars!r}")


@dataclass(frozen=True)
class Document:
    """One labelled document.

    Attributes:
        text: the document's text.
        domain: ``code``, ``language`` or ``math``.
        source: where it came from: a path relative to the stdlib with a line range
            (``json/decoder.py:1-120``), a pydoc topic (``pydoc_data.topics:for#0``) or the
            generator (``math:seed=0#12``). Unique within a corpus.
    """

    text: str
    domain: str
    source: str

    @property
    def doc_id(self) -> str:
        return f"{self.domain}:{self.source}"


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Corpus:
    """The documents of all domains and their train/validation split."""

    config: CorpusConfig
    documents: tuple[Document, ...]
    val_ids: frozenset[str]
    stdlib: str
    code_files: int

    @property
    def train(self) -> tuple[Document, ...]:
        return tuple(d for d in self.documents if d.doc_id not in self.val_ids)

    @property
    def val(self) -> tuple[Document, ...]:
        return tuple(d for d in self.documents if d.doc_id in self.val_ids)

    def split(self, name: str) -> tuple[Document, ...]:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val'; got {name!r}")
        return self.train if name == "train" else self.val

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every document's split, domain, source and text (identifies the corpus)."""
        h = hashlib.sha256()
        for d in self.documents:
            for part in ("val" if d.doc_id in self.val_ids else "train", d.domain, d.source, d.text):
                h.update(part.encode("utf-8"))
                h.update(b"\0")
        return h.hexdigest()

    def provenance(self) -> dict:
        """Sizes per domain and split and where the text came from, for results.json."""
        sizes: dict[str, dict[str, dict[str, int]]] = {}
        for dom in DOMAINS:
            sizes[dom] = {}
            for split in ("train", "val"):
                docs = [d for d in self.split(split) if d.domain == dom]
                sizes[dom][split] = {"documents": len(docs), "chars": sum(len(d.text) for d in docs)}
        return {"config": asdict(self.config), "python_version": sys.version.split()[0],
                "python_implementation": sys.implementation.name, "stdlib": self.stdlib,
                "code_files": self.code_files, "sizes": sizes, "fingerprint": self.fingerprint,
                "sources": {"code": "Python standard library source (tests and site-packages excluded)",
                            "language": "pydoc_data.topics prose (headings, grammar, code examples removed)",
                            "math": f"generated arithmetic and algebra, random.Random({self.config.seed})"}}


# -- code ----------------------------------------------------------------------------------------
def stdlib_files(root: str | os.PathLike) -> list[Path]:
    """The standard library's ``.py`` files outside test packages and site-packages, sorted."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _chunks(lines: list[str], limit: int, sep: str) -> list[tuple[int, int, str]]:
    """Greedy runs of whole ``lines`` of at most ``limit`` characters -> (first, last, text).

    A single line longer than ``limit`` is cut.
    """
    out, start, buf, size = [], 0, [], 0
    for i, line in enumerate(lines):
        line = line[:limit]
        if buf and size + len(sep) + len(line) > limit:
            out.append((start, i - 1, sep.join(buf)))
            start, buf, size = i, [], 0
        size += len(line) + (len(sep) if buf else 0)
        buf.append(line)
    if buf:
        out.append((start, len(lines) - 1, sep.join(buf)))
    return out


def code_documents(root: str | os.PathLike, budget: int, doc_chars: int,
                   chunks_per_file: int = 4) -> tuple[list[Document], int]:
    """Stdlib source cut into documents, files in hash order, until ``budget`` characters.

    At most ``chunks_per_file`` documents come from one file, so a few huge modules
    (``_pydecimal.py`` is 230k characters) cannot fill the budget alone. Returns the
    documents and the number of files they came from.
    """
    root = Path(root)
    files = sorted(stdlib_files(root), key=lambda p: _hash(p.relative_to(root).as_posix()))
    docs, total, used = [], 0, 0
    for path in files:
        if total >= budget:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root).as_posix()
        lines = [ln.rstrip() for ln in text.splitlines()]
        took = False
        for first, last, chunk in _chunks(lines, doc_chars, "\n")[:chunks_per_file]:
            if total >= budget:
                break
            if not chunk.strip():
                continue
            chunk = chunk[: budget - total]
            docs.append(Document(chunk, "code", f"{rel}:{first + 1}-{last + 1}"))
            total += len(chunk)
            took = True
        used += took
    return docs, used


# -- language ------------------------------------------------------------------------------------
_HEADING = re.compile(r"\s*([*=\-^~#])\1{2,}\s*")
_EMPHASIS = re.compile(r"\*{1,2}([^*\n]+?)\*{1,2}")
_FOOTNOTE = re.compile(r"\[\d+\]")


def is_prose(paragraph: str) -> bool:
    """A paragraph of running English: starts like a sentence, ends with punctuation, mostly letters.

    Rejected: headings (and their underlines), grammar rules (``::=``), interactive examples
    (``>>>``), table rows, and code blocks (which rarely start with a capital and end with a
    full stop, and are not mostly letters).
    """
    lines = [ln for ln in paragraph.splitlines() if ln.strip()]
    if not lines or any(_HEADING.fullmatch(ln) for ln in lines):
        return False
    text = " ".join(ln.strip() for ln in lines)
    if "::=" in text or any(ln.lstrip().startswith((">>>", "...", "|", "+-", "=====")) for ln in lines):
        return False
    if not (text[0].isupper() or text[0] in "\"(" or re.match(r"\d+\. [A-Z\"]", text)):
        return False
    if not text.endswith((".", ":", "?", "!", ")", '."')):
        return False
    plain = _FOOTNOTE.sub("", _EMPHASIS.sub(r"\1", text))  # judge the text, not its markup
    letters = sum(c.isalpha() or c.isspace() for c in plain)
    return letters / max(1, len(plain)) > 0.75


def clean_prose(text: str) -> list[str]:
    """A pydoc topic -> its prose paragraphs, each on one line, markup (``*x*``, ``[1]``) removed."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if is_prose(para):
            line = " ".join(ln.strip() for ln in para.splitlines() if ln.strip())
            line = _FOOTNOTE.sub("", _EMPHASIS.sub(r"\1", line))
            out.append(re.sub(r"\s{2,}", " ", line).strip())
    return out


def language_documents(budget: int, doc_chars: int) -> list[Document]:
    """Prose of ``pydoc_data.topics`` (topics in sorted order), paragraphs grouped into documents."""
    from pydoc_data.topics import topics

    docs, total = [], 0
    for key in sorted(topics):
        if total >= budget:
            break
        for n, (_, _, chunk) in enumerate(_chunks(clean_prose(topics[key]), doc_chars, "\n\n")):
            if total >= budget:
                break
            chunk = chunk[: budget - total]
            docs.append(Document(chunk, "language", f"pydoc_data.topics:{key}#{n}"))
            total += len(chunk)
    return docs


# -- math ----------------------------------------------------------------------------------------
def _poly(coefs: list[int]) -> str:
    """[a_n, ..., a_0] -> 'a_n x^n + ... + a_0' with zero terms left out (signs written out)."""
    n, terms = len(coefs) - 1, []
    for i, c in enumerate(coefs):
        p = n - i
        if c == 0:
            continue
        mag = abs(c)
        body = (str(mag) if mag != 1 or p == 0 else "") + ("x" if p >= 1 else "") + (f"^{p}" if p >= 2 else "")
        terms.append(("- " if c < 0 else "+ ") + body)
    if not terms:
        return "0"
    s = " ".join(terms)
    return s[2:] if s.startswith("+ ") else "-" + s[2:]


def math_statement(rng: random.Random) -> str:
    """One correct statement: a sum, difference, product, linear equation or derivative."""
    kind = rng.randrange(6)
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    if kind == 0:
        return f"{a} + {b} = {a + b}"
    if kind == 1:
        return f"{a} - {b} = {a - b}"
    if kind == 2:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return f"{a} * {b} = {a * b}"
    if kind == 3:  # c x + d = e with integer solution x
        c, x, d = rng.choice([i for i in range(-12, 13) if i not in (0, 1)]), rng.randint(-50, 50), rng.randint(-99, 99)
        return f"Solve {_poly([c, d])} = {c * x + d}. Then x = {x}."
    if kind == 4:  # two-step: (c x + d) / m = q
        m, c, x = rng.randint(2, 9), rng.randint(2, 9), rng.randint(-20, 20)
        d = rng.randint(-30, 30)
        d += (-(c * x + d)) % m  # make c x + d divisible by m
        return f"Solve ({_poly([c, d])}) / {m} = {(c * x + d) // m}. Then x = {x}."
    deg = rng.randint(2, 4)
    coefs = [rng.randint(1, 9)] + [rng.randint(-9, 9) for _ in range(deg)]
    deriv = [c * (deg - i) for i, c in enumerate(coefs[:-1])]
    return f"The derivative of {_poly(coefs)} is {_poly(deriv)}."


def math_documents(budget: int, doc_chars: int, seed: int) -> list[Document]:
    """Worksheets of generated statements, one per line, deterministic from ``seed``.

    Only whole statements are written (a cut one could state a wrong answer), so a domain
    ends a few characters short of ``budget``.
    """
    rng = random.Random(seed)
    docs: list[Document] = []
    total, lines, size = 0, [], 0

    def close() -> None:
        docs.append(Document("\n".join(lines), "math", f"math:seed={seed}#{len(docs)}"))

    while True:
        line = math_statement(rng)
        grow = len(line) + (1 if lines else 0)
        if total + size + grow > budget:
            break
        if lines and size + grow > doc_chars:
            close()
            total, lines, size, grow = total + size, [], 0, len(line)
        lines.append(line)
        size += grow
    if lines:
        close()
    return docs


# -- the corpus ----------------------------------------------------------------------------------
def split_validation(docs: list[Document], val_fraction: float) -> set[str]:
    """Ids of the validation documents: per domain, the first round(f·n) (>= 1) by hash of the id."""
    val: set[str] = set()
    for dom in DOMAINS:
        ids = sorted((d.doc_id for d in docs if d.domain == dom), key=_hash)
        if len(ids) < 2:
            raise ValueError(f"domain {dom!r} has {len(ids)} document(s); train and validation need >= 2 "
                             f"(raise chars_per_domain or lower doc_chars)")
        n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
        val.update(ids[:n_val])
    return val


def build_corpus(cfg: CorpusConfig | None = None) -> Corpus:
    """Collect the three domains under ``cfg`` and split them into train and validation."""
    cfg = cfg or CorpusConfig()
    stdlib = sysconfig.get_paths()["stdlib"]
    code, n_files = code_documents(stdlib, cfg.chars_per_domain, cfg.doc_chars)
    docs = code + language_documents(cfg.chars_per_domain, cfg.doc_chars) + \
        math_documents(cfg.chars_per_domain, cfg.doc_chars, cfg.seed)
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):  # cannot happen by construction; the split relies on it
        raise RuntimeError("duplicate document ids in the corpus")
    return Corpus(config=cfg, documents=tuple(docs), val_ids=frozenset(split_validation(docs, cfg.val_fraction)),
                  stdlib=stdlib, code_files=n_files)
