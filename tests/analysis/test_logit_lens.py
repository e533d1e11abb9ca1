"""Expert logit lens: a planted output direction is read back as the token it was built from."""

import pytest
import torch

from moescope.analysis.analyze import AnalyzeConfig, Source, analyze
from moescope.analysis.logit_lens import expert_lens, final_norm_gain, unembedding
from moescope.models.loading import load_moe_model


@pytest.mark.parametrize("family", ["mixtral", "qwen3_next", "olmoe"])
def test_a_planted_direction_promotes_its_token(saved, family):
    model, _, views = load_moe_model(saved(family))
    w_u, gain = unembedding(model), final_norm_gain(model)
    token, layer, expert = 42, len(views) - 1, 2
    target = w_u[token] / gain                       # after the final gain, exactly the token's output row
    with torch.no_grad():
        down = views[layer].expert(expert).down
        down.copy_(torch.outer(target, torch.randn(down.shape[1], generator=torch.Generator().manual_seed(0))))
        views[layer].router_weight[expert].copy_(target)
    e = expert_lens(model, views)[layer]["experts"][expert]
    assert token in (e["down_plus"][0], e["down_minus"][0])   # rank one: either pole, the sign is arbitrary
    assert e["router"][0] == token and e["top_direction_energy"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        down.zero_()
    assert expert_lens(model, views)[layer]["experts"][expert]["down_plus"] == []


def test_zero_centred_norms_are_read_as_one_plus_weight(saved):
    model, _, _ = load_moe_model(saved("qwen3_next"))   # Qwen3-Next's RMSNorm scales by (1 + weight)
    torch.testing.assert_close(final_norm_gain(model), model.model.norm.weight.detach().float() + 1)
    model, _, _ = load_moe_model(saved("mixtral"))
    torch.testing.assert_close(final_norm_gain(model), model.model.norm.weight.detach().float())


def test_analyze_reports_the_lens_with_decoded_tokens(saved):
    text = "def add(a, b):\n    return a + b\n" * 8
    res = analyze(AnalyzeConfig(path=saved("mixtral"), sources=(Source("c", text, "code"),), seq_len=16))
    lens = res["logit_lens"]
    assert [layer["layer"] for layer in lens] == [r["layer"] for r in res["routing"]]
    assert all(isinstance(t, str) for t in lens[0]["experts"][0]["down_plus"])
