"""The claims declare themselves: every claim module is found, complete, and wired into the lab by its declaration."""

import pytest

from moescope.lab.claims import REQUIRED, all_claims
from moescope.lab.run import ALL_CLAIMS, EXPERIMENTS, MODEL_CLAIMS, TRAINING_ONLY, LabConfig


def test_every_claim_of_the_lecture_is_registered_once():
    claims = all_claims()
    assert list(claims) == list(range(1, 1 + len(claims))) == list(ALL_CLAIMS) and len(claims) >= 16
    for cid, m in claims.items():
        assert all(hasattr(m, a) for a in REQUIRED) and m.ID == cid
        assert m.NEEDS and set(m.NEEDS) <= set(EXPERIMENTS), (cid, m.NEEDS)
        assert m.FIGURES and all(f.endswith(".png") for f in m.FIGURES)


def test_model_and_training_only_claims_are_derived_from_the_modules():
    claims = all_claims()
    assert MODEL_CLAIMS == tuple(c for c, m in claims.items() if hasattr(m, "from_checkpoint")) == (6, 10, 11, 12, 13,
                                                                                                  14)
    assert set(TRAINING_ONLY) == {5, 7, 8, 9, 15}
    assert not set(MODEL_CLAIMS) & set(TRAINING_ONLY)


def test_a_claim_that_needs_training_is_refused_with_a_model(tmp_path):
    with pytest.raises(ValueError, match="need the lab's own training runs"):
        LabConfig(model=tmp_path, claims=(5,))
