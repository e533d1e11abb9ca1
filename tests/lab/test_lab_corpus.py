import re
import sysconfig
from fractions import Fraction
from pathlib import Path

import pytest
from lab_fixtures import TINY_CORPUS, tiny_corpus

from moescope.lab.corpus import DOMAINS, CorpusConfig, build_corpus, clean_prose, is_prose, math_documents


def test_same_config_same_corpus_and_split():
    a, b = build_corpus(TINY_CORPUS), build_corpus(TINY_CORPUS)
    assert a.documents == b.documents
    assert a.val_ids == b.val_ids
    assert a.fingerprint == b.fingerprint


def test_seed_changes_math_only():
    a = tiny_corpus()
    b = build_corpus(CorpusConfig(**{**TINY_CORPUS.__dict__, "seed": 1}))
    for dom in ("code", "language"):
        assert [d for d in a.documents if d.domain == dom] == [d for d in b.documents if d.domain == dom]
    math_a = [d.text for d in a.documents if d.domain == "math"]
    math_b = [d.text for d in b.documents if d.domain == "math"]
    assert math_a != math_b
    assert a.fingerprint != b.fingerprint


def test_every_domain_in_both_splits_and_no_document_in_both():
    c = tiny_corpus()
    train_ids = {d.doc_id for d in c.train}
    val_ids = {d.doc_id for d in c.val}
    assert not train_ids & val_ids
    assert train_ids | val_ids == {d.doc_id for d in c.documents}
    assert len(c.documents) == len(train_ids) + len(val_ids)   # ids are unique
    for dom in DOMAINS:
        n_val = sum(d.domain == dom for d in c.val)
        n_all = sum(d.domain == dom for d in c.documents)
        assert n_val >= 1 and n_all - n_val >= 1
        assert n_val == max(1, round(TINY_CORPUS.val_fraction * n_all))


def test_budget_and_document_size():
    c = tiny_corpus()
    for dom in DOMAINS:
        docs = [d for d in c.documents if d.domain == dom]
        assert TINY_CORPUS.chars_per_domain * 0.9 <= sum(len(d.text) for d in docs) <= TINY_CORPUS.chars_per_domain
        assert all(0 < len(d.text) <= TINY_CORPUS.doc_chars for d in docs)


def test_code_documents_are_stdlib_source_outside_tests():
    c = tiny_corpus()
    root = Path(sysconfig.get_paths()["stdlib"])
    code = [d for d in c.documents if d.domain == "code"]
    assert code
    for d in code:
        rel, lines = d.source.rsplit(":", 1)
        assert rel.endswith(".py") and re.fullmatch(r"\d+-\d+", lines)
        parts = Path(rel).parts
        assert not {"test", "tests", "site-packages", "idle_test"} & set(parts)
        first = int(lines.split("-")[0])
        file_lines = [ln.rstrip() for ln in (root / rel).read_text(encoding="utf-8").splitlines()]
        assert file_lines[first - 1][: TINY_CORPUS.doc_chars].startswith(d.text.split("\n")[0])


def test_language_documents_are_prose_without_markup():
    c = tiny_corpus()
    lang = [d for d in c.documents if d.domain == "language"]
    assert lang
    for d in lang:
        assert d.source.startswith("pydoc_data.topics:")
        assert ">>>" not in d.text and "::=" not in d.text and "*" not in d.text
        assert not re.search(r"^\s*[*=\-^~]{3,}\s*$", d.text, flags=re.M)   # no heading underlines


def test_prose_filter_by_hand():
    assert is_prose("The loop terminates when the\niterator is exhausted.")
    assert not is_prose("The \"for\" statement\n*******************")              # heading
    assert not is_prose("   for_stmt ::= \"for\" target_list \"in\" starred_list")   # grammar
    assert not is_prose("   >>> print(1)\n   1")                                  # example
    assert not is_prose("   for i in range(10):\n       print(i)")                # code block
    assert clean_prose("An *iterable* object[1].\n\n   x = 1") == ["An iterable object."]


def _poly(expr: str):
    """'3x^2 - x + 4' -> a function of a Fraction (independent of the generator's formatter)."""
    py = re.sub(r"(\d)x", r"\1*x", expr.replace("^", "**"))
    return lambda x: eval(py, {"x": x})


def _derivative_oracle(f, x: Fraction) -> Fraction:
    """Richardson-extrapolated central difference: exact for polynomials of degree <= 4."""
    h = Fraction(1)
    d = lambda h: (f(x + h) - f(x - h)) / (2 * h)  # noqa: E731
    return (4 * d(h / 2) - d(h)) / 3


def test_math_statements_are_correct():
    lines = [ln for d in math_documents(30_000, 2_000, seed=3) for ln in d.text.split("\n")]
    kinds = set()
    for line in lines:
        if m := re.fullmatch(r"(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)", line):
            a, op, b, c = m.groups()
            assert eval(f"{a} {op} {b}") == int(c), line
            kinds.add(op)
        elif m := re.fullmatch(r"Solve (.+) = (-?\d+)\. Then x = (-?\d+)\.", line):
            lhs, rhs, x = m.groups()
            assert _poly(lhs)(Fraction(int(x))) == int(rhs), line
            kinds.add("solve")
        elif m := re.fullmatch(r"The derivative of (.+) is (.+)\.", line):
            f, g = _poly(m.group(1)), _poly(m.group(2))
            for x in (Fraction(-2), Fraction(0), Fraction(3, 2), Fraction(5)):
                assert g(x) == _derivative_oracle(f, x), line
            kinds.add("derivative")
        else:
            pytest.fail(f"unexpected math line {line!r}")
    assert kinds == {"+", "-", "*", "solve", "derivative"}


def test_provenance_reports_sizes_and_source():
    p = tiny_corpus().provenance()
    assert p["python_version"].count(".") == 2 and p["stdlib"] == sysconfig.get_paths()["stdlib"]
    assert p["code_files"] >= 1
    for dom in DOMAINS:
        for split in ("train", "val"):
            assert p["sizes"][dom][split]["documents"] >= 1 and p["sizes"][dom][split]["chars"] > 0


@pytest.mark.parametrize("kw", [{"chars_per_domain": 10}, {"val_fraction": 0.0}, {"val_fraction": 0.7},
                                {"doc_chars": 50}])
def test_bad_config_is_a_value_error(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        CorpusConfig(**kw)
