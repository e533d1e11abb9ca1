"""Claims 6-15: verdicts computed from (planted) measurements of trained runs flip with the data."""

import pytest

from moescope.lab.claims import (
    c06_expert_subspaces,
    c07_similarity_dynamics,
    c08_collapse,
    c09_uniformity,
    c10_shared_expert,
    c11_angle_routing,
    c12_heads_vs_experts,
    c13_domains,
    c14_heatmaps,
    c15_quality_compute,
)


def _geo(z, shared_z=None, resultant=0.35, pr=6.5, cos2=0.2):
    return {"index": 0, "hidden": 64, "experts": {"z": z, "ratio_to_null": 1 + z / 10, "rank": 8,
                                                  "mean_cos2_pairs": cos2, "null_mean_cos2": 0.125},
            "shared": [] if shared_z is None else [{"z": shared_z}],
            "router": {"resultant_length": resultant, "participation_ratio": pr}}


def _layer(cv=0.1, entropy=0.98, dead=(), spec=0.0, rep=0.2, router_entropy=0.7):
    load = [1 / 8] * 8
    return {"load": load, "load_cv": cv, "load_entropy": entropy, "dead_experts": list(dead),
            "router_entropy": router_entropy, "repetition": {"first": rep, "uniform_first": 1 / 8},
            "domains": {"names": ["code", "language", "math"], "chance": 0.25,
                        "specialisation": [[spec] + [0.0] * 7, [spec] + [0.0] * 7, [0.0] * 8]}}


def _run(z=0.5, cv=0.1, entropy=0.98, shared_z=None, val=6.0, active=100, objective="causal", **kw):
    return {"weights": [_geo(z, shared_z, **{k: v for k, v in kw.items() if k in ("resultant", "pr", "cos2")})],
            "routing": {"layers": [_layer(cv=cv, entropy=entropy, **{k: v for k, v in kw.items()
                                                                     if k in ("spec", "rep", "router_entropy")})]},
            "val_loss": val, "params_active": active, "params_total": 4 * active, "objective": objective}


def test_claim6():
    assert c06_expert_subspaces.evaluate({"top2": _run(z=0.5)}).verdict == "supported"
    assert c06_expert_subspaces.evaluate({"top2": _run(z=12.0)}).verdict == "not supported"


def test_claim7():
    falling = {"top2": {"dynamics": [{"step": 0, "weights": [_geo(2.0)]}, {"step": 9, "weights": [_geo(-3.0)]}]}}
    rising = {"top2": {"dynamics": [{"step": 0, "weights": [_geo(-3.0)]}, {"step": 9, "weights": [_geo(2.0)]}]}}
    assert c07_similarity_dynamics.evaluate(falling).verdict == "supported"
    assert c07_similarity_dynamics.evaluate(rising).verdict == "not supported"


def test_claim8_and_9():
    collapsed = {"top2": _run(cv=0.1, entropy=0.98, resultant=0.3), "top2-alpha0": _run(cv=1.5, entropy=0.5,
                                                                                          resultant=0.7)}
    assert c08_collapse.evaluate(collapsed).verdict == "supported"
    assert c09_uniformity.evaluate(collapsed).verdict == "supported"
    reversed_ = {"top2": collapsed["top2-alpha0"], "top2-alpha0": collapsed["top2"]}
    assert c08_collapse.evaluate(reversed_).verdict == "not supported"
    assert c09_uniformity.evaluate(reversed_).verdict == "not supported"


def test_claim10():
    assert c10_shared_expert.evaluate({"deepseek-moe": _run(z=0.0, shared_z=8.0)}).verdict == "supported"
    assert c10_shared_expert.evaluate({"deepseek-moe": _run(z=0.0, shared_z=0.5)}).verdict == "inconclusive"


@pytest.mark.parametrize(("agree", "cos_val", "verdict"), [(0.95, 6.0, "supported"), (0.2, 7.0, "not supported")])
def test_claim11(agree, cos_val, verdict):
    angle = {"layers": [{"top1": agree, "chance_top1": 0.125}]}
    runs = {"top2": _run(val=6.0), "cosine-top2": _run(val=cos_val)}
    assert c11_angle_routing.evaluate(runs, angle).verdict == verdict


def test_claim12():
    assert c12_heads_vs_experts.evaluate({"head_share": 1.0, "expert_share": 0.25, "n_head": 4}, 2, 8).verdict \
        == "supported"
    assert c12_heads_vs_experts.evaluate({"head_share": 0.5, "expert_share": 0.9, "n_head": 4}, 2, 8).verdict \
        == "not supported"


def test_claim13():
    assert c13_domains.evaluate({"top2": _run(spec=0.5)}).verdict == "supported"
    assert c13_domains.evaluate({"top2": _run(spec=0.0)}).verdict == "not supported"


def test_claim13_is_held_against_the_untrained_router():
    def with_null(spec, null_spec):
        run = _run(spec=spec)
        run["routing_null"] = {"layers": [_layer(spec=null_spec)], "kind": "step-0 checkpoint"}
        return {"top2": run}

    v = c13_domains.evaluate(with_null(0.5, 0.05))
    assert v.verdict == "supported" and v.numbers["excess"]["code"] == pytest.approx(0.45)
    assert "untrained router (step-0 checkpoint)" in v.baseline
    # as specialised as before training: token statistics, not learning
    assert c13_domains.evaluate(with_null(0.5, 0.5)).verdict == "not supported"
    assert c13_domains.evaluate(with_null(0.5, 0.43)).verdict == "inconclusive"   # 0.07 above: weak only
    assert "chance only" in c13_domains.evaluate({"top2": _run(spec=0.5)}).baseline


def test_claim14():
    assert c14_heatmaps.evaluate({"top2": _run(rep=0.4, router_entropy=0.6)}).verdict == "supported"
    assert c14_heatmaps.evaluate({"top2": _run(rep=0.125, router_entropy=0.99)}).verdict == "not supported"


def test_claim15():
    runs = {"top2": _run(active=100), "switch-top1": _run(active=80),
            "soft-moe": _run(active=100, objective="masked")}
    assert c15_quality_compute.evaluate(runs, {"combine_entropy": 0.9}).verdict == "supported"
    runs["switch-top1"] = _run(active=120)
    assert c15_quality_compute.evaluate(runs, {"combine_entropy": 0.1}).verdict == "not supported"
