"""``--dtype bfloat16`` for the lab's own runs: each step's forward under bfloat16 autocast, float32 weights.

Checked against torch itself: inside a step the routers' and experts' matrix products return bfloat16 (what
``torch.autocast`` does to ``F.linear``), while the parameters, their gradients and AdamW's state stay float32;
the step's loss lies within bfloat16's rounding of the float32 step's (one step from the same weights and
batch) without being equal; a float32 run's recorded config is the one it had before the option existed.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from lab_fixtures import TINY_TRAIN, tiny_spec, tiny_tokens
from typer.testing import CliRunner

from moescope.lab.model import TinyLM
from moescope.lab.run import LabConfig
from moescope.lab.runs import lab_profile
from moescope.lab.train import BatchSampler, RunSpec, TrainConfig, make_optimizer, train_run, train_step


def test_autocast_values_are_checked():
    with pytest.raises(ValueError, match=r"autocast must be None \(float32\) or 'bfloat16'; got autocast='float16'"):
        TrainConfig(autocast="float16")
    with pytest.raises(ValueError, match="float32 or under bfloat16 autocast"):
        LabConfig(dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        lab_profile("quick", 0, dtype="auto")
    assert lab_profile("quick", 0, dtype="bfloat16").train.autocast == "bfloat16"
    assert lab_profile("quick", 0).train.autocast is None


def test_float32_spec_writes_no_autocast_and_bfloat16_round_trips():
    plain = tiny_spec("topk")
    assert "autocast" not in plain.to_dict()["train"]
    assert RunSpec.from_dict(plain.to_dict()) == plain
    half = tiny_spec("topk", autocast="bfloat16")
    assert half.to_dict()["train"]["autocast"] == "bfloat16"
    assert RunSpec.from_dict(json.loads(json.dumps(half.to_dict()))) == half


def _one_step(autocast: str | None, seen: list | None = None):
    spec = tiny_spec("topk", autocast=autocast)
    torch.manual_seed(0)
    model = TinyLM(spec.lm)
    optimizer = make_optimizer(model, spec.train)
    tokens = tiny_tokens()
    sampler = BatchSampler(tokens.train, seq_len=spec.lm.seq_len, batch_size=4, objective="causal", mask_id=0,
                           mask_rate=0.15, seed=0)
    handles = []
    if seen is not None:
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) or name.endswith("experts"):
                handles.append(m.register_forward_hook(lambda mod, a, out, n=name: seen.append(
                    (n, out.dtype if isinstance(out, torch.Tensor) else None))))
    try:
        record = train_step(model, optimizer, sampler, spec.train, 0)
    finally:
        for h in handles:
            h.remove()
    return model, optimizer, record


def test_a_bfloat16_step_runs_its_products_in_bfloat16_and_keeps_float32_state():
    seen: list = []
    model, optimizer, half = _one_step("bfloat16", seen)
    linear = [dtype for name, dtype in seen if dtype is not None]
    assert linear and all(d == torch.bfloat16 for d in linear), seen                 # autocast reached them
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    for state in optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    _, _, full = _one_step(None)
    assert half["loss"] != full["loss"]                                               # another computation ...
    assert half["loss"] == pytest.approx(full["loss"], rel=2.0 ** -6)                # ... within bf16's rounding


@pytest.mark.slow
def test_a_bfloat16_run_learns_and_records_its_dtype(tmp_path):
    spec = tiny_spec("topk", autocast="bfloat16", steps=24, checkpoint_every=8)
    result = train_run(spec, tiny_tokens(), tmp_path, progress=False)
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert saved["spec"]["train"]["autocast"] == "bfloat16"
    float32 = train_run(replace(spec, train=replace(spec.train, autocast=None)), tiny_tokens(), tmp_path / "f32",
                        progress=False)
    assert result.val_loss < 6.0 and abs(result.val_loss - float32.val_loss) < 0.1   # it learns, as float32 does
    assert result.val_loss != float32.val_loss


def test_cli_train_passes_the_dtype_and_refuses_others(tmp_path, monkeypatch):
    import moescope.lab.runs as runs
    from moescope.cli import app

    seen = {}
    monkeypatch.setattr(runs, "train_lab_runs", lambda p, out, **kw: seen.setdefault("autocast", p.train.autocast)
                        and {})
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dtype", "bfloat16", "--out", str(tmp_path / "lab")])
    assert seen == {"autocast": "bfloat16"}, res.output
    res = runner.invoke(app, ["train", "--dtype", "float16", "--out", str(tmp_path / "lab")])
    assert res.exit_code == 2 and "dtype must be one of float32, bfloat16" in " ".join(res.output.split())
    assert TINY_TRAIN.autocast is None
