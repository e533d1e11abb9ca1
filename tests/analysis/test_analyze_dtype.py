"""analyze in the checkpoint's own dtype (issue 20): ``--dtype auto`` by default, and the float32 flip check."""

import html
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import tiny_checkpoints

from moescope.analysis.analyze import AnalyzeConfig, Source, _dtype_source, _flip_sample, _Job, analyze
from moescope.analysis.dtype_flips import float32_bytes, float32_placement
from moescope.cli import app
from moescope.models.placement import Placement
from moescope.models.streaming import memory_plan

runner = CliRunner()
TEXT = "def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n" * 8
# routing only: the measurements that need resident weights are tested elsewhere and cost time here
FAST = {"seq_len": 16, "batch_size": 3, "weights": False, "activity_tokens": 0, "ablation_windows": 0,
        "boundary_points": 0}
# GPT-OSS routes by logit + bias (top-4 of 8). With router weights ~1e-5 the logits are the bias plus a ripple of
# ~1e-4: layer 0's 4th and 5th logits are 5 and 0 (every token picks {0, 1, 2, 3}, margins near 1: no near-tie,
# no flip); layer 1's are 3 and 3 (every token's margin ~1e-4 < 2⁻⁸: all near-ties; bfloat16 rounds both logits
# to 3 exactly, so its choice is the tie-break while float32's follows the ripple: about half the tokens flip).
PLANTED_BIAS = ([8.0, 7.0, 6.0, 5.0, 0.0, 0.0, 0.0, 0.0], [8.0, 7.0, 6.0, 3.0, 3.0, 0.0, 0.0, 0.0])


def _config(path: Path, **kw) -> AnalyzeConfig:
    return AnalyzeConfig(path=path, sources=(Source("a", TEXT, "code"), Source("b", TEXT[::-1], "prose")),
                         **{**FAST, **kw})


def _text(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """Mixtral's tiny checkpoint saved in bfloat16 (config.json ``dtype: bfloat16``, BF16 tensors)."""
    path = tmp_path_factory.mktemp("bf16") / "mixtral"
    tiny_checkpoints.build("mixtral", seed=tiny_checkpoints.seed_of("mixtral")).to(torch.bfloat16) \
        .save_pretrained(path)
    tiny_checkpoints.save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """GPT-OSS's tiny checkpoint in bfloat16 with the routers of :data:`PLANTED_BIAS`."""
    path = tmp_path_factory.mktemp("planted") / "gpt_oss"
    model = tiny_checkpoints.build("gpt_oss")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, bias in zip(model.model.layers, PLANTED_BIAS, strict=True):
            layer.mlp.router.weight.copy_(1e-5 * torch.randn(layer.mlp.router.weight.shape, generator=g))
            layer.mlp.router.bias.copy_(torch.tensor(bias))
    model.to(torch.bfloat16).save_pretrained(path)
    tiny_checkpoints.save_tokenizer(path)
    return path


def test_auto_is_the_default_and_follows_a_bfloat16_checkpoint(bf16):
    assert (AnalyzeConfig(path=bf16).dtype, AnalyzeConfig(path=bf16).flip_check) == ("auto", 8)
    res = analyze(_config(bf16))
    json.dumps(res, allow_nan=False)
    model = res["model"]
    assert (model["dtype"], model["dtype_requested"]) == ("bfloat16", "auto")
    assert model["dtype_source"] == "the checkpoint's own (--dtype auto: config.json's dtype)"
    flips = res["dtype_flips"]
    # 8 windows dealt over the two texts (4 each, all 16 tokens long: the padded last window is not among them)
    assert (flips["dtype"], flips["reference"], flips["windows"], flips["tokens"]) == ("bfloat16", "float32", 8, 128)
    assert flips["placement"] == "the whole model in float32, in memory"
    assert [r["layer"] for r in flips["layers"]] == [r["layer"] for r in res["routing"]]
    for r in flips["layers"]:
        assert r["tokens"] == 128 and 0 <= r["flips_not_near_ties"] <= r["flips"] <= r["tokens"]
        assert r["flip_share"] == r["flips"] / 128 and r["near_tie_share"] == r["near_ties"] / 128
    # asked for explicitly, float32 runs in float32 and checks nothing
    res = analyze(_config(bf16, dtype="float32"))
    assert res["model"]["dtype"] == "float32" and "dtype_flips" not in res
    assert res["model"]["dtype_source"] == "asked for (--dtype float32)"
    assert "dtype_flips" not in analyze(_config(bf16, flip_check=0))


def test_where_auto_came_from(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "torch_dtype": "bfloat16"}))
    assert _dtype_source(tmp_path, "auto") == "the checkpoint's own (--dtype auto: config.json's torch_dtype)"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    assert _dtype_source(tmp_path, "auto") == ("the checkpoint's own (--dtype auto: the dtype most of its "
                                               "safetensors bytes are stored in)")
    assert _dtype_source(tmp_path, "bfloat16") == "asked for (--dtype bfloat16)"


def test_a_float32_checkpoint_is_analysed_as_before(saved):
    """A float32 checkpoint under the new default gives the float32 results exactly; only the stated source of
    the dtype differs."""
    path = saved("mixtral")
    auto, fp32 = analyze(_config(path)), analyze(_config(path, dtype="float32"))
    assert auto["model"]["dtype"] == fp32["model"]["dtype"] == "float32"
    assert "dtype_flips" not in auto and "dtype_flips" not in fp32
    assert auto["model"].pop("dtype_requested") == "auto" and fp32["model"].pop("dtype_requested") == "float32"
    assert auto["model"].pop("dtype_source") != fp32["model"].pop("dtype_source")
    assert auto == fp32


def test_planted_ties_flip_and_planted_gaps_do_not(planted):
    flips = analyze(_config(planted))["dtype_flips"]
    gap, tie = flips["layers"]
    assert (gap["flips"], gap["near_ties"]) == (0, 0)                         # margins near 1: nothing moves
    assert tie["near_ties"] == tie["tokens"] == 128                           # every margin ~1e-4 < 2⁻⁸
    assert 0.2 < tie["flip_share"] < 0.8 and tie["all_flips_near_ties"]       # the ripple decides in float32 only
    assert tie["flips_not_near_ties"] == 0


def test_a_reference_in_the_same_dtype_finds_no_flip(bf16, monkeypatch):
    """Both runs compare the same tokens: a 'reference' that is the bfloat16 model again (in the same batches)
    must agree on every token, although this tiny model's bfloat16 and float32 runs do differ."""
    real = analyze(_config(bf16))["dtype_flips"]
    assert sum(r["flips"] for r in real["layers"]) > 0
    monkeypatch.setattr("moescope.analysis.dtype_flips.float32_placement",
                        lambda placement, need: (placement, "the bfloat16 model again"))
    same = analyze(_config(bf16))["dtype_flips"]
    assert same["placement"] == "the bfloat16 model again"
    assert [r["flips"] for r in same["layers"]] == [0, 0] and same["tokens"] == 128


def _counts(flips: dict) -> list[tuple[int, int, int]]:
    return [(r["flips"], r["near_ties"], r["flips_not_near_ties"]) for r in flips["layers"]]


def test_streamed_and_memory_bounded_references(bf16, monkeypatch):
    """A streamed analysis streams its float32 reference; a whole-model one whose float32 copy does not fit the
    memory available streams it within that memory. Either way the same tokens are compared."""
    plain = analyze(_config(bf16))["dtype_flips"]
    streamed = analyze(_config(bf16, stream_layers=True))["dtype_flips"]
    assert streamed["placement"] == "streamed layer by layer in float32, as the analysis was"
    assert streamed["tokens"] == plain["tokens"]
    for a, b in zip(_counts(plain), _counts(streamed), strict=True):  # streamed forwards round a little differently
        assert all(abs(x - y) <= 2 for x, y in zip(a, b, strict=True))
    plan = memory_plan(bf16, dtype=torch.float32, tokens=16 * 3)
    assert plan.streamed < plan.in_memory - 1
    monkeypatch.setattr("moescope.analysis.dtype_flips._available_memory", lambda: plan.in_memory - 1)
    tight = analyze(_config(bf16))["dtype_flips"]
    assert tight["placement"].startswith("streamed layer by layer in float32: the whole float32 model")
    assert tight["tokens"] == plain["tokens"] and len(tight["layers"]) == len(plain["layers"])


def test_a_model_spread_by_accelerate_is_skipped_with_the_reason(bf16):
    flips = analyze(_config(bf16, device_map="auto"))["dtype_flips"]
    assert "layers" not in flips and "--device-map" in flips["skipped"]


def test_float32_placement(monkeypatch):
    need = 10 * 2**30
    monkeypatch.setattr("moescope.analysis.dtype_flips._available_memory", lambda: 2 * need)
    base = Placement(dtype="bfloat16")
    assert float32_placement(base, need=need) == (replace(base, dtype="float32"),
                                                  "the whole model in float32, in memory")
    placement, how = float32_placement(Placement(dtype="auto", stream_layers=True), need=need)
    assert placement == Placement(dtype="float32", stream_layers=True) and "streamed" in how
    placement, how = float32_placement(Placement(dtype="bfloat16", max_memory="4GB"), need=need)
    assert placement == Placement(dtype="float32", max_memory="4GB") and "--max-memory 4GB" in how
    placement, how = float32_placement(Placement(dtype="bfloat16", device_map="auto"), need=need)
    assert placement is None and "--device-map" in how


def test_float32_placement_streams_what_does_not_fit(monkeypatch):
    monkeypatch.setattr("moescope.analysis.dtype_flips._available_memory", lambda: 2**30)
    placement, how = float32_placement(Placement(dtype="bfloat16"), need=3 * 2**30)
    assert placement == Placement(dtype="float32", stream_layers=True, max_memory=2**30)
    assert how == ("streamed layer by layer in float32: the whole float32 model (about 3.00 GiB) does not fit the "
                   "1.00 GiB of memory available")
    assert float32_placement(Placement(dtype="bfloat16"), need=2**29)[0] == Placement(dtype="float32")


def test_float32_placement_on_a_gpu_needs_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**30, 2**34))
    placement, how = float32_placement(Placement(dtype="bfloat16", device="cuda"), need=3 * 2**30)
    assert placement is None
    assert how == "the float32 model needs about 3.00 GiB and cuda has 1.00 GiB free, so the flip check is skipped"
    assert float32_placement(Placement(dtype="bfloat16", device="cuda"), need=2**29) == (
        Placement(dtype="float32", device="cuda"), "the whole model in float32 on cuda")


def test_float32_bytes(bf16, monkeypatch):
    """The planner's whole-model figure in float32 (twice the bfloat16 weights and more), or, for a family it cannot
    plan, 4 bytes per floating element plus 10%."""
    from moescope.models.loading import load_moe_model

    model, _, _ = load_moe_model(bf16, dtype="auto")
    elements = sum(t.numel() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    assert float32_bytes(bf16, model, tokens=48) == memory_plan(bf16, dtype=torch.float32, tokens=48).in_memory
    assert float32_bytes(bf16, model, tokens=48) > 4 * sum(p.numel() for p in model.parameters())

    def cannot(*args, **kwargs):
        raise ValueError("no plan for this family")

    monkeypatch.setattr("moescope.models.streaming.memory_plan", cannot)
    assert float32_bytes(bf16, model, tokens=48) == int(4 * elements * 1.1)


def test_the_windows_are_dealt_over_the_texts():
    def job(source: int, rows: int, sample: bool = False) -> _Job:
        ids = torch.zeros(rows, 4, dtype=torch.long)
        return _Job(source, ids, torch.ones_like(ids), sample=sample)

    # source 0: 7 windows in batches of 3, 3, 1; source 1: 2 windows; each has a heatmap sample
    jobs = [job(0, 3), job(0, 3), job(0, 1), job(0, 1, True), job(1, 2), job(1, 1, True)]
    # six windows dealt in turn: 0, 1, 0, 1, 0, 0 -> source 0's first four, source 1's two
    assert _flip_sample(jobs, 6) == {id(jobs[0]): 3, id(jobs[1]): 1, id(jobs[4]): 2}
    assert _flip_sample(jobs, 1) == {id(jobs[0]): 1}
    assert _flip_sample(jobs, 100) == {id(jobs[0]): 3, id(jobs[1]): 3, id(jobs[2]): 1, id(jobs[4]): 2}


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_a_bad_flip_check_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match=rf"flip_check \(--flip-check\) must be a whole number of windows >= 0 .*"
                                         rf"got {re.escape(repr(bad))}"):
        AnalyzeConfig(path=tmp_path, flip_check=bad)


def test_cli_refuses_a_negative_flip_check_before_any_work(bf16, tmp_path, monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("analyze ran although the command line was refused")

    monkeypatch.setattr("moescope.analysis.analyze.analyze", work)
    result = runner.invoke(app, ["analyze", str(bf16), "--flip-check", "-1", "--out", str(tmp_path / "out")])
    text = _text(result.output)
    assert result.exit_code == 2 and "Invalid value for '--flip-check'" in text, text
    assert "must be a whole number of windows >= 0 (0: no float32 flip check); got -1" in text, text
    assert not (tmp_path / "out").exists()


def test_cli_reports_the_dtype_and_the_flips(bf16, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(bf16), "--no-weights", "--max-tokens", "200", "--seq-len", "16",
                                 "--flip-check", "4", "--activity-tokens", "0", "--ablation-windows", "0",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "Computed in bfloat16: the checkpoint's own (--dtype auto: config.json's dtype)." in text
    assert "Flip check against float32 (64 tokens per layer)" in text
    data = json.loads((out / "results.json").read_text())
    assert data["model"]["dtype"] == "bfloat16" and data["dtype_flips"]["windows"] == 4
    page = " ".join(html.unescape((out / "report.html").read_text()).split())
    assert "computed in <b>bfloat16</b> on cpu: the checkpoint's own (--dtype auto: config.json's dtype)" in page
    assert "Routing in bfloat16 against float32" in page and "flips, not near-ties" in page
