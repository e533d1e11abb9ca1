r"""Vocabulary specialisation: which tokens each expert takes, beyond what its load explains.

OLMoE's token specialisation (Muennighoff et al. 2024, §5) is, for token t and expert e, the share
of t's occurrences routed to e: :math:`s_{te} = n_{te} / n_t` (with top-k routing an occurrence
counts for each of its k experts). An expert that takes 30% of all tokens takes about 30% of any
token's occurrences by load alone, so the share is **chance-corrected** against the expert's own
rate :math:`p_e` (the share of all tokens routed to e):

.. math:: c_{te} = (s_{te} - p_e) / (1 - p_e),

0 when token identity does not matter, 1 when every occurrence of t goes to e, negative when e
avoids t. Ranking tokens by the raw share favours rare tokens (a token seen twice has share 1 by
luck), so each expert's tokens are ranked by the lower end of the Wilson interval of the share,
among tokens seen at least ``min_count`` times.

The layer's summary is the occurrence-weighted mean over those tokens of the best corrected share,
held against a null that shuffles token identity and keeps everything else: the layer's expert
assignments are dealt out at random to the token occurrences, each token keeping its number of
assignments and each expert its load (exact for top-1; with top-k a shuffled token can draw one
expert more often than it occurs, and its share is then capped at 1). The effect is the excess over
the null's mean, with the interval of the null draws (:func:`moescope.stats.permutation_shift`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from moescope.stats import permutation_pvalue, permutation_shift

__all__ = ["MIN_COUNT", "vocabulary_specialisation", "wilson_interval"]

MIN_COUNT = 5       # occurrences below which a token's share is too noisy to rank
NULL_DRAWS = 99


def wilson_interval(hits: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``hits / n``, elementwise (n > 0)."""
    hits, n = np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if np.any(n <= 0) or np.any(hits < 0) or np.any(hits > n):
        raise ValueError("wilson_interval: need 0 <= hits <= n and n > 0 for every entry")
    z = _st.norm.ppf(0.5 + level / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _best_corrected(table: np.ndarray, seen: np.ndarray, rate: np.ndarray) -> float:
    """Occurrence-weighted mean over tokens of max_e (s_te − p_e) / (1 − p_e)."""
    share = np.minimum(table / seen[:, None], 1.0)
    corrected = (share - rate) / np.clip(1 - rate, 1e-12, None)
    return float((corrected.max(1) * seen).sum() / seen.sum())


def _shuffled_tokens(table: np.ndarray, keep: np.ndarray, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` tables of the kept tokens after dealing the layer's assignments out to token occurrences at
    random: each token keeps its row sum, each expert its column sum."""
    e = table.shape[1]
    pool = np.repeat(np.arange(e), table.sum(0))                          # every assignment's expert
    owner = np.repeat(np.arange(table.shape[0]), table.sum(1))            # the token each slot belongs to
    kept = keep[owner]
    rows = np.cumsum(keep) - 1                                            # kept token -> its row
    rng = np.random.default_rng(seed)
    out = []
    slots = rows[owner[kept]] * e
    n = int(keep.sum())
    for _ in range(draws):
        dealt = rng.permutation(pool)[kept]
        out.append(np.bincount(slots + dealt, minlength=n * e).reshape(n, e))
    return out


def vocabulary_specialisation(token_expert: np.ndarray, token_seen: np.ndarray, tokens: int, *,
                              min_count: int = MIN_COUNT, top: int = 10, level: float = 0.95,
                              draws: int = NULL_DRAWS, seed: int = 0) -> dict:
    """Each expert's most specialised tokens and the layer's specialisation against a token-blind null.

    Args:
        token_expert: (V, E) times token id v was routed to expert e (each of a token's k choices counts).
        token_seen: (V,) occurrences of token id v.
        tokens: all routed tokens (the experts' rates are ``token_expert.sum(0) / tokens``).
        min_count: tokens seen fewer times are left out of rankings and summary.
        top: tokens listed per expert.

    Returns ``{"min_count", "tokens_ranked", "chance": [p_e], "experts": [[{"id", "count", "share",
    "corrected", "lower"}]] (ids, decoded by the caller), "summary": {"observed", "null_mean", "excess",
    "interval", "level", "p_value", "draws"} | None}``.
    """
    table = np.asarray(token_expert, dtype=np.float64)
    seen_all = np.asarray(token_seen, dtype=np.float64)
    if table.ndim != 2 or seen_all.shape != (table.shape[0],):
        raise ValueError(f"token_expert must be (V, E) and token_seen (V,); got {table.shape} and {seen_all.shape}")
    if min_count < 1 or top < 1:
        raise ValueError(f"min_count and top must be >= 1; got min_count={min_count}, top={top}")
    if np.any(table > seen_all[:, None]):
        raise ValueError("a token is routed to an expert more often than it occurs")
    rate = table.sum(0) / max(tokens, 1)                                   # (E,) p_e
    keep = seen_all >= min_count
    ids = np.flatnonzero(keep)
    out = {"min_count": min_count, "tokens_ranked": int(ids.size), "chance": rate.tolist(),
           "experts": [[] for _ in range(table.shape[1])], "summary": None}
    if ids.size == 0:
        return out
    hits, seen = table[ids], seen_all[ids]
    share = hits / seen[:, None]
    corrected = (share - rate) / np.clip(1 - rate, 1e-12, None)
    lower, _ = wilson_interval(hits, np.broadcast_to(seen[:, None], hits.shape), level)
    for e in range(table.shape[1]):
        order = np.lexsort((-seen, -lower[:, e]))[:top]                # by Wilson lower bound, then count
        out["experts"][e] = [{"id": int(ids[i]), "count": int(seen[i]), "share": float(share[i, e]),
                              "corrected": float(corrected[i, e]), "lower": float(lower[i, e])}
                             for i in order if hits[i, e] > 0]
    observed = _best_corrected(hits, seen, rate)
    null = _shuffled_tokens(table.astype(np.int64), keep, draws, seed)
    null = np.array([_best_corrected(t, seen, rate) for t in null])
    excess, interval = permutation_shift([observed], [null], level=level)
    out["summary"] = {"observed": observed, "null_mean": float(null.mean()), "excess": float(excess),
                      "interval": [float(interval[0]), float(interval[1])], "level": level,
                      "p_value": permutation_pvalue(observed, null, "greater"), "draws": draws}
    return out
