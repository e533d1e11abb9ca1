"""Exporting lab models as Hugging Face checkpoints: transformers itself is the oracle.

Each exportable lab config is saved, loaded back with ``AutoModelForCausalLM.from_pretrained``
(and with moescope's own analyzer loader), and held to the lab model on the same token ids:
logits to float32 rounding, and the experts moescope's recorder reads from the transformers
model equal to the lab router's own choices, token by token and layer by layer.
"""

import re
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_fixtures import TINY_TRAIN, tiny_corpus
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from moescope.lab import export_hf as ex
from moescope.lab.export_hf import NO_FAMILY, NotExportableError, export_checkpoint, export_hf, export_runs
from moescope.lab.model import LMConfig, MoESpec, TinyLM
from moescope.lab.tokenizer import EOT, PAD, encode, load_or_train_tokenizer, tokenize_corpus, train_tokenizer
from moescope.lab.train import RunSpec, train_run
from moescope.models import RoutingRecorder, find_moe_layers, load_moe_model, sort_by_weight

V = 300
BASE = LMConfig(vocab_size=V, d_model=32, n_layer=2, n_head=4, seq_len=32, arch="llama", rope_theta=500.0,
                norm_eps=1e-6, moe=MoESpec(num_experts=8, top_k=2, expert_intermediate=16))
GLM = replace(BASE.moe, router="deepseek_v3", shared_experts=1, shared_intermediate=16)

# (case id, lab config, transformers class, moescope family)
EXPORTABLE = [
    ("mixtral-top2", BASE, "MixtralForCausalLM", "mixtral"),
    ("mixtral-fine-top3", replace(BASE, moe=replace(BASE.moe, num_experts=12, top_k=3, expert_intermediate=8)),
     "MixtralForCausalLM", "mixtral"),
    ("qwen2-shared1", replace(BASE, moe=replace(BASE.moe, shared_experts=1, shared_intermediate=16)),
     "Qwen2MoeForCausalLM", "qwen2_moe"),
    # the lab's fine-grained run: many small experts, larger k, 2 shared; here also unrenormalised
    ("qwen2-fine-2shared-unnormalised",
     replace(BASE, moe=replace(BASE.moe, num_experts=16, top_k=6, expert_intermediate=4, shared_experts=2,
                               shared_intermediate=4, normalize_topk=False)), "Qwen2MoeForCausalLM", "qwen2_moe"),
    ("glm-shared1", replace(BASE, moe=GLM), "Glm4MoeForCausalLM", "glm4_moe"),
    # DeepSeek-MoE's shape: 2 shared experts of I/2 fuse into one MLP of I = 1 · moe_intermediate_size;
    # 4 groups of 2 experts, the best 2 groups eligible; k weights not renormalised
    ("glm-groups-2shared-unnormalised",
     replace(BASE, moe=replace(GLM, shared_experts=2, shared_intermediate=8, n_group=4, topk_group=2, top_k=3,
                               normalize_topk=False)), "Glm4MoeForCausalLM", "glm4_moe"),
]


def _randomised(cfg: LMConfig, seed: int = 0) -> TinyLM:
    """A lab model whose every parameter matters: norms away from 1, DeepSeek's selection bias non-zero."""
    torch.manual_seed(seed)
    model = TinyLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.uniform_(0.5, 1.5)
        for layer in model.moe_layers():
            if hasattr(layer.router, "selection_bias"):
                layer.router.selection_bias.normal_(0.0, 0.1)
    return model


def _ids(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 32) token ids and a padding mask: row 0 padded on the right, row 1 on the left."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (3, 32), generator=g)
    mask = torch.ones_like(idx)
    mask[0, 20:] = 0
    mask[1, :5] = 0
    return idx, mask


def _assert_same_choices(records, routing) -> None:
    """Recorder records (sorted by weight) against the lab's RouterResults, per layer and token."""
    assert len(records) == len(routing)
    for rec, r in zip(records, routing, strict=True):
        assert rec.indices.shape == r.indices.shape
        lab_idx, lab_w = sort_by_weight(r.indices, r.weights)
        assert torch.equal(rec.indices, lab_idx), f"layer {rec.layer}: the experts chosen differ"
        torch.testing.assert_close(rec.weights, lab_w.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("case", "cfg", "cls", "family"), EXPORTABLE, ids=[c[0] for c in EXPORTABLE])
def test_export_computes_the_same_function(tmp_path, case, cfg, cls, family):
    model = _randomised(cfg)
    out = export_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == cls
    assert hf.config.tie_word_embeddings and hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    idx, mask = _ids()
    with torch.no_grad():
        lab = model(idx)
        torch.testing.assert_close(hf(input_ids=idx).logits, lab.logits, rtol=1e-5, atol=1e-5)
        # padding: both keep padded keys out of attention, so every real token agrees
        lab_masked = model(idx, attention_mask=mask).logits
        hf_masked = hf(input_ids=idx, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(hf_masked[real], lab_masked[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lab_masked[1, 5:], lab.logits[1, 5:])  # the left padding was masked, not attended

    # the analyzer's path: find the MoE layers, record the experts the blocks actually used
    views = find_moe_layers(hf)
    assert [v.family for v in views] == [family] * cfg.n_layer
    assert [v.num_experts for v in views] == [cfg.moe.num_experts] * cfg.n_layer
    assert all(v.top_k == cfg.moe.top_k for v in views)
    with torch.no_grad(), RoutingRecorder(hf, views) as rec:
        hf(input_ids=idx)
        records = rec.pop()
    _assert_same_choices(records, lab.routing)
    assert all(r.token_ids is not None and torch.equal(r.token_ids, idx.reshape(-1)) for r in records)

    # and the lab model seen through the same recorder (an independent path through moescope's own layers)
    with torch.no_grad(), RoutingRecorder(model) as rec:
        model(idx)
        own = rec.pop()
    for a, b in zip(records, own, strict=True):
        assert torch.equal(a.indices, b.indices)


def test_qwen2_shared_expert_gate_is_one_half(tmp_path):
    """The ungated shared expert goes out as gate weight 0 (sigmoid = 1/2) and a doubled down projection."""
    model = _randomised(replace(BASE, moe=replace(BASE.moe, shared_experts=1, shared_intermediate=16)))
    hf = AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    for block, layer in zip(hf.model.layers, model.moe_layers(), strict=True):
        assert torch.equal(block.mlp.shared_expert_gate.weight, torch.zeros(1, BASE.d_model))
        assert torch.equal(block.mlp.shared_expert.down_proj.weight, 2 * layer.shared.ffn.down_proj.weight)
        assert torch.equal(block.mlp.shared_expert.up_proj.weight, layer.shared.ffn.up_proj.weight)
        x = torch.randn(7, BASE.d_model)
        with torch.no_grad():
            torch.testing.assert_close(block.mlp(x[None])[0], layer(x).hidden, rtol=1e-5, atol=1e-6)
            gated = torch.sigmoid(block.mlp.shared_expert_gate(x)) * block.mlp.shared_expert(x)
            assert torch.equal(gated, layer.shared(x))  # the shared path: bit for bit, not merely close


def test_glm_selection_bias_is_exported_and_matters(tmp_path):
    """The correction bias changes some choices, so agreeing on them is not agreeing by chance."""
    model = _randomised(replace(BASE, moe=GLM))
    idx, _ = _ids()
    with torch.no_grad():
        biased = [r.indices.sort(-1).values for r in model(idx).routing]
        saved = [layer.router.selection_bias.clone() for layer in model.moe_layers()]
        for layer in model.moe_layers():
            layer.router.selection_bias.zero_()
        unbiased = [r.indices.sort(-1).values for r in model(idx).routing]
        for layer, b in zip(model.moe_layers(), saved, strict=True):
            layer.router.selection_bias.copy_(b)
    assert any(not torch.equal(a, b) for a, b in zip(biased, unbiased, strict=True))
    hf = AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    for view, b in zip(find_moe_layers(hf), saved, strict=True):
        assert torch.equal(view.selection_bias, b)


@pytest.mark.parametrize(("case", "cfg", "cls", "family"), EXPORTABLE[::2], ids=[c[0] for c in EXPORTABLE[::2]])
def test_analyzer_loader_reads_the_export(tmp_path, case, cfg, cls, family):
    """``moescope analyze``'s loader (its own safetensors reader, not from_pretrained) gets the same model."""
    model = _randomised(cfg, seed=3)
    tok = _tokenizer()
    out = export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf, hf_tok, views = load_moe_model(out)
    assert hf_tok is not None and [v.family for v in views] == [family] * cfg.n_layer
    text = "def f(x):\n    return x + 1  # the sum"
    ids = torch.tensor([encode(tok, text)])
    assert torch.equal(hf_tok(text, return_tensors="pt")["input_ids"], ids)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


# -- not exportable ------------------------------------------------------------------------------
NOT_EXPORTABLE = [
    ("nanogpt", replace(BASE, arch="nanogpt"), "topk", "arch='nanogpt'"),
    ("dense", replace(BASE, ffn="dense"), "dense", "dense model has no MoE layer"),
    ("switch", replace(BASE, moe=replace(BASE.moe, router="switch", top_k=1)), "switch", "encoder–decoder"),
    ("cosine", replace(BASE, moe=replace(BASE.moe, router="cosine")), "cosine", "cosine similarity"),
    ("expert_choice", replace(BASE, bidirectional=True, moe=replace(BASE.moe, router="expert_choice")),
     "expert_choice", "bidirectional"),
    ("soft", replace(BASE, bidirectional=True, moe=replace(BASE.moe, router="soft")), "soft", "bidirectional"),
    ("topk-unnormalised", replace(BASE, moe=replace(BASE.moe, normalize_topk=False)), "topk",
     "Mixtral always renormalises"),
    ("deepseek-no-shared", replace(BASE, moe=replace(GLM, shared_experts=0, shared_intermediate=0)), "deepseek_v3",
     "GLM-4-MoE always has one"),
    ("deepseek-odd-shared", replace(BASE, moe=replace(GLM, shared_intermediate=12)), "deepseek_v3",
     "a multiple of the expert width 16"),
]


@pytest.mark.parametrize(("case", "cfg", "router", "why"), NOT_EXPORTABLE, ids=[c[0] for c in NOT_EXPORTABLE])
def test_not_exportable_raises_before_writing(tmp_path, case, cfg, router, why):
    model = TinyLM(cfg)
    target = tmp_path / "out" / "hf"
    with pytest.raises(NotExportableError, match=f"router '{router}' is not exportable") as err:
        export_hf(model, target)
    assert why in str(err.value)
    assert not (tmp_path / "out").exists()  # not even the parent: nothing was written
    assert ex.exportability(cfg).startswith("not exportable: ")


def test_every_lab_router_is_either_exported_or_explained():
    """One registry: each router the lab trains has a family or a reason (none falls through)."""
    from moescope.lab.model import ROUTERS

    covered = {e.router for e in ex.EXPORTERS} | set(NO_FAMILY)
    assert covered == set(ROUTERS)
    assert ex.exportability(BASE) == "Mixtral"
    assert ex.exportability(replace(BASE, moe=GLM)) == "GLM-4-MoE"
    assert ex.exportability(replace(BASE, moe=replace(BASE.moe, shared_experts=2, shared_intermediate=8))) == \
        "Qwen2-MoE"
    # both top-k families refuse an unrenormalised run without a shared expert, and the message gives both reasons
    why = ex.exportability(replace(BASE, moe=replace(BASE.moe, normalize_topk=False)))
    assert "Mixtral always renormalises" in why and "Qwen2-MoE always has a shared expert" in why


def test_nanogpt_non_causal_soft_is_refused_on_arch_first():
    cfg = LMConfig(vocab_size=V, bidirectional=True, moe=MoESpec(router="soft"))
    with pytest.raises(NotExportableError, match="router 'soft'.*arch='nanogpt'"):
        ex.exporter_for(cfg)


# -- atomic writing ------------------------------------------------------------------------------
def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    model = _randomised(BASE)
    target = tmp_path / "hf"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hf(model, target)
    assert (target / "keep.txt").read_text() == "mine"
    export_hf(model, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary or trash folder left


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = _randomised(BASE)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "to_hf_tokenizer", boom)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, tmp_path / "hf", tokenizer=_tokenizer())
    assert list(tmp_path.iterdir()) == []


# -- tokenizer -----------------------------------------------------------------------------------
@cache
def _tokenizer():
    texts = ["def add(a, b):\n    return a + b\n", "The cat sat on the mat; ünïcödé and 日本語 too.",
             "x = 3 * (y + 4) - 7 / 2", "Experts specialise by domain: math, prose, code."] * 40
    return train_tokenizer(texts, V)


def test_tokenizer_round_trips(tmp_path):
    tok = _tokenizer()
    out = export_hf(_randomised(BASE), tmp_path / "hf", tokenizer=tok)
    hf_tok = AutoTokenizer.from_pretrained(out)
    samples = ["def add(a, b):\n    return a + b", "ünïcödé 日本語 🙂 never seen", f"one{EOT}two{PAD}",
               "  leading spaces and trailing  ", ""]
    for text in samples:
        ids = encode(tok, text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == tok.token_to_id(EOT) and hf_tok.pad_token_id == tok.token_to_id(PAD)
    assert hf_tok.model_max_length > 10**6  # not the training length: analyze tokenises whole texts
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert hf.config.eos_token_id == tok.token_to_id(EOT) and hf.config.pad_token_id == tok.token_to_id(PAD)


# -- trained runs, through the lab's own training loop --------------------------------------------
TINY = LMConfig(vocab_size=512, d_model=32, n_layer=2, n_head=2, seq_len=16, arch="llama",
                moe=MoESpec(num_experts=4, top_k=2, expert_intermediate=32))


def _trained(tmp: Path) -> dict:
    """Four tiny runs trained by ``train_run`` in ``tmp/training/runs``, the tokenizer beside them."""
    corpus = tiny_corpus()
    tok = load_or_train_tokenizer(corpus, tmp / "training", 512)
    tokens = tokenize_corpus(corpus, tok)
    specs = [RunSpec("llama-top2", TINY, TINY_TRAIN),
             RunSpec("llama-auxfree", replace(TINY, moe=replace(TINY.moe, router="deepseek_v3", shared_experts=1,
                                                                 shared_intermediate=32, bias_update_rate=1e-2)),
                     replace(TINY_TRAIN, aux={k: 0.0 for k in TINY_TRAIN.aux})),
             RunSpec("llama-fine", replace(TINY, moe=replace(TINY.moe, num_experts=8, top_k=3, expert_intermediate=8,
                                                              shared_experts=2, shared_intermediate=8)), TINY_TRAIN),
             RunSpec("nanogpt-top2", replace(TINY, arch="nanogpt"), TINY_TRAIN)]
    return {s.name: train_run(s, tokens, tmp / "training" / "runs", progress=False) for s in specs}


@pytest.mark.slow
def test_trained_runs_export_and_agree(tmp_path, one_thread):
    results = _trained(tmp_path)
    done = export_runs(results, tmp_path, tmp_path / "hf")
    assert done["nanogpt-top2"].startswith("not exportable: arch='nanogpt'")
    assert not (tmp_path / "hf" / "nanogpt-top2").exists()
    tok = load_or_train_tokenizer(tiny_corpus(), tmp_path / "training", 512)  # the cached one
    text = "def mean(xs):\n    return sum(xs) / len(xs)\nThe experts agree."
    ids = torch.tensor([encode(tok, text)[:16]])
    from moescope.lab.train import load_model

    for name, family in (("llama-top2", "mixtral"), ("llama-auxfree", "glm4_moe"), ("llama-fine", "qwen2_moe")):
        result = results[name]
        lab = load_model(result.checkpoints[max(result.checkpoints)])
        if family == "glm4_moe":  # trained: the bias moved off zero
            assert all(layer.router.selection_bias.abs().sum() > 0 for layer in lab.moe_layers())
        hf = AutoModelForCausalLM.from_pretrained(done[name]).eval()
        assert hf.config.model_type == family
        hf_tok = AutoTokenizer.from_pretrained(done[name])
        assert hf_tok(text)["input_ids"][:16] == ids[0].tolist()
        with torch.no_grad():
            out = lab(ids)
            torch.testing.assert_close(hf(input_ids=ids).logits, out.logits, rtol=1e-5, atol=1e-5)
            with RoutingRecorder(hf) as rec:
                hf(input_ids=ids)
                _assert_same_choices(rec.pop(), out.routing)
        # export_checkpoint on its own gives the same files' model
        again = export_checkpoint(result.checkpoints[max(result.checkpoints)], tmp_path / "again" / name,
                                  tokenizer=tmp_path / "training" / "tokenizer.json")
        with torch.no_grad():
            torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(again)(input_ids=ids).logits,
                                       out.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cli_train_export_hf(tmp_path, monkeypatch, one_thread):
    """``moescope train --export-hf DIR`` exports what it trained and lists what it cannot."""
    import moescope.lab.runs as runs
    from moescope.cli import app

    results = _trained(tmp_path / "lab")
    picked = {"top2": results["llama-top2"], "top2-alpha0": results["nanogpt-top2"]}
    monkeypatch.setattr(runs, "train_lab_runs", lambda p, out, **kw: picked)
    res = CliRunner().invoke(app, ["train", "--runs", "top2,top2-alpha0", "--out", str(tmp_path / "lab"),
                                   "--export-hf", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert "top2: exported to" in res.output
    assert "top2-alpha0: not exportable: arch='nanogpt'" in " ".join(res.output.split())  # console wraps lines
    assert (tmp_path / "hf" / "top2" / "config.json").exists()
    assert (tmp_path / "hf" / "top2" / "tokenizer.json").exists()
    assert not (tmp_path / "hf" / "top2-alpha0").exists()


def test_cli_export_hf_path_is_checked_before_training(tmp_path, monkeypatch):
    import moescope.lab.runs as runs
    from moescope.cli import app

    def work(*args, **kwargs):
        raise AssertionError("trained although --export-hf was refused")

    monkeypatch.setattr(runs, "train_lab_runs", work)
    (tmp_path / "taken").write_text("not a folder")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "lab"), "--export-hf", str(tmp_path / "taken")])
    assert res.exit_code == 2
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.output).split())  # without rich's box and wrapping
    assert "Invalid value for '--export-hf'" in text and "exists and is not a folder" in text


@pytest.mark.slow
def test_analyze_on_the_export_reproduces_the_labs_routing_numbers(tmp_path, one_thread):
    """Two code paths that must agree: the lab's routing statistics of its own model (``trained.routing_measurements``,
    the lab's recorder on moescope layers) and ``moescope analyze`` on the Hugging Face export (transformers'
    model, its tokenizer, analyze's windows) — loads, co-activation, domain specialisation and near-ties, on the
    same token windows of each domain's validation text."""
    from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
    from moescope.lab.train import load_model
    from moescope.lab.trained import routing_measurements

    results = _trained(tmp_path)
    done = export_runs(results, tmp_path)                     # each run's own copy, <run>/hf
    corpus = tiny_corpus()
    tok = load_or_train_tokenizer(corpus, tmp_path / "training", 512)
    seq, windows = TINY.seq_len, 6
    texts = {d: "\n".join(doc.text for doc in corpus.val if doc.domain == d) for d in ("code", "language", "math")}
    for name in ("llama-top2", "llama-auxfree", "llama-fine"):
        assert done[name] == results[name].run_dir / "hf"
        hf_tok = AutoTokenizer.from_pretrained(done[name])
        val = {}
        for d, text in texts.items():
            ids = encode(tok, text)
            assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids   # the same ids on both paths
            assert len(ids) >= windows * seq
            val[d] = torch.tensor(ids[: windows * seq])
        lab = load_model(results[name].checkpoints[max(results[name].checkpoints)])
        ours = routing_measurements(lab, val)["layers"]
        cfg = AnalyzeConfig(path=done[name], sources=tuple(Source(d, t, d) for d, t in texts.items()), seq_len=seq,
                            max_tokens=windows * seq, weights=False, boundary_points=0, activity_tokens=0,
                            ablation_windows=0, dtype="float32", flip_check=0)
        theirs = analyze(cfg)["routing"]
        assert len(ours) == len(theirs) == TINY.n_layer
        for a, b in zip(ours, theirs, strict=True):
            assert a["tokens"] == b["tokens"] == 3 * windows * seq
            assert a["load"] == pytest.approx(b["load"], abs=1e-12)
            assert a["coactivation"] == b["coactivation"]
            np.testing.assert_allclose(a["domains"]["specialisation"], b["domains"]["specialisation"], atol=1e-12)
            assert a["near_tie_share"] == pytest.approx(b["near_tie_share"], abs=1e-12)
            assert a["mean_score"] == pytest.approx(b["mean_score"], abs=1e-5)
