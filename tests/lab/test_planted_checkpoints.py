"""``moescope lab --model``: checkpoints with a planted structure must get the verdict it implies.

Each test builds a tiny real Hugging Face checkpoint (``planted_checkpoints.py`` on top of
``tests/models/tiny_checkpoints.py``), writes the planted weights into it, saves it with
``save_pretrained`` and its tokenizer, and runs the lab on the folder exactly as
``moescope lab --model PATH`` does. The structure is chosen so that the answer is known before
the run:

* claim 6 — experts reading mutually orthogonal coordinate blocks (E·block <= H) are more
  separated than random regroupings of their own hidden units and than Haar-random subspaces:
  supported; experts that all read one 3-dimensional subspace overlap ~10× the Haar null: not
  supported; an untouched random checkpoint: inconclusive;
* claim 10 — routed experts = a common subspace C ⊕ a private block each; a shared expert that
  reads only C overlaps every routed expert more than they overlap one another: supported; one that
  reads directions orthogonal to C and to every routed expert overlaps none: not supported;
* claims 13 and 14 — a router whose rows are the domains' centred mean router inputs (scaled up)
  routes by domain. For claim 13 the token embeddings also carry the domain (each token gets its
  domain shares times one direction per domain), so that random-direction routers reach a domain
  NMI well above the margin; the domain router exceeds them (supported), a router collapsed onto
  two experts (NMI ~0) falls below them (not supported). On the plain random checkpoint random
  routers reach only ~0.02 — the margin — and the collapse is inconclusive. For claim 14 the domain
  router keeps consecutive tokens on one expert (supported), and so does a collapse: a pattern by
  the claim's rule (supported).
"""

from __future__ import annotations

from pathlib import Path

import planted_checkpoints as pc
import pytest

from moescope.lab.run import LabConfig, run_lab
from moescope.stats import Evidence, assess

SCALE = 20.0            # router rows of norm 20: routing is sharp (the random routers keep these norms)
DOMAIN_STRENGTH = 2.0   # the domain directions in the embeddings (token rows have norm ~0.3·√32 ≈ 1.7)




pytestmark = pytest.mark.usefixtures("one_thread", "small_external")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("planted")


@pytest.fixture(scope="module")
def ids(root) -> dict[str, list[int]]:
    """The lab corpus in the tiny tokenizer's ids, per domain (what ``lab --model`` routes)."""
    tok = root / "tokenizer"
    tok.mkdir()
    pc.tiny_checkpoints.save_tokenizer(tok)
    return pc.domain_ids(tok)


def _lab(path: Path, *claims: int) -> dict[int, dict]:
    res = run_lab(LabConfig(model=path, claims=claims))
    return {v["claim_id"]: v for v in res["verdicts"]}


def _assessments(v: dict) -> list:
    return [assess(Evidence.from_dict(e)) for e in v["evidence"]]


# -- claim 6 -----------------------------------------------------------------------------------------
def test_claim6_disjoint_expert_subspaces_supported(root):
    model = pc.build("mixtral", seed=2)
    pc.plant_disjoint_experts(model, block=4)                       # 8 experts × 4 coordinates = H = 32
    (v,) = _lab(pc.save(model, root / "disjoint"), 6).values()
    assert v["verdict"] == "supported", v["measured"]
    rel, iso = _assessments(v)                                      # E·r <= H: the absolute reading is measured too
    assert rel.interval[1] < 0.01                                   # ~2e-4 of random regroupings' overlap
    assert iso.effect < 0.01 and v["numbers"]["feasible"]           # ~0 of the Haar null r²/H


def test_claim6_one_shared_subspace_not_supported(root):
    model = pc.build("mixtral", seed=2)
    pc.plant_one_subspace(model, dim=3)
    (v,) = _lab(pc.save(model, root / "one-subspace"), 6).values()
    assert v["verdict"] == "not supported", v["measured"]
    rel, iso = _assessments(v)
    # regroupings of units that all lie in one subspace overlap just as much: the relative reading is ~1 ...
    assert rel.verdict != "supported" and 0.85 < rel.effect < 1.05
    # ... so the absolute one decides: ~10× the overlap of Haar-random subspaces
    assert iso.verdict == "not supported" and iso.effect > 5


def test_claim6_random_checkpoint_inconclusive(root):
    (v,) = _lab(pc.save(pc.build("mixtral", seed=2), root / "random"), 6).values()
    assert v["verdict"] == "inconclusive", v["measured"]
    assert not v["numbers"]["feasible"] and len(v["evidence"]) == 1    # E·r > H: only the relative reading
    lo, hi = v["key"]["interval"]
    assert lo < 1.0 < hi


# -- claim 10 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
@pytest.mark.parametrize(("shared", "expected"), [("common", "supported"), ("apart", "not supported")])
def test_claim10_shared_expert_on_the_common_subspace(root, family, shared, expected):
    model = pc.build(family, seed=2)
    pc.plant_common_and_private(model, shared, common=4, private=3)     # 4 + 8·3 = 28 of H = 32; 4 spare
    (v,) = _lab(pc.save(model, root / f"c10-{family}-{shared}"), 10).values()
    assert v["verdict"] == expected, v["measured"]
    shared_ratio, routed_ratio = v["numbers"]["shared_ratio"][0], v["numbers"]["routed_ratio"][0]
    # routed experts share C: ~3× the Haar null among themselves in both cases
    assert min(routed_ratio) > 1.5
    if shared == "apart":
        assert max(shared_ratio) < 0.05                                 # orthogonal to every routed expert
    else:
        assert sum(shared_ratio) > sum(routed_ratio)


# -- claims 13 and 14 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routers(root, ids):
    """Verdicts of claims 13 and 14 for a planted router ("domain", "collapsed" or the checkpoint's own
    "random" one), on the plain random checkpoint or on one whose embeddings carry the domain."""
    done: dict[tuple[str, bool], dict[int, dict]] = {}

    def get(kind: str, domain_embeddings: bool) -> dict[int, dict]:
        if (kind, domain_embeddings) not in done:
            model = pc.build("mixtral", seed=2)
            if domain_embeddings:
                pc.plant_domain_embeddings(model, ids, DOMAIN_STRENGTH)
            if kind == "domain":
                pc.plant_domain_router(model, ids, SCALE)
            elif kind == "collapsed":
                pc.plant_collapsed_router(model, ids, SCALE)
            name = f"router-{kind}-{'domain-embeddings' if domain_embeddings else 'plain'}"
            done[kind, domain_embeddings] = _lab(pc.save(model, root / name), 13, 14)
        return done[kind, domain_embeddings]

    return get


def test_claim13_domain_router_supported(routers):
    v = routers("domain", True)[13]
    assert v["verdict"] == "supported", v["measured"]
    assert min(v["numbers"]["nmi"][0]) > 0.1                         # ~0.2-0.3 against ~0.1 for random routers


def test_claim13_collapsed_router_not_supported(routers):
    v = routers("collapsed", True)[13]
    assert v["verdict"] == "not supported", v["measured"]
    assert max(v["numbers"]["nmi"][0]) < 0.02                         # every token to the same two experts


def test_claim13_collapse_is_no_finding_where_random_routers_ignore_the_domain(routers):
    """On the plain random checkpoint random routers reach an NMI of only ~0.02, the margin itself: a
    collapse (NMI ~0) is not far enough below them to be called 'not supported'."""
    v = routers("collapsed", False)[13]
    assert v["verdict"] == "inconclusive", v["measured"]
    assert max(v["numbers"]["nmi"][0]) < 0.02


def test_claims_13_14_untouched_router_inconclusive(routers):
    v = routers("random", True)                                       # the random checkpoint's own router
    assert v[13]["verdict"] == v[14]["verdict"] == "inconclusive", (v[13]["measured"], v[14]["measured"])


def test_claim14_domain_router_supported(routers):
    """Consecutive tokens of one domain keep the domain's expert; random routers on the same hidden states
    switch with the tokens. (On the checkpoint whose embeddings carry the domain the random routers keep
    their expert too, and the margin of 1/4 of the uniform rate is not always cleared.)"""
    v = routers("domain", False)[14]
    assert v["verdict"] == "supported", v["measured"]


def test_claim14_collapse_is_a_pattern(routers):
    """A collapse repeats the first choice on every token: a pattern random routers do not show."""
    v = routers("collapsed", False)[14]
    assert v["verdict"] == "supported", v["measured"]
    assert min(v["numbers"]["repetition"][0]) > 3                     # ≥ 3× the uniform rate 1/E
