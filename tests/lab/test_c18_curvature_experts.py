"""Claim 18 (mixture-of-curvature experts): its corpus, its experiment (runs, is deterministic, JSON-ready) and
its rule on planted experiment dicts with a known answer."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from moescope.lab import curvature_experts as ce
from moescope.lab.claims import c18_curvature_experts as c18
from moescope.lab.taxonomy_corpus import FLAT, HIER, SHARED, WordTokenizer, build_corpus
from moescope.report.curvature_experts_figures import FIGURES

# -- corpus -------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_labelled():
    kw = {"seq_len": 12, "train_windows": 20, "held_out_windows": 5}
    a, b = build_corpus(7, **kw), build_corpus(7, **kw)
    assert a.train.equal(b.train) and a.held_out_labels.equal(b.held_out_labels)
    assert a.train.shape == (20, 13) and a.held_out.shape == (5, 13)
    assert not a.train.equal(build_corpus(8, **kw).train)
    tok = a.tokenizer
    stop = tok.ids["."]
    ids, labels = a.train.reshape(-1), a.train_labels.reshape(-1)
    assert bool(((ids == stop) == (labels == SHARED)).all())          # only the full stop is shared
    hier_words = {tok.vocab[i] for i in ids[labels == HIER].tolist()}
    flat_words = {tok.vocab[i] for i in ids[labels == FLAT].tolist()}
    assert not hier_words & flat_words                                 # the two kinds share no word
    assert {">", "<"} & hier_words and "+" in flat_words
    assert 0.3 < float((labels == HIER).float().mean()) < 0.7


def test_taxonomy_sentences_are_paths_of_the_tree():
    corpus = build_corpus(3, seq_len=30, train_windows=10, held_out_windows=2)
    words = corpus.tokenizer.decode(corpus.train.reshape(-1).tolist()).split(" . ")[1:-1]
    parent = corpus.parent
    seen = 0
    for sentence in words:
        if ">" in sentence:
            path = sentence.split(" > ")
        elif "<" in sentence:
            path = sentence.split(" < ")[::-1]
        else:
            continue
        assert path[0] == "entity" and all(parent[ch] == pa for pa, ch in itertools.pairwise(path))
        seen += 1
    assert seen > 5


def test_tokenizer_round_trip_and_errors():
    tok = WordTokenizer(["a", "b", "."])
    assert tok.decode(tok.encode("a b . a")) == "a b . a" and len(tok) == 3
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("a z")
    with pytest.raises(ValueError, match="repeat"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="seq_len"):
        build_corpus(0, seq_len=0)


# -- the claim's rule on planted dicts -------------------------------------------------------------------------


def _planted(loss_gain: list[float], routing: list[float], null_sd: float = 0.01) -> dict:
    """An experiment dict with the given per-seed twin − MiCE losses and routing differences."""
    rng = np.random.default_rng(0)
    mice = [2.0] * len(loss_gain)
    runs = [{"seed": i, "params": {"mice": {"total": 100, "active": 60.0}, "twin": {"total": 100, "active": 60.0}},
             "routing": {"p_value": 0.01, "layers": [{"curvature": [0.01, 0.1]}]}} for i in range(len(loss_gain))]
    return {"runs": runs, "mice_loss": mice, "twin_loss": [m + g for m, g in zip(mice, loss_gain, strict=True)],
            "routing_diff": routing, "routing_null": rng.normal(0.0, null_sd, (len(routing), 200)).tolist(),
            "settings": {"n_layer": 1, "steps": 10, "vocab_size": 50}}


@pytest.mark.parametrize("gain, routing, expected", [
    ([0.10, 0.12, 0.11], [0.30, 0.35, 0.32], "supported"),
    ([-0.10, -0.12, -0.11], [0.30, 0.35, 0.32], "not supported"),      # the twin is better
    ([0.10, 0.12, 0.11], [-0.30, -0.35, -0.32], "not supported"),      # hierarchy goes to the flatter experts
    ([0.10, -0.10, 0.05], [0.30, 0.35, 0.32], "inconclusive"),         # the loss interval straddles
    ([0.10, 0.12, 0.11], [0.60, -0.40, 0.30], "inconclusive"),         # the routing interval straddles
])
def test_rule_on_planted_dicts(gain, routing, expected):
    v = c18.from_lab({"curvature_experts": _planted(gain, routing)})
    assert v.verdict == expected
    assert v.key.value == pytest.approx(float(np.mean(gain)))           # the number shown is the rule's
    assert len(v.evidence) == 2 and v.figures == c18.FIGURES   # the label-shuffle null is reported only


def test_claim_declares_what_the_registry_needs():
    assert c18.ID == 18 and c18.NEEDS == ("curvature_experts",)
    assert "双曲空間" in c18.LECTURE
    assert set(c18.FIGURES) == set(FIGURES)
    assert 0 < c18.LOSS_MARGIN and 0 < c18.ROUTING_MARGIN


# -- the experiment ---------------------------------------------------------------------------------------------


def test_bad_profile_and_seed_raise():
    with pytest.raises(ValueError, match="quick.*'medium'"):
        ce.run_curvature_experts("medium")
    with pytest.raises(ValueError, match="seed"):
        ce.run_curvature_experts("quick", seed=-1)


def test_tiny_profile_is_deterministic(monkeypatch):
    tiny = ce.Profile(seeds=3, steps=6, batch=4, d_model=16, n_layer=1, train_windows=16, held_out_windows=4,
                      log_every=3)
    monkeypatch.setitem(ce.PROFILES, "quick", tiny)
    state = torch.get_rng_state()
    a = ce.run_curvature_experts("quick", seed=5)
    assert torch.get_rng_state().equal(state)                          # global RNG left as it was
    b = ce.run_curvature_experts("quick", seed=5)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.slow
def test_quick_profile_runs_and_feeds_claim_and_figures():
    data = ce.run_curvature_experts("quick")
    text = json.dumps(data, allow_nan=False)                           # strict JSON: no NaN, no tensors
    assert len(data["runs"]) >= 3 and len(set(data["seeds"])) == len(data["seeds"])
    for r in data["runs"]:
        assert r["params"]["mice"] == r["params"]["twin"]
        assert all(math.isfinite(v) for v in r["curve_mice"] + r["curve_twin"])
        assert len(r["routing"]["null"]) == ce.NULL_DRAWS
    assert "NaN" not in text
    v = c18.from_lab({"curvature_experts": data})
    assert v.verdict in ("supported", "not supported", "inconclusive")
    for _, draw in FIGURES.values():
        assert draw(data)[:8] == b"\x89PNG\r\n\x1a\n"
