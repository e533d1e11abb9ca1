"""Every ```python block of README.md runs, so the README cannot drift from the code.

Each block runs on its own, in a fresh namespace (``runpy``-style ``exec`` of the block's
source) inside a temporary working directory: the README's blocks are written to be copied
one at a time, so each must define or build everything it uses (no names carried over from an
earlier block, no files left behind by one). A test case is named by the line of the block's
opening fence (``README.md:119``), so a failure points at the block. ``bash`` and ``text``
blocks are commands and transcripts, not executed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, 1-based; source) of every ```python block, in order."""
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if lang is None and fence:
            lang, start, body = fence.group(1), number, []
        elif lang is not None and line.rstrip() == "```":
            if lang == "python":
                blocks.append((start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        raise ValueError(f"README.md:{start}: ```{lang} block is never closed")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block: the parser or the README changed"


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(source, f"README.md:{line}", "exec")   # tracebacks name the README block
    exec(code, {"__name__": f"readme_block_{line}"})
