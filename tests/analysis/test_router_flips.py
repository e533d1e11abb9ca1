"""Routing under a push of the input embeddings: the step is moescope's FGSM, the counts are the block's."""

import torch

from moescope.adversarial.attacks import fgsm
from moescope.analysis.router_flips import RouterFromEmbeddings, fgsm_step, router_flips
from moescope.models.loading import load_moe_model


def test_the_step_is_fgsm_on_the_router_objective_without_clamping(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    f = RouterFromEmbeddings(model, [views[1]])
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (6, 1), generator=torch.Generator().manual_seed(0))   # one token per sequence
    x = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        y = f(x).argmax(dim=-1)
    ours = fgsm_step(f, x, y, 0.05)
    theirs = fgsm(f, x, y, eps=0.05, clip=None)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (ours - x).abs().max() <= 0.05 + 1e-7


def test_flip_shares_and_their_intervals(saved):
    model, _, views = load_moe_model(saved("mixtral"))
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    res = router_flips(model, views, ids, epsilons=(1e-9, 0.3))
    for layer in res:
        tiny, big = layer["sweep"]
        assert tiny["fgsm"]["share"] == 0 and tiny["random"]["share"] == 0   # a vanishing push changes nothing
        for row in layer["sweep"]:
            for kind in ("fgsm", "random"):
                lo, hi = row[kind]["interval"]
                assert lo <= row[kind]["share"] <= hi and row[kind]["tokens"] == 32
        assert big["fgsm"]["share"] > 0
