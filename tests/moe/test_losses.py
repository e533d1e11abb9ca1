"""Load-balancing conventions and the z-loss: hand-derived values and their failure modes."""

import math

import pytest
import torch

from moescope.moe.losses import CONVENTIONS, load_balancing_loss, router_z_loss

E, K = 4, 2


def _balanced(tokens: int = 8):
    """Uniform probabilities; each expert first choice of T/E tokens and chosen T·k/E times."""
    probs = torch.full((tokens, E), 1 / E)
    first = torch.arange(tokens) % E
    second = (first + 1) % E
    return probs, torch.stack([first, second], -1)


def _collapsed(tokens: int = 8):
    """Everything on expert 0 (probability 1)."""
    probs = torch.zeros(tokens, E)
    probs[:, 0] = 1
    return probs, torch.stack([torch.zeros(tokens, dtype=torch.long), torch.ones(tokens, dtype=torch.long)], -1)


@pytest.mark.parametrize(("convention", "balanced", "collapsed"), [
    ("switch", 1.0, E * 1.0),          # E · f_0 P_0 = E · 1 · 1
    ("gshard", 1.0, E * 1.0),
    ("hf", K, E * (1.0 * 1.0)),        # f over both slots: f_0 = f_1 = 1 (not /k), P_0 = 1 -> E · 1
    ("megablocks", 1.0, E * 0.5),      # f_0 = f_1 = 1/2, P_0 = 1 -> E · 1/2
    ("deepseek_seq", 1.0, E / K),      # f_0 = E/(k T) · T = E/k, P_0 = 1
])
def test_values_at_balance_and_collapse(convention, balanced, collapsed):
    assert load_balancing_loss(*_balanced(), convention=convention).item() == pytest.approx(balanced, rel=1e-6)
    assert load_balancing_loss(*_collapsed(), convention=convention).item() == pytest.approx(collapsed, rel=1e-6)


def test_p_comes_from_the_full_distribution():
    """Moving probability between *unchosen* experts must change the loss (top-k weights would not)."""
    probs, idx = _balanced()
    skew = probs.clone()
    skew[:, 2] += 0.1
    skew[:, 3] -= 0.1
    a = load_balancing_loss(probs, idx[:, :1], convention="switch")
    b = load_balancing_loss(skew, idx[:, :1], convention="switch")
    assert a != b


def test_mask_excludes_padding():
    probs, idx = _balanced(8)
    padded_probs = torch.cat([probs, torch.eye(E)[[0, 0, 0, 0]]])          # 4 junk rows, all on expert 0
    padded_idx = torch.cat([idx, torch.zeros(4, K, dtype=torch.long)])
    mask = torch.cat([torch.ones(8), torch.zeros(4)])
    for c in CONVENTIONS:
        clean = load_balancing_loss(probs, idx, convention=c)
        masked = load_balancing_loss(padded_probs, padded_idx, convention=c, attention_mask=mask,
                                     sequence_length=12 if c == "deepseek_seq" else None)
        unmasked = load_balancing_loss(padded_probs, padded_idx, convention=c,
                                       sequence_length=12 if c == "deepseek_seq" else None)
        assert masked.item() == pytest.approx(clean.item(), rel=1e-6), c
        assert unmasked.item() != pytest.approx(clean.item(), rel=1e-3), c


def test_layers_pool_for_hf_and_average_for_megablocks():
    b, c = _balanced(), _collapsed()
    pooled = load_balancing_loss([b[0], c[0]], [b[1], c[1]], convention="hf")
    # pooled over 2 layers x 8 tokens: counts [4+8, 4+8, 4, 4], probability sums [2+8, 2, 2, 2]
    # -> E * sum(f P) = 4 * (12*10 + 12*2 + 4*2 + 4*2) / 16^2 = 2.5
    assert pooled.item() == pytest.approx(2.5, rel=1e-6)
    averaged = load_balancing_loss([b[0], c[0]], [b[1], c[1]], convention="megablocks")
    assert averaged.item() == pytest.approx((1.0 + E * 0.5) / 2, rel=1e-6)


def test_deepseek_sequences_are_separate():
    # sequence 1 collapsed on expert 0, sequence 2 collapsed on expert 2: pooled looks balanced-ish,
    # per-sequence each is collapsed.
    p1, i1 = _collapsed(4)
    p2 = torch.zeros(4, E)
    p2[:, 2] = 1
    i2 = torch.stack([torch.full((4,), 2), torch.full((4,), 3)], -1)
    loss = load_balancing_loss(torch.cat([p1, p2]), torch.cat([i1, i2]), convention="deepseek_seq",
                               sequence_length=4)
    assert loss.item() == pytest.approx(E / K, rel=1e-6)
    one_seq = load_balancing_loss(torch.cat([p1, p2]), torch.cat([i1, i2]), convention="deepseek_seq")
    assert one_seq.item() < loss.item()


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert router_z_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(math.log(2.0) ** 2, rel=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"convention": "deepspeed"}, "convention must be one of"),
    ({"attention_mask": torch.ones(3)}, "attention_mask has 3 entries"),
    ({"convention": "deepseek_seq", "sequence_length": 3}, "does not divide"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_balancing_loss(*_balanced(8), **kwargs)
    with pytest.raises(ValueError, match="got 1 score tensors but 2"):
        load_balancing_loss([torch.ones(2, E)], [torch.zeros(2, 1, dtype=torch.long)] * 2)


@pytest.mark.parametrize("layers", [1, 3])
def test_unmasked_fast_path_equals_all_ones_mask(layers):
    """Without a mask the losses take a shorter path; an all-ones mask takes the general one: equal,
    with empty (-1) slots and uneven routing."""
    g = torch.Generator().manual_seed(3)
    tokens = 10
    probs = [torch.softmax(torch.randn(tokens, E, generator=g) * 2, -1) for _ in range(layers)]
    idx = [torch.randint(0, E, (tokens, K), generator=g) for _ in range(layers)]
    for i in idx:
        i[2, 1] = -1
        i[7, 0] = -1
    ones = torch.ones(tokens)
    for c in ("switch", "gshard", "hf", "megablocks"):
        fast = load_balancing_loss(probs, idx, convention=c)
        general = load_balancing_loss(probs, idx, convention=c, attention_mask=ones)
        assert fast.item() == pytest.approx(general.item(), rel=1e-6), c
    logits = torch.randn(tokens, E, generator=g) * 3
    assert router_z_loss(logits).item() == pytest.approx(router_z_loss(logits, ones).item(), rel=1e-6)


@pytest.mark.parametrize(("experts", "tokens", "seed"), [(2, 7, 0), (8, 64, 1), (64, 300, 2)])
def test_switch_and_gshard_equal_transformers_switch_loss(experts, tokens, seed):
    """transformers' Switch Transformers ``load_balancing_loss_func`` (E² · mean(f·P) per group, then
    averaged over groups) on one group of top-1 choices; and ``router_z_loss_func`` on (B, S, E)."""
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        load_balancing_loss_func,
        router_z_loss_func,
    )

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, tokens, experts, generator=g) * 3
    probs = torch.softmax(logits, -1)
    first = probs.argmax(-1)                                                      # (1, T)
    ref = load_balancing_loss_func(probs, first)
    for convention in ("switch", "gshard"):
        ours = load_balancing_loss(probs[0], first[0].unsqueeze(-1), convention=convention)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    batched = torch.randn(3, tokens, experts, generator=g) * 5
    assert router_z_loss(batched.reshape(-1, experts)).item() == pytest.approx(router_z_loss_func(batched).item(),
                                                                                rel=1e-6)


def test_loss_from_counts_by_hand():
    """E = 2, k = 2, T = 4: first choices (3, 1), all choices (4, 4), probability sums (3, 1)."""
    from moescope.moe.losses import balance_loss_from_counts

    sums = {"counts": torch.tensor([4.0, 4.0]), "first_counts": torch.tensor([3.0, 1.0]),
            "prob_sum": torch.tensor([3.0, 1.0]), "tokens": 4, "top_k": 2}
    # switch: 2 * (3/4 * 3/4 + 1/4 * 1/4) = 1.25; hf: 2 * (1 * 3/4 + 1 * 1/4) = 2; megablocks: hf / k = 1
    expected = {"switch": 1.25, "gshard": 1.25, "hf": 2.0, "megablocks": 1.0, "deepseek_seq": 1.0}
    for convention, value in expected.items():
        assert balance_loss_from_counts(convention, **sums).item() == pytest.approx(value, rel=1e-6), convention
    per_seq = balance_loss_from_counts("deepseek_seq", counts=torch.tensor([[2.0, 0.0], [0.0, 0.0]]),
                                       prob_sum=torch.tensor([[1.0, 0.0], [0.0, 0.0]]), tokens=torch.tensor([1, 0]),
                                       top_k=2)
    assert per_seq.tolist() == pytest.approx([2.0, 0.0])       # one token on expert 0: 2 · (2/2 · 1); no tokens: 0
    with pytest.raises(ValueError, match="needs first_counts"):
        balance_loss_from_counts("switch", counts=sums["counts"], prob_sum=sums["prob_sum"], tokens=4)
    with pytest.raises(ValueError, match="convention must be one of"):
        balance_loss_from_counts("deepspeed", counts=sums["counts"], prob_sum=sums["prob_sum"], tokens=4)
