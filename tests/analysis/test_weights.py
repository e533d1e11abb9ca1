"""Weight geometry streamed from safetensors: readers checked against live transformers models,
statistics against their null models (hand-derived values, Monte Carlo, planted structure)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import integrate
from weights_checkpoints import (
    DECODERS,
    E,
    H,
    decoder,
    live_block,
    mixtral_layer,
    planted_layer,
    random_layer,
    save,
    switch,
)

from moescope.analysis.checkpoint import CheckpointError, open_checkpoint, write_safetensors
from moescope.analysis.weights import (
    alignment_geometry,
    cosine_law_test,
    mean_abs_cos_null,
    overlap_zscore,
    router_geometry,
    subspace_geometry,
    top_subspace,
    weight_geometry,
)
from moescope.geometry import coordinate_pdf, principal_angles, random_subspace
from moescope.moe import from_hf

ORACLE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "llama4_text", "gpt_oss"]
FORWARD_FAMILIES = ["phimoe", "granitemoeshared", "jamba", "glm4_moe"]


def _strip(result: dict) -> dict:
    """A result without what legitimately differs between two runs (path, timings)."""
    out = json.loads(json.dumps(result))
    out.pop("path")
    for layer in out["layers"]:
        layer.pop("seconds")
    return out


# --------------------------------------------------------------------------- null laws, by hand


def test_mean_abs_cos_null_hand_values_and_quadrature():
    # d = 2: cos of a uniform angle, E|cos| = 2/π. d = 3: cos is uniform on [-1, 1], E|cos| = 1/2.
    assert mean_abs_cos_null(2) == pytest.approx(2 / math.pi, rel=1e-14)
    assert mean_abs_cos_null(3) == pytest.approx(0.5, rel=1e-14)
    for d in (5, 64, 4096):
        quad = 2 * integrate.quad(lambda t, d=d: t * coordinate_pdf(t, d), 0, 1, points=[d**-0.5], limit=200)[0]
        assert mean_abs_cos_null(d) == pytest.approx(quad, rel=1e-8)
    assert mean_abs_cos_null(10**6) == pytest.approx(math.sqrt(2 / (math.pi * 10**6)), rel=1e-5)  # Gaussian limit


def test_router_geometry_hand_cases():
    eye = torch.eye(6, 10) * torch.arange(1.0, 7.0)[:, None]   # orthogonal rows of different norms
    g = router_geometry(eye)
    assert g["participation_ratio"] == pytest.approx(6.0)     # E²/(E + 0)
    assert g["resultant_length"] == pytest.approx(1 / math.sqrt(6))  # ||Σ e_i||/E = √6/6
    assert g["mean_abs_cos"] == 0.0 and g["max_abs_cos"] == 0.0
    same = torch.ones(4, 10) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]  # collinear
    g = router_geometry(same)
    assert g["participation_ratio"] == pytest.approx(1.0)
    assert g["resultant_length"] == pytest.approx(1.0)
    assert np.allclose(g["cosine"], 1.0)
    with pytest.raises(ValueError, match="E >= 2"):
        router_geometry(torch.ones(1, 5))
    with pytest.raises(ValueError, match="zero"):
        router_geometry(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_subspace_and_alignment_hand_cases():
    h, r = 12, 3
    eye = torch.eye(h, dtype=torch.float64)
    disjoint = torch.stack([eye[:, 0:3], eye[:, 3:6], eye[:, 6:9]])       # mutually orthogonal subspaces
    g = subspace_geometry(disjoint)
    assert g["mean_cos2_pairs"] == pytest.approx(0.0, abs=1e-12)
    assert g["min_grassmann"] == pytest.approx(math.sqrt(r) * math.pi / 2)
    assert g["null_sum_cos2"] == pytest.approx(r * r / h)
    same = torch.stack([eye[:, 0:3], eye[:, [2, 0, 1]]])                   # one subspace, two bases
    g = subspace_geometry(same)
    assert g["mean_cos2"][0][1] == pytest.approx(1.0) and g["grassmann"][0][1] == pytest.approx(0.0, abs=1e-7)
    assert g["overlap_z"][0][0] is None
    # router row e is the first basis vector of subspace e: share 1 in its own, 0 in the others
    a = alignment_geometry(torch.stack([eye[0], eye[3], eye[6]]) * 5.0, disjoint)
    assert a["own_share"] == pytest.approx([1.0] * 3) and a["other_share"] == pytest.approx([0.0] * 3, abs=1e-15)
    assert a["null_share"] == pytest.approx(r / h)


# --------------------------------------------------------------------------- null laws, Monte Carlo


@pytest.mark.parametrize("seed", range(4))
def test_random_subspaces_sit_on_the_null_and_a_wrong_dimension_does_not(seed):
    g = torch.Generator().manual_seed(seed)
    h, r, e = 40, 6, 24                                              # P = 276 pairs
    res = subspace_geometry(random_subspace(h, r, g, batch=(e,)))
    assert abs(res["z"]) < 4
    # the same overlaps held against the null of the wrong ambient dimension are far off
    assert abs(overlap_zscore(res["mean_sum_cos2"], r, r, 2 * h, n=res["num_pairs"])) > 10


@pytest.mark.parametrize("seed", range(4))
def test_random_router_cosines_follow_the_exact_law_and_a_wrong_dimension_does_not(seed):
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(seed))   # 780 cosines in R^30
    g = router_geometry(w)
    assert g["ks_pvalue"] > 1e-3
    assert abs(g["resultant_z"]) < 4
    assert abs(g["participation_ratio"] / g["null_participation_ratio"] - 1) < 0.1
    cos = np.asarray(g["cosine"])[np.triu_indices(40, 1)]
    assert cosine_law_test(cos, 120)["ks_pvalue"] < 1e-6


def test_layer_z_scores_are_calibrated_under_the_null():
    # Each layer z divides by sqrt(var / n), which holds only because overlaps sharing an expert
    # (or a router row) are uncorrelated under the null. Over many null layers the z's must
    # then have mean 0 and sd 1; a missing 1/n, a wrong mean or correlated pairs would show.
    g = torch.Generator().manual_seed(0)
    h, r, e, trials = 20, 3, 6, 300
    zs = {"subspace": [], "own": [], "other": [], "resultant": []}
    for _ in range(trials):
        bases = random_subspace(h, r, g, batch=(e,))
        router = torch.randn(e, h, generator=g, dtype=torch.float64)
        zs["subspace"].append(subspace_geometry(bases)["z"])
        a = alignment_geometry(router, bases)
        zs["own"].append(a["z_own"])
        zs["other"].append(a["z_other"])
        zs["resultant"].append(router_geometry(router)["resultant_z"])
    for name, z in zs.items():
        z = np.asarray(z)
        assert abs(z.mean()) < 0.2, name                             # se of the mean: 1/sqrt(300) = 0.058
        assert 0.85 < z.std() < 1.15, name                           # se of the sd: ~0.04


@pytest.mark.parametrize("seed", range(3))
def test_random_checkpoint_sits_on_every_null(tmp_path, seed):
    root = random_layer(tmp_path, num_experts=16, hidden=64, inter=24, seed=seed)
    res = weight_geometry(root, progress=False)
    layer = res["layers"][0]
    ex, al, ro = layer["experts"], layer["alignment"], layer["router"]
    assert 1 <= ex["rank"] <= 32 and not any(ex["rank_capped"])
    assert all(0.35 < v < 0.65 for v in ex["energy_at_rank"])       # the median rank sits near 50% for all
    assert abs(ex["z"]) < 4
    assert abs(al["z_own"]) < 4 and abs(al["z_other"]) < 4
    assert ro["ks_pvalue"] > 1e-3 and abs(ro["resultant_z"]) < 4
    # the wrong H in the null is caught
    assert abs(overlap_zscore(ex["mean_sum_cos2"], ex["rank"], ex["rank"], 2 * 64, n=ex["num_pairs"])) > 10
    json.dumps(res, allow_nan=False)                                 # JSON-ready, no NaN


# --------------------------------------------------------------------------- planted structure


def test_planted_shared_subspace_and_router_alignment_are_found(tmp_path):
    root, _ = planted_layer(tmp_path, num_experts=6, hidden=64, inter=24, k=4, seed=0)
    layer = weight_geometry(root, rank=4, progress=False)["layers"][0]
    ex = layer["experts"]
    # noise 0.1 against strength 10 tilts the shared subspace by ~0.08 rad per direction
    assert ex["mean_cos2"][0][1] > 0.98 and ex["grassmann"][0][1] < 0.25    # max possible: √4·π/2 = 3.14
    assert ex["overlap_z"][0][1] > 10
    others = [ex["overlap_z"][i][j] for i in range(6) for j in range(i + 1, 6) if (i, j) != (0, 1)]
    assert max(abs(z) for z in others) < 5
    assert ex["top_pairs"][0][:2] == [0, 1] and ex["top_pairs"][0][3] == pytest.approx(ex["overlap_z"][0][1])
    assert layer["alignment"]["own_share"][2] > 0.99                # router row 2 planted in subspace 2
    assert layer["alignment"]["null_share"] == pytest.approx(4 / 64)
    # the energy-chosen rank is 3 (four equal directions hold 96% of ||W||², so 3 reach 72%):
    # two different 3-planes inside B, still far above the null
    auto = weight_geometry(root, progress=False)["layers"][0]["experts"]
    assert auto["rank"] == 3 and auto["overlap_z"][0][1] > 10
    lean = weight_geometry(root, matrices=False, progress=False)["layers"][0]
    assert lean["experts"]["mean_cos2"] is None and lean["router"]["cosine"] is None
    assert lean["alignment"]["share"] is None and lean["experts"]["top_pairs"][0][:2] == [0, 1]


def test_randomized_svd_recovers_the_exact_top_subspace():
    g = torch.Generator().manual_seed(0)
    m, h, q = 1500, 400, 16
    u = torch.linalg.qr(torch.randn(m, h, generator=g))[0]
    v = torch.linalg.qr(torch.randn(h, h, generator=g))[0]
    w = (u * 0.8 ** torch.arange(h, dtype=torch.float32)) @ v.T         # σ_i = 0.8^i
    exact, cap_exact = top_subspace(w, q, method="exact")
    approx, cap_approx = top_subspace(w, q, method="randomized", niter=2, seed=1)
    assert float(principal_angles(exact[:, :8].float(), approx[:, :8]).max()) < 1e-3
    assert np.allclose(cap_exact, cap_approx, atol=1e-4)
    assert cap_exact[0] == pytest.approx(1 - 0.64, rel=1e-4)             # σ_1² / Σσ² = 1 − 0.8²
    with pytest.raises(ValueError, match="q must lie"):
        top_subspace(w, h + 1)


# --------------------------------------------------------------------------- reading from disk


def _moe_blocks(model, family):
    attr = DECODERS[family][2]
    return [i for i, lay in enumerate(model.model.layers) if "experts" in dict(getattr(lay, attr).named_children())]


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
def test_weights_read_from_disk_equal_the_live_model(tmp_path, family):
    model = decoder(family)
    ckpt = open_checkpoint(save(model, tmp_path))
    assert ckpt.model_type == family
    assert [lay.block for lay in ckpt.layers] == _moe_blocks(model, family)
    if family == "deepseek_v3":
        assert [lay.block for lay in ckpt.layers] == [1, 2]              # first_k_dense_replace = 1
    for layer in ckpt.layers:
        ref = from_hf(live_block(model, family, layer.name))             # moescope layout, forward-checked
        assert (layer.num_experts, layer.hidden) == (E, H)
        assert torch.equal(layer.router_weight(), ref.router.weight)
        for e in range(E):
            assert torch.equal(layer.input_projection(e), ref.experts.gate_up_proj[e])
            w = layer.expert(e)
            assert torch.equal(w.input_projection(), ref.experts.gate_up_proj[e])
            assert torch.equal(w.down, ref.experts.down_proj[e])
        assert layer.num_shared == (ref.shared is not None)
        if ref.shared is not None:
            s = layer.shared(0)
            assert torch.equal(s.gate, ref.shared.ffn.gate_proj.weight)
            assert torch.equal(s.up, ref.shared.ffn.up_proj.weight)
            assert torch.equal(s.down, ref.shared.ffn.down_proj.weight)
            gate = getattr(ref.shared, "gate", None)
            assert (layer.shared_gate() is None) == (gate is None)
            if gate is not None:
                assert torch.equal(layer.shared_gate(), gate.weight)
        if hasattr(ref.router, "selection_bias"):
            assert torch.equal(layer.selection_bias(), ref.router.selection_bias)
        bias = getattr(ref.router, "bias", None)
        if isinstance(bias, torch.Tensor):
            assert torch.equal(layer.router_bias(), bias)


def test_switch_encoder_and_decoder_layers_equal_the_live_model(tmp_path):
    model = switch()
    ckpt = open_checkpoint(save(model, tmp_path))
    assert [lay.name for lay in ckpt.layers] == ["encoder.block.1.layer.1", "encoder.block.3.layer.1",
                                                 "decoder.block.1.layer.2", "decoder.block.3.layer.2"]
    for layer in ckpt.layers:
        ref = from_hf(live_block(model, "switch_transformers", layer.name))
        assert torch.equal(layer.router_weight(), ref.router.weight)
        assert torch.equal(layer.router_bias(), ref.router.bias)
        for e in range(E):
            w = layer.expert(e)
            assert w.gate is None
            assert torch.equal(layer.input_projection(e), ref.experts.gate_up_proj[e])   # (I, H): up only
            assert torch.equal(w.down, ref.experts.down_proj[e])
    res = weight_geometry(tmp_path, layers=[0, -1], progress=False)
    assert [lay["name"] for lay in res["layers"]] == ["encoder.block.1.layer.1", "decoder.block.3.layer.2"]


@pytest.mark.parametrize("family", FORWARD_FAMILIES)
def test_more_families_read_right_by_a_forward_pass_of_their_experts(tmp_path, family):
    from transformers.activations import ACT2FN

    model = decoder(family)
    ckpt = open_checkpoint(save(model, tmp_path))
    act = ACT2FN[model.config.hidden_act]
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(1))
    assert ckpt.layers
    for layer in ckpt.layers:
        block = live_block(model, family, layer.name)
        router = [p for n, p in block.named_parameters() if p.shape == (E, H) and "experts" not in n]
        assert len(router) == 1 and torch.equal(layer.router_weight(), router[0])
        with torch.no_grad():
            for e in range(E):
                w = layer.expert(e)
                mine = (act(x @ w.gate.T) * (x @ w.up.T)) @ w.down.T
                live = block.experts(x, torch.full((5, 1), e), torch.ones(5, 1))
                torch.testing.assert_close(mine, live, rtol=1e-5, atol=1e-5)
            if layer.num_shared:
                s = layer.shared(0)
                mine = (act(x @ s.gate.T) * (x @ s.up.T)) @ s.down.T
                shared = getattr(block, "shared_experts", None) or model.get_submodule(f"{layer.name}.shared_mlp")
                torch.testing.assert_close(mine, shared(x), rtol=1e-5, atol=1e-5)


def test_llama4_multimodal_prefix_is_found(tmp_path):
    import transformers

    text = dict(hidden_size=H, intermediate_size=24, intermediate_size_mlp=48, num_local_experts=4,
                num_experts_per_tok=1, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                vocab_size=64)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=28,
                  patch_size=14, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32)
    model = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(text_config=text,
                                                                                 vision_config=vision))
    ckpt = open_checkpoint(save(model, tmp_path))
    assert ckpt.model_type == "llama4"
    assert [lay.name for lay in ckpt.layers] == ["language_model.model.layers.0", "language_model.model.layers.1"]
    live = model.get_submodule("language_model.model.layers.1.feed_forward")
    assert torch.equal(ckpt.layers[1].router_weight(), live.router.weight)
    assert torch.equal(ckpt.layers[1].input_projection(3), from_hf(live).experts.gate_up_proj[3])


def test_view_of_a_disk_layer(tmp_path):
    model = decoder("deepseek_v3")
    layer = open_checkpoint(save(model, tmp_path)).layers[0]
    view = layer.view()
    assert (view.family, view.top_k, view.scoring, view.n_group, view.topk_group) == ("deepseek_v3", 2, "sigmoid",
                                                                                       2, 1)
    assert view.module is None and view.hidden == H and len(view.shared) == 1
    assert torch.equal(view.expert(3).up, layer.expert(3).up)
    assert torch.equal(view.selection_bias, layer.selection_bias())


def test_the_pass_never_builds_a_model(tmp_path, monkeypatch):
    import transformers

    root = save(decoder("qwen2_moe"), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the weight-geometry pass must not build a model")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", refuse)
        monkeypatch.setattr(auto, "from_config", refuse)
    res = weight_geometry(root, progress=False)
    assert res["model_type"] == "qwen2_moe" and len(res["layers"]) == 3
    assert res["layers"][0]["shared"][0]["rank"] >= 1


def test_sharded_checkpoint_is_read_through_its_index(tmp_path):
    model = decoder("deepseek_v3")
    single = save(model, tmp_path / "single")
    sharded = save(model, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 3
    a, b = open_checkpoint(single), open_checkpoint(sharded)
    assert len({info.file for info in b.tensors.values()}) > 3
    for la, lb in zip(a.layers, b.layers, strict=True):
        for e in range(E):
            assert torch.equal(la.input_projection(e), lb.input_projection(e))
        assert torch.equal(la.shared(0).down, lb.shared(0).down)
    assert _strip(weight_geometry(single, progress=False)) == _strip(weight_geometry(sharded, progress=False))
    # without the index the shards are found by name; a single file can be named directly
    index = sharded / "model.safetensors.index.json"
    index.rename(tmp_path / "index.json")
    assert torch.equal(open_checkpoint(sharded).layers[1].input_projection(5), a.layers[1].input_projection(5))
    (tmp_path / "index.json").rename(index)
    one = open_checkpoint(single / "model.safetensors")
    assert len(one.layers) == 2 and torch.equal(one.layers[0].router_weight(), a.layers[0].router_weight())
    # an index naming a missing shard is refused by name
    next(iter(sorted(sharded.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        open_checkpoint(sharded)


def test_write_safetensors_round_trip(tmp_path):
    from safetensors import safe_open

    tensors = {"a": torch.randn(3, 5).bfloat16(), "b": torch.randn(7), "c": torch.randn(2, 2, 2).half()}
    specs = [(k, tuple(t.shape), t.dtype) for k, t in tensors.items()]
    size = write_safetensors(tmp_path / "x.safetensors", specs, lambda k: tensors[k])
    assert size == (tmp_path / "x.safetensors").stat().st_size
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t)
    with pytest.raises(ValueError, match="spec says"):
        write_safetensors(tmp_path / "y.safetensors", specs, lambda k: torch.zeros(1))


# --------------------------------------------------------------------------- bad input


def test_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        open_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"\.bin weights are never read"):
        weight_geometry(tmp_path, progress=False)


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    root = save(decoder("mixtral"), tmp_path)
    file = root / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        open_checkpoint(root)
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        weight_geometry(root, progress=False)


def test_dense_and_unknown_models_are_refused(tmp_path):
    import transformers

    dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=H, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64))
    save(dense, tmp_path / "llama")
    with pytest.raises(CheckpointError, match=r"model_type 'llama' .* not a supported MoE family.*mixtral"):
        weight_geometry(tmp_path / "llama", progress=False)
    # a supported model_type whose files hold no MoE layer (a dense model's weights)
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**cfg, "model_type": "mixtral"}))
    with pytest.raises(CheckpointError, match="no MoE layer.*dense"):
        open_checkpoint(tmp_path / "llama")


def test_missing_expert_and_integer_weights_are_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    gate = [torch.randn(6, 8, generator=g) for _ in range(3)]
    root = mixtral_layer(tmp_path, gate, gate, torch.randn(3, 8, generator=g))
    moe = "model.layers.0.block_sparse_moe"
    from safetensors.torch import load_file

    tensors = load_file(root / "model.safetensors")
    del tensors[f"{moe}.experts.2.w3.weight"]
    save_file(tensors, root / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"experts\.2\.w3\.weight' is missing"):
        open_checkpoint(root)
    tensors[f"{moe}.experts.2.w3.weight"] = torch.ones(6, 8, dtype=torch.int8)
    save_file(tensors, root / "model.safetensors")
    with pytest.raises(CheckpointError, match="dtype I8"):
        open_checkpoint(root)


def test_quantised_checkpoints_are_refused(tmp_path):
    root = save(decoder("gpt_oss"), tmp_path / "config")
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "mxfp4"}}))
    with pytest.raises(CheckpointError, match=r"quant_method='mxfp4'.*not supported"):
        weight_geometry(root, progress=False)
    # the hub's gpt-oss layout without a quantization_config: *_blocks / *_scales tensors
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "config.json").write_text(json.dumps(cfg))
    save_file({"model.layers.0.mlp.router.weight": torch.zeros(E, H),
               "model.layers.0.mlp.experts.gate_up_proj_blocks": torch.zeros(E, 48, 1, 16, dtype=torch.uint8),
               "model.layers.0.mlp.experts.gate_up_proj_scales": torch.zeros(E, 48, 1, dtype=torch.uint8)},
              tmp_path / "keys" / "model.safetensors")
    with pytest.raises(CheckpointError, match="quantised weights"):
        open_checkpoint(tmp_path / "keys")


def test_bad_arguments_are_named(tmp_path):
    root = random_layer(tmp_path, num_experts=4, hidden=16, inter=8, seed=0)
    for kwargs, match in [({"energy": 0.0}, "energy"), ({"rank": 0}, "rank"), ({"max_rank": 0}, "max_rank"),
                          ({"niter": -1}, "niter"), ({"svd": "qr"}, "svd"), ({"layers": [1]}, r"\[-1, 1\)"),
                          ({"rank": 17}, "exceeds")]:
        with pytest.raises(ValueError, match=match):
            weight_geometry(root, progress=False, **kwargs)


def test_progress_bar_and_fixed_rank_smoke(tmp_path, capsys):
    root = random_layer(tmp_path, num_experts=4, hidden=16, inter=8, seed=0)
    res = weight_geometry(root, rank=3, svd="randomized", niter=1, progress=True)
    layer = res["layers"][0]
    assert layer["experts"]["rank"] == 3 and layer["experts"]["rank_per_expert"] == [3] * 4
    assert np.asarray(layer["experts"]["mean_cos2"]).shape == (4, 4)
    assert np.asarray(layer["alignment"]["share"]).shape == (4, 4)
    assert res["settings"]["svd"] == "randomized"


def test_view_geometry_of_a_live_layer_matches_random_null_and_sees_the_shared_expert():
    from moescope.analysis.weights import view_geometry
    from moescope.models import find_moe_layers
    from moescope.moe import Experts, MoELayer, SharedExpert, TopKRouter

    torch.manual_seed(0)
    layer = MoELayer(router=TopKRouter(96, 8, 2), experts=Experts(8, 96, 24), shared=SharedExpert(96, 24))
    geo = view_geometry(find_moe_layers(torch.nn.Sequential(layer))[0])
    assert abs(geo["experts"]["z"]) < 4 and geo["router"]["ks_pvalue"] > 1e-3
    assert len(geo["shared"]) == 1
    with torch.no_grad():  # plant: expert 1 reads the same rows as expert 0
        layer.experts.gate_up_proj[1].copy_(layer.experts.gate_up_proj[0])
    planted = view_geometry(find_moe_layers(torch.nn.Sequential(layer))[0])
    assert planted["experts"]["z"] > geo["experts"]["z"] + 3


def test_routing_capture_bench_structure():
    """A benchmark, not a timing test: check the numbers it reports are well-formed."""
    from moescope.analysis.bench import bench_routing_capture

    out = bench_routing_capture(tokens=256, seq_len=64, repeats=1)
    assert out["tokens_per_pass"] == 256 and out["forward_s"] > 0 and out["forward_recorded_s"] > 0
    assert out["stats_bytes_after_1x"] == out["stats_bytes_after_4x"] > 0  # sums only: no growth with text
