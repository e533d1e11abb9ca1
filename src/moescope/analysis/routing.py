"""Streaming, mergeable routing statistics of an MoE model.

:class:`RoutingStats` keeps per-layer *sums* only — counts, probability sums, co-activation
counts — so memory does not grow with the amount of text, two accumulators over disjoint
shards ``merge`` into the accumulator of the concatenation, and ``all_reduce`` sums them
across torch.distributed ranks. Everything reported (loads, balance losses under each
convention, entropies, repetition, specialisation) is derived from the sums on demand.

Definitions follow the papers they come from: the balance-loss conventions of
:mod:`moescope.moe.losses`; consecutive-token repetition of the Mixtral paper (Jiang et al.
2024, Table 5: first choice, and first-or-second, i.e. top-k sets that intersect); domain
specialisation with chance correction (p − k/E)/(1 − k/E) of OLMoE (Muennighoff et al.
2024, §5); token specialisation as the share of a token id's routings that go to its most
frequent expert (OLMoE §5). Router margins: the share of tokens whose k-th and (k+1)-th selection
scores lie within 2⁻⁸, 2⁻⁶, 2⁻⁴, 2⁻² of the k-th score; the first is the project's near-tie
(:data:`NEAR_TIE`). The selection score is what the family's top-k ranks (:meth:`RoutingRecord.ranked`):
the softmax probabilities; the sigmoid scores plus any selection bias (DeepSeek-V3); or, where the family
ranks the logits (Llama 4, Cohere2-MoE in sigmoid mode, Kolibri-1 with its bias added to them), the
logits. With group-limited selection (DeepSeek-V3's n_group) the (k+1)-th score may lie in a group the
token could not choose, so the margin is a lower bound there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moescope.analysis.vocabulary import vocabulary_specialisation
from moescope.models.view import RoutingRecord
from moescope.moe.losses import CONVENTIONS, balance_loss_from_counts
from moescope.stats import normalized_mutual_information

# An expert is "starved" below this share of the mean load (and "dead" at zero).
STARVED_SHARE = 0.1
# Token-id x expert counts are kept only while vocabulary x experts stays below this size.
MAX_TOKEN_TABLE = 50_000_000
# Relative router margins counted: (s_k − s_{k+1}) / |s_k| of the float32 selection scores below each level.
# The first is the one definition of a near-tie (below bfloat16's resolution, 2⁻⁸): a token whose k-th and
# (k+1)-th choice a bfloat16 rounding of the scores could swap.
NEAR_TIE = 2.0 ** -8
MARGIN_LEVELS = (NEAR_TIE, 2.0 ** -6, 2.0 ** -4, 2.0 ** -2)


def relative_margins(scores: Tensor, top_k: int, selection_bias: Tensor | None = None) -> Tensor:
    """(N,) float32 margin between each token's k-th and (k+1)-th selection score, relative to the k-th's
    magnitude (a near-tie is one below :data:`NEAR_TIE`); ``scores`` (N, E), plus ``selection_bias`` (E,) where
    the family selects with one. NaN when ``top_k >= E`` (no (k+1)-th expert)."""
    if top_k >= scores.shape[-1]:
        return torch.full(scores.shape[:1], float("nan"), device=scores.device)
    selection = scores + selection_bias.to(scores) if selection_bias is not None else scores
    top = selection.topk(top_k + 1, dim=-1).values                     # (N, k+1), descending
    kth = top[:, -2].float()                                           # the margin in float32, as defined
    return (kth - top[:, -1].float()) / kth.abs().clamp_min(torch.finfo(torch.float32).tiny)


def router_entropy(scores: Tensor) -> Tensor:
    """(N,) entropy in nats of each token's routing distribution: ``scores`` (N, E) normalised to sum to 1 (a
    sigmoid router's scores too), as the statistics' mean router entropy reads them."""
    probs = scores.double() / scores.double().sum(-1, keepdim=True).clamp_min(1e-300)
    return -(probs * probs.clamp_min(1e-300).log()).sum(-1)


@dataclass
class _Layer:
    num_experts: int
    top_k: int
    num_domains: int
    vocab_size: int | None
    tokens: Tensor = field(init=False)
    counts: Tensor = field(init=False)
    first: Tensor = field(init=False)
    prob_sum: Tensor = field(init=False)
    entropy_sum: Tensor = field(init=False)
    coact: Tensor = field(init=False)
    pairs: Tensor = field(init=False)
    repeat_first: Tensor = field(init=False)
    repeat_any: Tensor = field(init=False)
    seq_balance_sum: Tensor = field(init=False)
    sequences: Tensor = field(init=False)
    domain_counts: Tensor = field(init=False)
    domain_tokens: Tensor = field(init=False)
    token_expert: Tensor | None = field(init=False)
    token_seen: Tensor | None = field(init=False)   # (V,) occurrences of each token id (with token_expert)
    margin_counts: Tensor = field(init=False)   # tokens whose relative margin is below each MARGIN_LEVELS entry
    selection_bias: Tensor | None = None       # (E,) added to the scores to select (DeepSeek-V3); not a sum

    def __post_init__(self) -> None:
        e, d = self.num_experts, self.num_domains
        i64, f64 = torch.int64, torch.float64
        self.tokens, self.pairs = torch.zeros((), dtype=i64), torch.zeros((), dtype=i64)
        self.counts, self.first = torch.zeros(e, dtype=i64), torch.zeros(e, dtype=i64)
        self.prob_sum, self.entropy_sum = torch.zeros(e, dtype=f64), torch.zeros((), dtype=f64)
        self.coact = torch.zeros(e, e, dtype=i64)
        self.repeat_first, self.repeat_any = torch.zeros((), dtype=i64), torch.zeros((), dtype=i64)
        self.seq_balance_sum, self.sequences = torch.zeros((), dtype=f64), torch.zeros((), dtype=i64)
        self.domain_counts, self.domain_tokens = torch.zeros(d, e, dtype=i64), torch.zeros(d, dtype=i64)
        v = self.vocab_size
        self.token_expert = torch.zeros(v, e, dtype=torch.int32) if v and v * e <= MAX_TOKEN_TABLE else None
        self.token_seen = torch.zeros(v, dtype=torch.int64) if self.token_expert is not None else None
        self.margin_counts = torch.zeros(len(MARGIN_LEVELS), dtype=i64)

    def tensors(self) -> list[Tensor]:
        names = ["tokens", "counts", "first", "prob_sum", "entropy_sum", "coact", "pairs", "repeat_first",
                 "repeat_any", "seq_balance_sum", "sequences", "domain_counts", "domain_tokens", "margin_counts"]
        out = [getattr(self, n) for n in names]
        return out + ([self.token_expert, self.token_seen] if self.token_expert is not None else [])


class RoutingStats:
    """Accumulates :class:`RoutingRecord` s of every MoE layer of a model.

    Args:
        num_experts: E per layer (a list, or one int for all layers).
        top_k: k per layer (list or int).
        domains: names of the text domains (records labelled with one of them), or ().
        vocab_size: enables token specialisation (token-id x expert counts) when given.
    """

    def __init__(self, num_experts: list[int] | int, top_k: list[int] | int, *, num_layers: int | None = None,
                 domains: tuple[str, ...] = (), vocab_size: int | None = None,
                 selection_bias: list[Tensor | None] | None = None) -> None:
        if isinstance(num_experts, int):
            if num_layers is None:
                raise ValueError("num_layers is required when num_experts is a single int")
            num_experts = [num_experts] * num_layers
        top_k = [top_k] * len(num_experts) if isinstance(top_k, int) else list(top_k)
        if len(top_k) != len(num_experts):
            raise ValueError(f"got {len(num_experts)} layers of experts but {len(top_k)} values of top_k")
        self.domains = tuple(domains)
        self.layers = [_Layer(e, k, len(self.domains), vocab_size) for e, k in zip(num_experts, top_k, strict=True)]
        for layer, bias in zip(self.layers, selection_bias or [None] * len(self.layers), strict=True):
            layer.selection_bias = None if bias is None else bias.detach().double().cpu()

    # -- accumulation ---------------------------------------------------------------------
    def update(self, record: RoutingRecord, domain: str | None = None) -> None:
        """Add one layer's record; ``domain`` labels all of its tokens."""
        if not 0 <= record.layer < len(self.layers):
            raise ValueError(f"record for layer {record.layer} but the stats have {len(self.layers)} layers")
        acc = self.layers[record.layer]
        idx, mask = record.indices.long(), record.mask.bool()
        if idx.shape[-1] > acc.top_k or record.scores.shape[-1] != acc.num_experts:
            raise ValueError(f"layer {record.layer}: record has k={idx.shape[-1]} and E={record.scores.shape[-1]} "
                             f"but the stats expect k<={acc.top_k}, E={acc.num_experts}")
        e = acc.num_experts
        real = idx[mask]                                                       # (N, k)
        valid = real >= 0
        acc.tokens += int(mask.sum())
        acc.counts += torch.bincount(real[valid], minlength=e)
        acc.first += torch.bincount(real[:, 0][valid[:, 0]], minlength=e)
        scores = record.scores.double()[mask]
        probs = scores / scores.sum(-1, keepdim=True).clamp_min(1e-300)
        acc.prob_sum += probs.sum(0)
        acc.entropy_sum += -(probs * probs.clamp_min(1e-300).log()).sum()
        # float64 one-hot: its products are exact integers (below 2⁵³) and run on BLAS, ~10× an int64 matmul
        onehot = torch.zeros(real.shape[0], e, dtype=torch.float64)
        onehot.scatter_add_(1, real.clamp_min(0), valid.double())
        acc.coact += (onehot.t() @ onehot).round().long()
        self._margins(acc, record.ranked().double()[mask])
        self._consecutive(acc, record, onehot)
        self._sequence_balance(acc, record, onehot, probs)
        if domain is not None:
            if domain not in self.domains:
                raise ValueError(f"unknown domain {domain!r}; the stats were built for {self.domains}")
            d = self.domains.index(domain)
            acc.domain_counts[d] += onehot.sum(0).round().long()
            acc.domain_tokens[d] += int(mask.sum())
        if acc.token_expert is not None and record.token_ids is not None:
            ids = record.token_ids.long()[mask]
            flat = (ids.unsqueeze(1) * e + real.clamp_min(0))[valid]
            acc.token_expert.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
            acc.token_seen.index_add_(0, ids, torch.ones_like(ids))

    @staticmethod
    def _margins(acc: _Layer, scores: Tensor) -> None:
        """Count tokens whose k-th and (k+1)-th selection scores lie within each relative level of each other."""
        if acc.top_k >= acc.num_experts or scores.shape[0] == 0:
            return
        relative = relative_margins(scores, acc.top_k, acc.selection_bias)
        acc.margin_counts += (relative.unsqueeze(1) < torch.tensor(MARGIN_LEVELS)).sum(0)

    @staticmethod
    def _consecutive(acc: _Layer, record: RoutingRecord, onehot_real: Tensor) -> None:
        b, s = record.batch_shape
        if s < 2:
            return
        idx = record.indices.long().view(b, s, -1)
        mask = record.mask.bool().view(b, s)
        both = mask[:, 1:] & mask[:, :-1]                                        # (B, S-1)
        first = idx[..., 0]
        same_first = (first[:, 1:] == first[:, :-1]) & (first[:, 1:] >= 0)
        cur, prev = idx[:, 1:].unsqueeze(-1), idx[:, :-1].unsqueeze(-2)            # (B, S-1, k, 1), (B, S-1, 1, k)
        share = ((cur == prev) & (cur >= 0)).flatten(-2).any(-1)
        acc.pairs += int(both.sum())
        acc.repeat_first += int((same_first & both).sum())
        acc.repeat_any += int((share & both).sum())

    @staticmethod
    def _sequence_balance(acc: _Layer, record: RoutingRecord, onehot_real: Tensor, probs_real: Tensor) -> None:
        """DeepSeek-V3's sequence-wise loss (eq. 17–20), summed over the sequences with a real token."""
        b, s = record.batch_shape
        seq = torch.arange(b).repeat_interleave(s)[record.mask.bool()]          # (N,) sequence of each real token
        tokens = torch.bincount(seq, minlength=b)                                # (B,)
        counts = torch.zeros(b, acc.num_experts, dtype=torch.float64).index_add_(0, seq, onehot_real)
        prob_sum = torch.zeros(b, acc.num_experts, dtype=torch.float64).index_add_(0, seq, probs_real)
        per_seq = balance_loss_from_counts("deepseek_seq", counts=counts, prob_sum=prob_sum, tokens=tokens,
                                           top_k=acc.top_k)                      # (B,)
        real = tokens > 0
        acc.seq_balance_sum += per_seq[real].sum()
        acc.sequences += int(real.sum())

    def merge(self, other: RoutingStats) -> RoutingStats:
        """In place: add ``other``'s sums (same layers, experts and domains). Returns self."""
        if len(other.layers) != len(self.layers) or other.domains != self.domains:
            raise ValueError("can only merge statistics of the same model layout and domains")
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            for a, b in zip(mine.tensors(), theirs.tensors(), strict=True):
                a += b
        return self

    def all_reduce(self, group=None) -> RoutingStats:
        """Sum the statistics of every rank of ``group`` (torch.distributed, any backend)."""
        import torch.distributed as dist

        for layer in self.layers:
            for t in layer.tensors():
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return self

    # -- derived measurements ---------------------------------------------------------------
    def summary(self, layer: int) -> dict:
        """Every derived statistic of one layer, as plain Python numbers and lists."""
        acc = self.layers[layer]
        e, k = acc.num_experts, acc.top_k
        t = max(int(acc.tokens), 1)
        counts = acc.counts.double()
        f_all = counts / (t * k)                      # share of all k·T assignments
        f_first = acc.first.double() / t
        p = acc.prob_sum / t
        mean = counts.mean()
        load = counts / counts.sum().clamp_min(1)
        load_entropy = float(-(load * load.clamp_min(1e-300).log()).sum() / math.log(e)) if e > 1 else 1.0
        pairs = max(int(acc.pairs), 1)
        coact = acc.coact.double()
        cond = coact / counts.clamp_min(1).unsqueeze(1)
        cond.fill_diagonal_(0.0)
        uniform_any = 1.0 - math.comb(e - k, k) / math.comb(e, k) if e - k >= k else 1.0
        out = {
            "tokens": int(acc.tokens),
            "load": f_all.tolist(),
            "load_first_choice": f_first.tolist(),
            "mean_score": p.tolist(),
            "balance_loss": self._balance(acc),
            "load_cv": float(counts.std(unbiased=False) / mean) if mean > 0 else 0.0,
            "max_over_mean": float(counts.max() / mean) if mean > 0 else 0.0,
            "load_entropy": load_entropy,
            "dead_experts": torch.nonzero(acc.counts == 0).squeeze(-1).tolist(),
            "starved_experts": torch.nonzero((counts > 0) & (counts < STARVED_SHARE * mean)).squeeze(-1).tolist(),
            "router_entropy": float(acc.entropy_sum / t / math.log(e)) if e > 1 else 0.0,
            "near_tie_share": float(acc.margin_counts[0] / t) if k < e else None,
            "margin_below": ({f"2^{round(math.log2(level))}": float(c / t)
                              for level, c in zip(MARGIN_LEVELS, acc.margin_counts.tolist(), strict=True)}
                             if k < e else None),
            "coactivation": acc.coact.tolist(),
            "coactivation_conditional": cond.tolist(),
            "repetition": {
                "first": float(acc.repeat_first) / pairs, "any": float(acc.repeat_any) / pairs,
                "pairs": int(acc.pairs),
                "uniform_first": 1.0 / e, "uniform_any": uniform_any,
                "independent_first": float((f_first**2).sum()),
            },
        }
        if self.domains:
            out["domains"] = self._domains(acc)
        if acc.token_expert is not None and int(acc.token_expert.sum()) > 0:
            out["tokens_specialisation"] = self._tokens(acc)
        return out

    @staticmethod
    def _balance(acc: _Layer) -> dict[str, float]:
        """Every convention of :mod:`moescope.moe.losses`, from this layer's sums."""
        out = {}
        for convention in CONVENTIONS:
            if convention == "deepseek_seq":                 # per sequence, summed at update: the mean
                out[convention] = float(acc.seq_balance_sum / max(int(acc.sequences), 1))
            else:
                out[convention] = float(balance_loss_from_counts(
                    convention, counts=acc.counts, first_counts=acc.first, prob_sum=acc.prob_sum,
                    tokens=int(acc.tokens), top_k=acc.top_k))
        return out

    def _domains(self, acc: _Layer) -> dict:
        k, e = acc.top_k, acc.num_experts
        chance = k / e
        share = acc.domain_counts.double() / acc.domain_tokens.double().clamp_min(1).unsqueeze(1)   # (D, E)
        corrected = (share - chance) / (1 - chance) if chance < 1 else torch.zeros_like(share)
        table = acc.domain_counts.double().numpy()
        return {"names": list(self.domains), "tokens": acc.domain_tokens.tolist(), "share": share.tolist(),
                "chance": chance, "specialisation": corrected.tolist(),
                "nmi": normalized_mutual_information(table) if table.sum() > 0 else 0.0,
                "max_specialisation": corrected.max(0).values.tolist()}

    @staticmethod
    def _tokens(acc: _Layer) -> dict:
        """Token specialisation: the best expert's share of each token id's assignments, and per expert the
        tokens it takes beyond its load (:func:`moescope.analysis.vocabulary.vocabulary_specialisation`)."""
        table = acc.token_expert.double()
        per_token = table.sum(1)
        seen = per_token > 0
        best_share = torch.where(seen, table.max(1).values / per_token.clamp_min(1), torch.zeros_like(per_token))
        weighted = float((best_share * per_token).sum() / per_token.sum())
        return {"mean_top_expert_share": weighted, "seen_token_ids": int(seen.sum()),
                "vocabulary": vocabulary_specialisation(acc.token_expert.numpy(), acc.token_seen.numpy(),
                                                        int(acc.tokens))}

    def summaries(self) -> list[dict]:
        return [self.summary(i) for i in range(len(self.layers))]


def topk_overlap(a: Tensor, b: Tensor) -> float:
    """Router saturation between two checkpoints (OLMoE §5): the mean over tokens of |A ∩ B| / k for the
    (N, k) top-k expert sets A, B of the same tokens (-1: no expert, never matching)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"saturation compares (N, k) expert sets of the same tokens; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    a, b = a.long(), b.long()
    hits = ((a.unsqueeze(-1) == b.unsqueeze(-2)) & (a.unsqueeze(-1) >= 0)).any(-1).sum(-1)
    return float(hits.double().mean() / a.shape[1]) if a.shape[0] else float("nan")
