"""Claim 19 (HypLoRA vs LoRA) and its experiment, moescope.lab.hyplora."""

import json
import random

import pytest
import torch

from moescope.lab import hyplora as exp
from moescope.lab.claims import c19_hyplora as claim
from moescope.lab.train import deterministic
from moescope.report.hyplora_figures import FIGURES


def _planted(lora_hard: list[float], hyp_hard: list[float]) -> dict:
    """A minimal experiment dict with the given per-seed hard losses (everything else fixed)."""
    def runs(hard):
        return [{"seed": i, "hard_loss": h, "hard_accuracy": 0.1 + 0.01 * i, "easy_loss": 0.5 + 0.01 * i,
                 "easy_accuracy": 0.3, "curve": [2.0, 1.0, 0.8]} for i, h in enumerate(hard)]
    n = len(lora_hard)
    return {"hyplora": {
        "seeds": list(range(n)), "base_kind": "planted", "settings": {"finetune_steps": 3},
        "adapter": {"rank": 4, "alpha": 8.0, "curvature": 1.0, "target_modules": ["c_attn", "c_proj"]},
        "task": {"train_ops": [1, 2], "hard_ops": 3},
        "params": {"hyplora": 100, "lora": 100, "expected": 100, "base_total": 1000},
        "base_model": {"easy": {"answer_loss": 2.0, "accuracy": 0.0}, "hard": {"answer_loss": 2.5, "accuracy": 0.0}},
        "runs": {"hyplora": runs(hyp_hard), "lora": runs(lora_hard)},
        "delta": {"embeddings": {"relative": [0.2, 0.21, 0.19], "gaussian": [0.3, 0.31, 0.29], "points": 3, "dim": 4},
                  "hidden": {"relative": [0.3, 0.3, 0.3], "gaussian": [0.3, 0.31, 0.29], "points": 3, "dim": 4}},
    }}


@pytest.mark.parametrize("lora, hyp, verdict", [
    ([1.50, 1.60, 1.55, 1.52], [1.40, 1.49, 1.46, 1.41], "supported"),        # HypLoRA ~0.1 nats better, tight
    ([1.40, 1.49, 1.46, 1.41], [1.50, 1.60, 1.55, 1.52], "not supported"),    # ~0.1 nats worse, tight
    ([1.50, 1.60, 1.55], [1.30, 1.80, 1.56], "inconclusive"),                 # the interval straddles the band
    ([1.500, 1.600, 1.550], [1.499, 1.602, 1.549], "inconclusive"),           # equal within the margin
])
def test_rule_on_planted_results(lora, hyp, verdict):
    v = claim.from_lab(_planted(lora, hyp))
    assert v.verdict == verdict
    assert v.claim_id == claim.ID == 19 and v.figures == claim.FIGURES
    assert v.key.value == pytest.approx(sum(lora) / len(lora) - sum(hyp) / len(hyp))   # LoRA − HypLoRA
    assert "0.02" in v.rule and "GSM8K" in v.caveat and "AQuA" in v.caveat
    json.dumps(v.to_dict(), allow_nan=False)


def _left_to_right(expr: str) -> int:
    """Value of ``a ± b ± ...`` written with spaces (what the chains use)."""
    tokens = expr.split()
    value = int(tokens[0])
    for sign, num in zip(tokens[1::2], tokens[2::2], strict=True):
        value = value + int(num) if sign == "+" else value - int(num)
    return value


def test_chain_problems_are_correct_step_by_step():
    rng = random.Random(0)
    for ops in (1, 2, 3, 4):
        for _ in range(50):
            prompt, completion, answer = exp.chain_problem(rng, ops, 9)
            line = prompt + completion.rstrip("\n")
            parts = line.split(" = ")
            assert len(parts) == ops + 1 and int(parts[-1]) == answer
            for expr in parts:                                           # every step is the same value
                assert _left_to_right(expr) == answer


def test_teacher_forced_accuracy_is_greedy_decoding():
    """A problem counts as solved exactly when greedy decoding reproduces its completion: plant the model's own
    greedy completions as references (all solved), then change one character of each (none solved)."""
    p = exp.hyplora_profile("quick")
    with torch.random.fork_rng(devices=[]), deterministic(1):
        torch.manual_seed(0)
        model, codec = exp.pretrain_tiny(exp.HypLoRAProfile(**{**p.__dict__, "pretrain_steps": 30}), 0)
    rng = random.Random(1)
    probs = exp.encode_problems(codec, [exp.chain_problem(rng, 2, 9) for _ in range(6)])
    pad = codec.encode("\n")[0]
    greedy = exp.greedy_completions(model, codec, probs, list(range(6)), pad)
    own = exp.Problems(probs.prompts, [codec.encode(g) for g in greedy], probs.answers)
    assert exp.evaluate(model, own, pad=pad)["accuracy"] == 1.0
    wrong = [codec.encode(g[:-1] + ("7" if g[-1] != "7" else "3")) for g in greedy]
    assert exp.evaluate(model, exp.Problems(probs.prompts, wrong, probs.answers), pad=pad)["accuracy"] == 0.0


def test_bad_profile_and_bad_base_raise(tmp_path):
    with pytest.raises(ValueError, match=r"profile must be one of \('quick', 'full'\); got 'fast'"):
        exp.run_hyplora("fast")
    with pytest.raises(ValueError, match="base must be a lab checkpoint directory"):
        exp.load_base(tmp_path)


@pytest.fixture(scope="module")
def quick():
    return exp.run_hyplora("quick", seed=0)


@pytest.mark.slow
def test_quick_profile_runs_is_json_ready_and_deterministic(quick):
    json.dumps(quick, allow_nan=False)
    assert quick["params"]["hyplora"] == quick["params"]["lora"] == quick["params"]["expected"] > 0
    assert len(quick["seeds"]) >= 3 and all(len(quick["runs"][m]) == len(quick["seeds"]) for m in exp.METHODS)
    again = exp.run_hyplora("quick", seed=0)

    def flat(x, path=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from flat(v, f"{path}[{i}]")
        else:
            yield path, x

    for (pa, a), (pb, b) in zip(flat(quick), flat(again), strict=True):
        assert pa == pb
        assert a == pytest.approx(b, abs=1e-6) if isinstance(a, float) else a == b, pa


@pytest.mark.slow
def test_claim_and_figures_render_from_the_quick_run(quick):
    v = claim.from_lab({"hyplora": quick})
    assert v.verdict in ("supported", "not supported", "inconclusive")
    for name, (caption, draw) in FIGURES.items():
        assert name in claim.FIGURES and caption
        assert draw(quick).startswith(b"\x89PNG")


@pytest.mark.slow
def test_runs_on_a_lab_checkpoint_with_its_bpe_tokenizer(tmp_path):
    """``base`` = a lab run directory: newest checkpoint of an MoE TinyLM, tokenizer.json found above it."""
    from moescope.lab import checkpoint as ckpt
    from moescope.lab.corpus import math_documents
    from moescope.lab.model import LMConfig, MoESpec, TinyLM
    from moescope.lab.tokenizer import train_tokenizer

    tok = train_tokenizer([d.text for d in math_documents(20_000, 2_000, 0)], 300)
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    cfg = LMConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layer=2, n_head=4, seq_len=64,
                   moe=MoESpec(num_experts=4, top_k=2, expert_intermediate=32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyLM(cfg)
    run = tmp_path / "runs" / "top2"
    ckpt.save_checkpoint(run / "checkpoints", 0, model, torch.optim.AdamW(model.parameters()),
                         {"config": {"run": {"lm": cfg.to_dict()}}})
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    out = exp.run_hyplora("quick", seed=0, base=run)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads   # no global state left
    assert out["base"].endswith("step_000000") and "topk" in out["base_kind"]
    assert out["params"]["hyplora"] == out["params"]["lora"] == 2 * 4 * ((32 + 96) + (32 + 32))
    json.dumps(out, allow_nan=False)
