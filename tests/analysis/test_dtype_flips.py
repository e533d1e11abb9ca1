"""Flips between a float32 and a bfloat16 run: planted scores counted by hand, a rounding theorem, a real block."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moescope.analysis.dtype_flips import DtypeFlips, dtype_flips
from moescope.analysis.routing import NEAR_TIE, relative_margins

# E = 4, k = 2. Float32 scores, then the bfloat16 run's (planted, not rounded):
#   A: margin (0.3 − 0.2995)/0.3 = 0.0017 < 2⁻⁸ = 0.0039: a near-tie, and the bf16 run swaps experts 1 and 2: a flip
#   B: margin (0.3 − 0.15)/0.3 = 0.5: no near-tie, yet the bf16 run picks expert 2 over 1: a flip that is no near-tie
#   C: the same near-tie as A, the bf16 run keeps the order: no flip
#   D: the two chosen experts change rank but not the set {0, 1}: no flip
FP32 = torch.tensor([[0.4, 0.3, 0.2995, 0.0005],
                     [0.5, 0.3, 0.15, 0.05],
                     [0.4, 0.3, 0.2995, 0.0005],
                     [0.3, 0.4, 0.2, 0.1]])
BF16 = torch.tensor([[0.4, 0.299, 0.3, 0.0005],
                     [0.5, 0.1, 0.35, 0.05],
                     [0.4, 0.3, 0.2995, 0.0005],
                     [0.4, 0.3, 0.2, 0.1]]).bfloat16()


def test_planted_flips_at_and_off_near_ties():
    r = dtype_flips(FP32, BF16, top_k=2)
    assert r == DtypeFlips(tokens=4, flips=2, near_ties=2, flips_not_near_ties=1)     # A, B flip; A, C near-ties
    assert (r.flip_share, r.near_tie_share, r.all_flips_near_ties) == (0.5, 0.5, False)
    r = dtype_flips(FP32[[0, 2, 3]], BF16[[0, 2, 3]], top_k=2)                        # without B
    assert r == DtypeFlips(tokens=3, flips=1, near_ties=2, flips_not_near_ties=0) and r.all_flips_near_ties


def test_no_flips():
    # well-separated scores rounded to bfloat16 keep every set: no flip, no near-tie
    scores = torch.tensor([[0.6, 0.25, 0.1, 0.05], [0.05, 0.1, 0.25, 0.6]])
    r = dtype_flips(scores, scores.bfloat16(), top_k=2)
    assert r == DtypeFlips(tokens=2, flips=0, near_ties=0, flips_not_near_ties=0)
    assert (r.flip_share, r.near_tie_share, r.all_flips_near_ties) == (0.0, 0.0, True)
    # k = E: every expert is chosen, nothing can flip and there is no (k+1)-th score to tie with
    assert dtype_flips(FP32, BF16, top_k=4) == DtypeFlips(tokens=4, flips=0, near_ties=0, flips_not_near_ties=0)


def test_batch_shape_and_selection_bias():
    # (B, T, E) is read as B·T tokens
    assert dtype_flips(FP32.reshape(2, 2, 4), BF16.reshape(2, 2, 4), top_k=2).flips == 2
    # the bias selects: [0.5, 0.3, 0.1, 0.1] + [0, 0, 0.2, 0] ties experts 1 and 2 (margin 0); without it, 0.67
    scores = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    bias = torch.tensor([0.0, 0.0, 0.2, 0.0])
    assert dtype_flips(scores, scores, top_k=2).near_ties == 0
    assert dtype_flips(scores, scores, top_k=2, selection_bias=bias).near_ties == 1
    # and the bias moves the set: expert 2 (0.1 + 0.2 = 0.3) beats expert 1 (0.29) in the second run only
    other = torch.tensor([[0.5, 0.29, 0.1, 0.1]])
    assert dtype_flips(scores, other, top_k=2, selection_bias=bias) == DtypeFlips(1, 1, 1, 0)


def test_bad_input_named():
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4\) and \(4, 3\)"):
        dtype_flips(FP32, BF16[:, :3], top_k=2)
    for k in (0, 5):
        with pytest.raises(ValueError, match=rf"top_k must be in 1\.\.4.*top_k={k}"):
            dtype_flips(FP32, BF16, top_k=k)
    with pytest.raises(ValueError, match=r"selection_bias must have shape \(4,\); got \(3,\)"):
        dtype_flips(FP32, BF16, top_k=2, selection_bias=torch.zeros(3))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spread=st.sampled_from([1e-3, 1e-2, 1e-1]), top_k=st.integers(1, 3))
def test_rounding_the_scores_to_bfloat16(seed, spread, top_k):
    """Counts against an independent oracle (sorted top-k sets compared token by token), and the bound rounding
    obeys: bfloat16 keeps 8 significant bits, so each positive score moves by a relative u = 2⁻⁸ at most, and a
    lower score s_j ≤ s_{k+1} can overtake s_k only if s_j(1 + u) ≥ s_k(1 − u), i.e. s_k − s_{k+1} ≤ u(s_k + s_{k+1})
    ≤ 2⁻⁷ s_k. That is twice the near-tie level: flips of margin in [2⁻⁸, 2⁻⁷] are possible and are not near-ties.
    Close logits (small spread) make ties common."""
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(2000, 8, generator=g) * spread).softmax(-1)
    rounded = scores.bfloat16()
    r = dtype_flips(scores, rounded, top_k=top_k)
    flipped = (scores.topk(top_k).indices.sort(-1).values != rounded.topk(top_k).indices.sort(-1).values).any(-1)
    margins = relative_margins(scores, top_k)
    assert r.tokens == 2000 and r.flips == int(flipped.sum()) and r.near_ties == int((margins < NEAR_TIE).sum())
    assert r.flips_not_near_ties == int((flipped & (margins >= NEAR_TIE)).sum())
    assert (margins[flipped] <= 2.0 ** -7).all()
    assert r.near_tie_share == pytest.approx(r.near_ties / 2000) and r.flip_share == pytest.approx(r.flips / 2000)


def test_a_real_mixtral_block_in_both_dtypes():
    """transformers' MixtralSparseMoeBlock from a real MixtralConfig with Mixtral's initializer range (N(0, 0.02²)
    weights), run in float32 and cast to bfloat16. Its router computes the logits in the block's dtype and the
    softmax in float32; the sets dtype_flips reads from those scores are the block's own choices. At this scale
    (logits ~0.16) bfloat16 moves a logit by far less than 2⁻⁸, so every flip is a near-tie; with weights of
    std 0.3 (logits ~1.7) a few flips of margin up to 2⁻⁷ were seen: the rounding error grows with the logit."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * config.initializer_range)
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(1))

    def run(dtype):
        """The router's softmax scores (float32, as the router computes them) and the block's chosen experts."""
        with torch.no_grad():
            logits, _, indices = block.to(dtype).gate(x.to(dtype))
        return logits.float().softmax(-1), indices.sort(-1).values

    (s32, i32), (s16, i16) = run(torch.float32), run(torch.bfloat16)
    assert s16.dtype == torch.float32 and (s16 != s32).any()
    r = dtype_flips(s32, s16, top_k=2)
    assert r.tokens == 4096 and r.flips == int((i32 != i16).any(-1).sum())            # the block's own flips
    assert r.near_ties == int((relative_margins(s32, 2) < NEAR_TIE).sum())
    assert 0 < r.flips < r.near_ties and r.all_flips_near_ties


def test_counts_merge_and_serialise():
    """Counts over two batches add up to the counts over both at once; as_dict gives the shares of all tokens."""
    whole = dtype_flips(FP32, BF16, top_k=2)
    assert dtype_flips(FP32[:1], BF16[:1], top_k=2) + dtype_flips(FP32[1:], BF16[1:], top_k=2) == whole
    assert whole.as_dict() == {"tokens": 4, "flips": 2, "near_ties": 2, "flips_not_near_ties": 1,
                               "flip_share": 0.5, "near_tie_share": 0.5, "flips_not_near_ties_share": 0.25,
                               "all_flips_near_ties": False}
    assert DtypeFlips(0, 0, 0, 0).as_dict()["flip_share"] == 0.0  # no tokens: shares 0, not a division by zero
