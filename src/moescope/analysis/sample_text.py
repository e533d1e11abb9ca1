"""A small labelled sample of text every machine has, for when the user gives none.

Three domains, built offline from the running interpreter: **code** (Python standard-library
source), **language** (English prose of Python's bundled documentation topics,
``pydoc_data.topics``), **math** (generated arithmetic and algebra with correct answers).
Deterministic: the same interpreter gives the same text.
"""

from __future__ import annotations

import inspect
import random
import re

_CODE_MODULES = ("json.decoder", "textwrap", "fractions", "heapq", "bisect", "calendar")
_PROSE_TOPICS = ("assignment", "for", "if", "while", "try", "with", "function", "class", "numbers",
                 "sequence-types", "typesmapping", "exceptions", "import", "lambda", "context-managers")


def code_text(max_chars: int) -> str:
    import importlib

    parts, total = [], 0
    for name in _CODE_MODULES:
        src = inspect.getsource(importlib.import_module(name))
        parts.append(src)
        total += len(src)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def prose_text(max_chars: int) -> str:
    from pydoc_data.topics import topics

    parts = []
    for key in _PROSE_TOPICS:
        text = topics.get(key, "")
        # keep prose lines, drop indented code examples and reST markup
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t", ">>>"))]
        parts.append(re.sub(r"[*`]+|\[\d+\]", "", " ".join(lines)))
    return "\n".join(parts)[:max_chars]


def math_text(max_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, total = [], 0
    while total < max_chars:
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(1, 9)
        kind = rng.randrange(4)
        if kind == 0:
            line = f"{a} + {b} = {a + b}"
        elif kind == 1:
            line = f"{a} * {b} = {a * b}"
        elif kind == 2:  # c x + a = c b + a  ->  x = b
            line = f"Solve {c}x + {a} = {c * b + a}. Then x = {b}."
        else:
            line = f"The derivative of {c}x^3 + {a}x^2 + {b}x is {3 * c}x^2 + {2 * a}x + {b}."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:max_chars]


def sample_domains(max_chars: int = 20_000) -> dict[str, str]:
    """{"code": ..., "language": ..., "math": ...}, each about ``max_chars`` characters."""
    return {"code": code_text(max_chars), "language": prose_text(max_chars), "math": math_text(max_chars)}
