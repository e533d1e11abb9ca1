"""Routing across depth: how a token's expert at one MoE layer constrains its expert at the next.

OLMoE (Muennighoff et al. 2024, §5) and others read routing layer by layer; a token's path through
the experts of successive layers is the cross-layer view. :class:`Pathways` keeps each token's
first-choice expert (the largest combine weight) at every recorded MoE layer — an (N, L) int16 table,
bounded by ``max_tokens`` — and :meth:`Pathways.summary` measures, from it:

* **transitions**: P(expert j at layer l+1 | expert i at layer l), one row per expert i that was chosen;
* **dependence**: the normalised mutual information (:func:`moescope.stats.normalized_mutual_information`,
  0 = independent, 1 = one determines the other) between consecutive layers' choices, against a null
  that shuffles layer l+1's choices across tokens (keeping both layers' loads, breaking only which token
  went where): the excess over the null's mean with the order-statistic interval of the permutation
  distribution (:func:`moescope.stats.permutation_shift`) and a permutation p-value;
* **paths**: the most frequent expert sequences through depth, with the share each would have if the
  layers chose independently (the product of the layers' first-choice loads);
* **prediction**: how well layer l's choice predicts layer l+m's — the accuracy of the majority rule
  ``i -> argmax_j P(j | i)`` fitted on half the tokens (even rows) and scored on the other half, against
  the best constant guess (the most loaded expert at l+m), averaged over l, for m = 1 .. L-1.

Tokens whose first choice was dropped (capacity: index -1) are left out of the pairs they are in.
"""

from __future__ import annotations

import math

import numpy as np

from moescope.stats import DEFAULT_LEVEL, normalized_mutual_information, permutation_pvalue, permutation_shift

__all__ = ["Pathways"]

TOP_PATHS = 10


def _joint(a: np.ndarray, b: np.ndarray, ea: int, eb: int) -> np.ndarray:
    return np.bincount(a.astype(np.int64) * eb + b, minlength=ea * eb).reshape(ea, eb).astype(np.float64)


def _shuffled_joints(a: np.ndarray, b: np.ndarray, ea: int, eb: int, draws: int, rng: np.random.Generator,
                     chunk_values: int = 1 << 21) -> np.ndarray:
    """(draws, ea, eb) joint counts of ``a`` against ``draws`` independent shuffles of ``b``.

    A shuffle's joint table depends only on how many of each row label meet each column label, and
    under a uniform shuffle that table follows the multivariate hypergeometric law with both
    margins fixed (the permutation null of Fisher's exact test). Where the table is much smaller
    than the data (ea · eb · 16 ≤ N) it is drawn directly (:func:`_hypergeometric_joints`, cost
    independent of N); otherwise the shuffles are drawn a chunk of draws at a time (``rng.permuted``
    of a (chunk, N) tile, at most ``chunk_values`` int64 values) and counted with one ``bincount``
    per chunk, each draw's cells offset by draw · ea · eb. Both are exact draws of the same null.
    """
    n, cells = a.size, ea * eb
    if cells * 16 <= n:
        return _hypergeometric_joints(np.bincount(a, minlength=ea), np.bincount(b, minlength=eb), draws, rng)
    per_chunk = max(1, chunk_values // max(n, 1))
    out = np.empty((draws, ea, eb))
    for start in range(0, draws, per_chunk):
        k = min(per_chunk, draws - start)
        shuffled = rng.permuted(np.broadcast_to(b, (k, n)), axis=1)          # (k, N), each row a permutation
        flat = (a * eb)[None, :] + shuffled + (np.arange(k) * cells)[:, None]
        out[start:start + k] = np.bincount(flat.ravel(), minlength=k * cells).reshape(k, ea, eb)
    return out


def _hypergeometric_joints(rows: np.ndarray, cols: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, ea, eb) tables with row sums ``rows`` (ea,) and column sums ``cols`` (eb,), each drawn as the
    joint counts of a uniformly random pairing of the row labels with the column labels: row i takes its
    rows[i] labels from the pool left by rows < i, and within the row column j's share is hypergeometric
    given the labels still needed and the pool's columns ≥ j (one vectorised call per cell, over draws)."""
    ea, eb = rows.size, cols.size
    out = np.zeros((draws, ea, eb))
    pool = np.tile(cols.astype(np.int64), (draws, 1))                        # (draws, eb) labels not yet taken
    for i in range(ea - 1):
        need = np.full(draws, rows[i], np.int64)
        rest = pool.sum(1)
        taken = np.zeros_like(pool)
        for j in range(eb - 1):
            rest = rest - pool[:, j]
            taken[:, j] = rng.hypergeometric(pool[:, j], rest, need)
            need = need - taken[:, j]
        taken[:, eb - 1] = need
        out[:, i] = taken
        pool -= taken
    out[:, ea - 1] = pool
    return out


class Pathways:
    """First-choice experts of every token at every recorded MoE layer, and what they say across depth.

    Args:
        num_experts: E of each recorded layer, in depth order.
        max_tokens: tokens kept (the rest are counted, not kept), bounding memory at 2·L bytes per token.
    """

    def __init__(self, num_experts: list[int], *, max_tokens: int = 100_000) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
        self.num_experts = list(num_experts)
        self.max_tokens = max_tokens
        self._parts: list[np.ndarray] = []
        self.kept = 0
        self.seen = 0

    def add(self, first: np.ndarray) -> None:
        """``first``: (N, L) first-choice expert of N tokens at each recorded layer (-1: dropped)."""
        first = np.asarray(first)
        if first.ndim != 2 or first.shape[1] != len(self.num_experts):
            raise ValueError(f"expected (tokens, {len(self.num_experts)}) first choices; got {first.shape}")
        self.seen += first.shape[0]
        room = self.max_tokens - self.kept
        if room > 0:
            part = first[:room].astype(np.int16)
            self._parts.append(part)
            self.kept += part.shape[0]

    @property
    def table(self) -> np.ndarray:
        """(N, L) the kept first choices."""
        return np.concatenate(self._parts) if self._parts else np.zeros((0, len(self.num_experts)), np.int16)

    def summary(self, *, draws: int = 199, seed: int = 0, level: float = DEFAULT_LEVEL) -> dict:
        """The transitions, dependence, paths and prediction of :mod:`this module <moescope.analysis.pathways>`
        (JSON-ready; None where a layer pair has fewer than two tokens or a layer one expert)."""
        if not 0 < level < 1 or math.floor((1 - level) / 2 * (draws + 1)) < 1:
            need = math.ceil(2 / (1 - level) - 1) if 0 < level < 1 else None
            raise ValueError(f"draws={draws} cannot give a {level:.1%} permutation interval (level must lie in (0, 1) "
                             f"and draws be >= {need}: 39 at 95%)")
        t, n_layers = self.table, len(self.num_experts)
        rng = np.random.default_rng(seed)
        pairs, observed, nulls = [], [], []
        for layer in range(n_layers - 1):
            ea, eb = self.num_experts[layer], self.num_experts[layer + 1]
            ok = (t[:, layer] >= 0) & (t[:, layer + 1] >= 0)
            a, b = t[ok, layer].astype(np.int64), t[ok, layer + 1].astype(np.int64)
            entry = {"from": layer, "to": layer + 1, "tokens": int(ok.sum())}
            if a.size < 2:
                pairs.append({**entry, "transition": None, "nmi": None})
                continue
            joint = _joint(a, b, ea, eb)
            rows = joint.sum(1, keepdims=True)
            entry["transition"] = [None if r[0] == 0 else (row / r[0]).tolist() for row, r in zip(joint, rows,
                                                                                                   strict=True)]
            nmi = normalized_mutual_information(joint)
            null = np.array([normalized_mutual_information(j) for j in _shuffled_joints(a, b, ea, eb, draws, rng)])
            effect, interval = permutation_shift([nmi], [null], level)
            entry.update({"nmi": nmi, "null_mean": float(null.mean()), "excess": effect, "interval": list(interval),
                          "p_value": permutation_pvalue(nmi, null, "greater")})
            pairs.append(entry)
            observed.append(nmi)
            nulls.append(null)
        overall = None
        if observed:
            effect, interval = permutation_shift(observed, nulls, level)
            overall = {"excess": effect, "interval": list(interval), "pairs": len(observed), "level": level,
                       "draws": draws}
        return {"tokens": int(t.shape[0]), "seen": self.seen, "transitions": pairs, "dependence": overall,
                "paths": self._paths(t), "prediction": self._prediction(t)}

    def _paths(self, t: np.ndarray) -> list[dict]:
        full = t[(t >= 0).all(axis=1)]
        if full.shape[0] == 0:
            return []
        loads = [np.bincount(full[:, layer], minlength=e) / full.shape[0] for layer, e in enumerate(self.num_experts)]
        paths, counts = np.unique(full, axis=0, return_counts=True)          # rows sorted: ties keep that order
        top = np.argsort(-counts, kind="stable")[:TOP_PATHS]
        return [{"experts": paths[i].tolist(), "count": int(counts[i]), "share": float(counts[i] / full.shape[0]),
                 "independent_share": float(np.prod([loads[layer][e] for layer, e in enumerate(paths[i])]))}
                for i in top]

    def _prediction(self, t: np.ndarray) -> list[dict]:
        out = []
        for m in range(1, len(self.num_experts)):
            accuracies, baselines = [], []
            for layer in range(len(self.num_experts) - m):
                ok = (t[:, layer] >= 0) & (t[:, layer + m] >= 0)
                a, b = t[ok, layer].astype(np.int64), t[ok, layer + m].astype(np.int64)
                fit, test = slice(0, None, 2), slice(1, None, 2)
                if a[test].size == 0 or a[fit].size == 0:
                    continue
                joint = _joint(a[fit], b[fit], self.num_experts[layer], self.num_experts[layer + m])
                fallback = int(joint.sum(0).argmax())  # an expert at l never seen while fitting: the constant guess
                rule = np.where(joint.sum(1) > 0, joint.argmax(1), fallback)
                accuracies.append(float((rule[a[test]] == b[test]).mean()))
                baselines.append(float((b[test] == fallback).mean()))
            if accuracies:
                out.append({"distance": m, "accuracy": float(np.mean(accuracies)),
                            "constant_guess": float(np.mean(baselines)), "pairs": len(accuracies)})
        return out
