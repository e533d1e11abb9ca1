"""``moescope lab --model PATH``: claims 6 and 10–14 measured on tiny Hugging Face checkpoints.

The checkpoints are the tiny random models of ``tests/models/tiny_checkpoints.py`` (real
transformers config classes, byte-level BPE tokenizer saved alongside), and one with a
planted structure that must flip claim 6: every expert reads the same 3-dimensional subspace.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # tiny_checkpoints.py

import tiny_checkpoints

from moescope.cli import app
from moescope.lab.external import ExternalConfig, ModelInputError, measure_checkpoint
from moescope.lab.run import MODEL_CLAIMS, LabConfig, run_lab
from moescope.report.lab import lab_figures, write_lab_report

runner = CliRunner()
SMALL = ExternalConfig(max_tokens=512, seq_len=32)  # ~1.5k tokens: seconds per checkpoint


@pytest.fixture(autouse=True)
def _small(monkeypatch):
    """run_lab measures checkpoints with the small config (the default routes 4k tokens per domain)."""
    import moescope.lab.external as external

    monkeypatch.setattr(external, "ExternalConfig", lambda seed=0: SMALL)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-model")
    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            saved[family] = tiny_checkpoints.save(family, root / family, seed=1)
        return saved[family]

    return get


def _planted(path: Path, dim: int = 3) -> Path:
    """A Mixtral whose experts all read one shared ``dim``-dimensional input subspace (plus 1% noise)."""
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_checkpoints.build("mixtral", seed=2)
    g = torch.Generator().manual_seed(7)
    basis = torch.linalg.qr(torch.randn(tiny_checkpoints.H, dim, generator=g))[0].t()    # (dim, H)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("experts.gate_up_proj"):                                      # (E, 2I, H)
                mix = torch.randn(*p.shape[:2], dim, generator=g)                          # (E, 2I, dim)
                p.copy_(mix @ basis + 0.01 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    tiny_checkpoints.save_tokenizer(path)
    return path


def _verdicts(res: dict) -> dict[int, dict]:
    return {v["claim_id"]: v for v in res["verdicts"]}


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_claims_on_checkpoint(ckpt, family):
    path = ckpt(family)
    res = run_lab(LabConfig(model=path))
    assert res["claims"] == list(MODEL_CLAIMS) and set(res["data"]) == {"checkpoint"}
    prov = res["provenance"]["checkpoint"]
    assert prov["path"] == str(path) and prov["model_type"] == family
    assert prov["num_experts"][0] == tiny_checkpoints.E and prov["tokens"]["code"] == SMALL.max_tokens
    data = res["data"]["checkpoint"]
    v = _verdicts(res)
    # each verdict is the evaluator's reading of this checkpoint's measurements
    geo = data["runs"]["checkpoint"]["weights"]
    assert v[6]["numbers"]["z"] == [g["experts"]["z"] for g in geo]
    assert str(path) in v[6]["measured"]
    assert 0.0 <= v[11]["key"]["value"] <= 1.0 and v[11]["numbers"]["loss_gap"] is None
    assert len(v[11]["numbers"]["conditions"]) == 1                     # no cosine-router retraining on a checkpoint
    k, e = data["top_k"], data["num_experts"]
    assert v[12]["numbers"]["head_share"] == 1.0                         # every head acts on every token
    assert v[12]["numbers"]["expert_share"] == pytest.approx(k / e)      # exactly k of E experts (no capacity drops)
    assert v[12]["verdict"] == "supported"
    lays = data["runs"]["checkpoint"]["routing"]["layers"]
    assert v[13]["numbers"]["best"] == {d: max(max(lay["domains"]["specialisation"][i]) for lay in lays)
                                        for i, d in enumerate(lays[0]["domains"]["names"])}
    assert set(data["runs"]["checkpoint"]["routing"]["samples"]) == {"code", "language", "math"}
    assert v[14]["numbers"]["router_entropy"] == pytest.approx(sum(x["router_entropy"] for x in lays) / len(lays))
    if family == "mixtral":                                              # no shared expert: claim 10 does not apply
        assert v[10]["verdict"] == "inconclusive" and v[10]["numbers"]["not_applicable"] == "no shared expert"
    else:
        assert v[10]["numbers"]["shared_z"] == [s["z"] for g in geo for s in g["shared"]] != []
    if family == "deepseek_v3":                                          # MLA: no per-head input subspace
        assert "latent" in data["subspaces_used"]["geometry_skipped"]
    else:
        assert len(data["subspaces_used"]["geometry"]) == len(geo)
    json.dumps(res, allow_nan=False)


def test_random_experts_supported_planted_shared_subspace_not(ckpt, tmp_path):
    random = run_lab(LabConfig(model=ckpt("mixtral"), claims=(6,)))
    planted = run_lab(LabConfig(model=_planted(tmp_path / "planted"), claims=(6,)))
    assert _verdicts(random)[6]["verdict"] == "supported"
    assert _verdicts(planted)[6]["verdict"] == "not supported"
    assert min(_verdicts(planted)[6]["numbers"]["z"]) > 3


def test_report_renders_checkpoint_figures(ckpt, tmp_path):
    res = run_lab(LabConfig(model=ckpt("qwen2_moe")))
    figures = lab_figures(res)
    assert set(figures) >= {"expert_overlap.png", "angle_agreement.png", "heads_vs_experts.png",
                            "domain_specialisation.png", "router_heatmaps.png"}
    written = write_lab_report(res, figures, tmp_path)
    html = written["report"].read_text()
    assert "Qwen2-MoE checkpoint" in html and str(ckpt("qwen2_moe")) in html
    assert "Claims 6, 10, 11, 12, 13, 14 measured on the Qwen2-MoE checkpoint" in html   # the header says so
    assert json.loads(written["results"].read_text())["provenance"]["checkpoint"]["model_type"] == "qwen2_moe"


def test_other_claims_run_as_usual_with_model(ckpt):
    cfg = LabConfig(model=ckpt("mixtral"), claims=(1, 5, 6, 13, 16))
    assert [cfg.needs(c) for c in cfg.claims] == ["sphere", "sparse", "checkpoint", "checkpoint", "curvature"]
    assert LabConfig(claims=(6,)).needs(6) == "training"                 # without a model: the lab's own runs


def test_claim12_without_attention_is_inconclusive():
    from moescope.lab.claims import c12_heads_vs_experts

    used = {"head_share": None, "expert_share": 0.25, "n_head": 0, "reason": "no attention found"}
    v = c12_heads_vs_experts.evaluate(used, 2, 8, where="a model")
    assert v.verdict == "inconclusive" and "no attention found" in v.measured


def test_training_claims_refused_with_model(ckpt):
    with pytest.raises(ValueError, match=r"claims \[8\] need the lab's own training runs"):
        LabConfig(model=ckpt("mixtral"), claims=(6, 8))
    with pytest.raises(ValueError, match=r"claims \[7, 9, 15\]"):
        LabConfig(model=ckpt("mixtral"), claims=(7, 9, 15))


def test_bad_model_paths(ckpt, tmp_path):
    with pytest.raises(ModelInputError, match="does not exist"):
        LabConfig(model=tmp_path / "nowhere")
    no_tok = tiny_checkpoints.save("mixtral", tmp_path / "no-tokenizer", tokenizer=False)
    with pytest.raises(ModelInputError, match=r"no-tokenizer: no tokenizer files .*tokenizer.save_pretrained"):
        LabConfig(model=no_tok)
    dense = tiny_checkpoints.save_dense(tmp_path / "dense")
    with pytest.raises(ModelInputError, match="model_type='llama' is not a supported MoE family"):
        LabConfig(model=dense)
    with pytest.raises(ModelInputError, match=r"dense: the checkpoint .* lacks .* weights the model needs"):
        measure_checkpoint(_as_mixtral(dense, tokenizer_from=ckpt("mixtral")), SMALL)


def _as_mixtral(path: Path, tokenizer_from: Path) -> Path:
    """A dense Llama relabelled as Mixtral: passes the folder check, lacks the experts' weights."""
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=8,
                  num_experts_per_tok=2)
    (path / "config.json").write_text(json.dumps(config))
    for f in tokenizer_from.glob("tokenizer*"):
        (path / f.name).write_bytes(f.read_bytes())
    return path


def test_cli_lab_model(ckpt, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["lab", "--model", str(ckpt("mixtral")), "--claims", "6,13", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert [v["claim_id"] for v in saved["verdicts"]] == [6, 13]
    assert saved["provenance"]["checkpoint"]["path"] == str(ckpt("mixtral"))


def test_cli_lab_model_errors(ckpt, tmp_path):
    result = runner.invoke(app, ["lab", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["lab", "--model", str(ckpt("mixtral")), "--claims", "8", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "training runs" in result.output


@pytest.mark.parametrize("family", sorted(tiny_checkpoints.BUILDERS))
def test_untrained_router_null_swaps_every_router_and_restores_it(family, tmp_path):
    from moescope.lab.external import _untrained_router
    from moescope.models import load_moe_model

    model, _, views = load_moe_model(tiny_checkpoints.save(family, tmp_path / family, seed=2, tokenizer=False))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = {d: torch.randint(vocab, (256,), generator=g).tolist() for d in ("code", "language", "math")}
    null = _untrained_router(model, views, ids, SMALL, 32)
    assert null is not None, "the view's router matrix is not the model's parameter: the null could not be built"
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())   # restored exactly
    assert len(null["layers"]) == len(views) and "random direction" in null["kind"]


def test_claim13_on_a_checkpoint_is_held_against_its_untrained_router(ckpt):
    res = run_lab(LabConfig(model=ckpt("mixtral"), claims=(13,)))
    (v,) = res["verdicts"]
    run = res["data"]["checkpoint"]["runs"]["checkpoint"]
    assert run["routing_null"]["layers"] and v["numbers"]["untrained_best"] is not None
    assert "random direction of the same norm" in v["baseline"]
    assert v["numbers"]["untrained_best"] != v["numbers"]["best"]
