"""load_moe_model: what it returns, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import tiny_checkpoints
import torch

from moescope.models import BY_MODEL_TYPE, BY_NAME, FAMILIES, RoutingRecorder, find_moe_layers, load_moe_model

ORIGINAL = tiny_checkpoints.ORIGINAL


@pytest.mark.parametrize("family", list(tiny_checkpoints.BUILDERS))
def test_loaded_model_is_eval_cpu_float32_with_tokenizer_and_views(loaded, family):
    model, tok, views = loaded(family)
    assert family in BY_MODEL_TYPE or family in BY_NAME
    assert not model.training
    p = next(model.parameters())
    assert p.device.type == "cpu" and p.dtype == torch.float32
    assert tok is not None and tok.pad_token == "<pad>"
    assert len(views) >= 1 and [v.index for v in views] == list(range(len(views)))
    assert all(v.router_weight.shape == (v.num_experts, tiny_checkpoints.H) for v in views)
    if family in ORIGINAL:  # two decoder layers of 8 experts; DeepSeek-V3's first layer is dense
        assert len(views) == (1 if family == "deepseek_v3" else 2)
        assert all(v.num_experts == tiny_checkpoints.E for v in views)


def test_switch_is_loaded_as_its_encoder(loaded):
    model, _, views = loaded("switch_transformers")
    assert type(model).__name__ == "SwitchTransformersEncoderModel"
    assert all(v.name.startswith("encoder.") for v in views)


def test_weights_match_the_saved_model(checkpoint, loaded):
    """The loaded router equals the one that was saved (load conversions keep every value)."""
    _, _, views = loaded("deepseek_v3")
    ref = tiny_checkpoints.build("deepseek_v3", seed=tiny_checkpoints.seed_of("deepseek_v3"))
    ref_gate = ref.get_submodule(views[0].name).gate
    assert torch.equal(views[0].router_weight, ref_gate.weight)
    assert torch.equal(views[0].selection_bias, ref_gate.e_score_correction_bias)


def test_no_tokenizer_gives_none(checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(checkpoint("olmoe"), d)
    for f in d.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()
    _, tok, views = load_moe_model(d)
    assert tok is None and views


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_moe_model(tmp_path / "nope")


def test_not_a_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is not a directory"):
        load_moe_model(f)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        load_moe_model(tmp_path)


def test_invalid_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_moe_model(tmp_path)


def test_dense_model_lists_the_supported_families(tmp_path):
    d = tiny_checkpoints.save_dense(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"model_type='llama'") as err:
        load_moe_model(d)
    assert all(f"{f.title} ({t})" in str(err.value) for t, f in BY_MODEL_TYPE.items())


def test_find_moe_layers_on_a_dense_model_lists_the_supported_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"no MoE layer found in LlamaForCausalLM") as err:
        find_moe_layers(model)
    assert all(f.title in str(err.value) for f in FAMILIES)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_moe_layers("model")


def test_corrupt_safetensors_is_named(checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(checkpoint("mixtral"), d)
    (d / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors header" * 10)
    with pytest.raises(ValueError, match=r"corrupt safetensors file .*model\.safetensors"):
        load_moe_model(d)


def test_truncated_safetensors_is_named(checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(checkpoint("mixtral"), d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated safetensors file .*model\.safetensors"):
        load_moe_model(d)


def test_missing_weights_file(checkpoint, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(checkpoint("mixtral"), d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights"):
        load_moe_model(d)


def test_checkpoint_missing_a_tensor_is_refused(checkpoint, tmp_path):
    """transformers would silently initialise a missing router at random."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(checkpoint("mixtral"), d)
    weights = load_file(d / "model.safetensors")
    weights.pop(next(k for k in weights if k.endswith("layers.1.block_sparse_moe.gate.weight")))
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks .*layers\.1\.mlp\.gate\.weight"):
        load_moe_model(d)


def test_unsupported_model_type_in_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported: .*Mixtral \(mixtral\)"):
        load_moe_model(tmp_path)


# -- dtype and device ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """The tiny Mixtral saved in bfloat16 (config.json says dtype=bfloat16)."""
    d = tmp_path_factory.mktemp("bf16") / "mixtral"
    tiny_checkpoints.build("mixtral", seed=tiny_checkpoints.seed_of("mixtral")).to(torch.bfloat16).save_pretrained(d)
    tiny_checkpoints.save_tokenizer(d)
    return d


def test_auto_dtype_follows_the_config_then_the_safetensors_header(bf16_checkpoint, tmp_path):
    from moescope.models.loading import checkpoint_dtype

    assert checkpoint_dtype(bf16_checkpoint) == torch.bfloat16
    d = tmp_path / "m"
    shutil.copytree(bf16_checkpoint, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (d / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(d) == torch.bfloat16  # from the header: every tensor is BF16
    config["dtype"] = "float8_e4m3fn"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"stored in float8_e4m3fn.*choose --dtype float32\|bfloat16\|float16"):
        load_moe_model(d, dtype="auto")


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.bfloat16), ("float32", torch.float32),
                                                 ("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                                 (torch.float16, torch.float16)])
def test_load_in_each_dtype(bf16_checkpoint, dtype, expected):
    model, _, _ = load_moe_model(bf16_checkpoint, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_routing_in_bfloat16_is_close_to_float32(bf16_checkpoint):
    """Same weights (the bf16 values, exactly representable in float32), two compute dtypes.

    bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2% per operation), so after the
    attention and the first MoE layer the router logits move by about a percent: a token's top-1 expert
    can only change where its two best logits are that close. On this checkpoint 97-100% of the top-1
    choices agree per layer; the test asks for 90%, and for mean |Δ score| < 0.02 (scores are float32
    probabilities in both runs).
    """
    ids = torch.randint(3, tiny_checkpoints.VOCAB, (4, 64), generator=torch.Generator().manual_seed(0))
    records = {}
    for dtype in ("float32", "auto"):
        model, _, views = load_moe_model(bf16_checkpoint, dtype=dtype)
        with RoutingRecorder(model, views) as rec, torch.no_grad():
            model(input_ids=ids)
            records[dtype] = rec.pop()
    for a, b in zip(records["float32"], records["auto"], strict=True):
        assert a.scores.dtype == b.scores.dtype == torch.float32
        assert (a.indices[:, 0] == b.indices[:, 0]).float().mean() >= 0.9
        assert (a.scores - b.scores).abs().mean() < 0.02


def test_bad_dtype_or_device_is_refused_before_reading(tmp_path, monkeypatch):
    from moescope.models.loading import check_device

    nowhere = tmp_path / "nope"  # not even a checkpoint: the dtype and device are checked first
    with pytest.raises(ValueError, match=r"dtype 'int8' is not supported; choose one of auto, float32, bfloat16, "
                                         r"float16"):
        load_moe_model(nowhere, dtype="int8")
    with pytest.raises(ValueError, match=r"dtype 'float64' is not supported"):
        load_moe_model(nowhere, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"device 'tpu' is not supported; choose one of cpu, cuda, mps"):
        load_moe_model(nowhere, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda:0' is not available on this machine .*available: cpu"):
        load_moe_model(nowhere, device="cuda:0")
    assert check_device("cpu") == torch.device("cpu")


def test_pickle_checkpoints_are_refused_in_one_line(checkpoint, tmp_path):
    """A pytorch_model.bin is never unpickled (a pickle can run code): one line names it and says what to do."""
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the pickle ran code')",))

    bad = tmp_path / "bin"
    bad.mkdir()
    shutil.copy(checkpoint("mixtral") / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a PyTorch pickle, which moescope never loads") as err:
        load_moe_model(bad)
    assert "\n" not in str(err.value) and "safetensors" in str(err.value)


def test_missing_shard_of_the_index_is_named(checkpoint, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(checkpoint("mixtral"), sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"names shards that are missing: .*model-00002-of-00002\.safetensors"):
        load_moe_model(sharded)
