"""Claim 18's experiment: a tiny causal LM with mixture-of-curvature experts against its Euclidean twin.

The data are :mod:`moescope.lab.taxonomy_corpus` (taxonomy paths beside flat text, its own tokenizer).
The model is the lab's :class:`~moescope.lab.model.TinyLM` with each feed-forward block replaced by a
:class:`~moescope.curved_models.mice.MiCELayer`: the MiCE model's experts live on hyperboloids of
learnable curvature, the twin's are Euclidean with a gain per expert (equal total and active
parameters). Per seed both models start from the *same* weights (embeddings, attention, router, expert
projections) and see the same batches, so the held-out loss difference is paired.

Measured per seed:

* **routing curvature**: for each held-out token, the routing-weighted mean of log c_e over the experts
  that process it (weights renormalised over the chosen experts), averaged over layers; the effect is
  its mean over tokens of hierarchical sentences minus its mean over tokens of flat ones. The null
  shuffles the hierarchical / flat labels over the same tokens (``NULL_DRAWS`` draws).
* **held-out loss** of both models (mean next-token cross entropy, nats).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from moescope.curved_models.mice import MiCEConfig, MiCELayer, build_mice, build_twin, count_params
from moescope.lab.model import LMConfig, MoESpec, TinyLM
from moescope.lab.taxonomy_corpus import FLAT, HIER, SHARED, TaxonomyCorpus, build_corpus

__all__ = ["PROFILES", "Profile", "run_curvature_experts"]

NULL_DRAWS = 200      # label shuffles per seed: a 95% order-statistic interval needs >= 39
AUX_COEF = 0.01       # load-balancing coefficient (Switch Transformer's α)


@dataclass(frozen=True)
class Profile:
    seeds: int            # independent seeds (each: one MiCE and one twin run)
    steps: int            # optimiser steps per run
    batch: int            # windows per step
    d_model: int
    n_layer: int
    train_windows: int
    held_out_windows: int
    lr: float = 3e-3      # AdamW; tiny models train fast at this rate
    log_every: int = 10   # steps per point of the training-loss curve


PROFILES: dict[str, Profile] = {
    "quick": Profile(seeds=3, steps=100, batch=16, d_model=32, n_layer=1, train_windows=384, held_out_windows=96),
    "full": Profile(seeds=5, steps=500, batch=32, d_model=32, n_layer=1, train_windows=2048, held_out_windows=256),
}
SEQ_LEN = 24


def _models(corpus: TaxonomyCorpus, prof: Profile, seed: int) -> tuple[TinyLM, TinyLM, MiCEConfig]:
    """The MiCE LM and its twin, identical but for the expert banks (drawn under ``seed``)."""
    spec = MoESpec(router="topk", num_experts=4, top_k=2, expert_intermediate=prof.d_model)
    cfg = LMConfig(vocab_size=len(corpus.tokenizer), d_model=prof.d_model, n_layer=prof.n_layer, n_head=2,
                   seq_len=SEQ_LEN, ffn="moe", moe=spec)
    mice_cfg = MiCEConfig(hidden=prof.d_model, num_experts=spec.num_experts, top_k=spec.top_k,
                          intermediate=spec.expert_intermediate)
    torch.manual_seed(seed)
    base = TinyLM(cfg)
    mice, twin = copy.deepcopy(base), copy.deepcopy(base)
    for bm, bt, b0 in zip(mice.blocks, twin.blocks, base.blocks, strict=True):
        bm.ffn = build_mice(mice_cfg, experts=b0.ffn.experts, router=copy.deepcopy(b0.ffn.router))
        bt.ffn = build_twin(mice_cfg, experts=b0.ffn.experts, router=copy.deepcopy(b0.ffn.router))
    return mice, twin, mice_cfg


def _train(model: TinyLM, corpus: TaxonomyCorpus, prof: Profile, seed: int) -> list[float]:
    """AdamW on next-token loss + AUX_COEF · load balance; returns the mean training loss per log window."""
    opt = torch.optim.AdamW(model.parameters(), lr=prof.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    curve, acc = [], []
    model.train()
    for _ in range(prof.steps):
        rows = torch.randint(corpus.train.shape[0], (prof.batch,), generator=gen)
        w = corpus.train[rows]
        out = model(w[:, :-1], targets=w[:, 1:])
        loss = out.loss + AUX_COEF * out.aux_losses["load_balance"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(float(out.loss.detach()))
        if len(acc) == prof.log_every:
            curve.append(sum(acc) / len(acc))
            acc = []
    if not all(math.isfinite(v) for v in curve):
        raise FloatingPointError("training loss became non-finite")
    return curve


@torch.no_grad()
def _evaluate(model: TinyLM, corpus: TaxonomyCorpus) -> tuple[float, list]:
    """Held-out loss (nats) and each layer's routing over the held-out inputs."""
    model.eval()
    w = corpus.held_out
    out = model(w[:, :-1], targets=w[:, 1:])
    return float(out.loss), out.routing


def _dense_weights(indices: torch.Tensor, weights: torch.Tensor, num_experts: int) -> np.ndarray:
    """(T, k) routing -> (T, E) weights renormalised over the chosen experts (rows of dropped tokens: 0)."""
    dense = torch.zeros(indices.shape[0], num_experts + 1, dtype=torch.float64)
    dense.scatter_add_(1, indices + 1, weights.to(torch.float64))         # empty slots (-1) land in column 0
    dense = dense[:, 1:]
    total = dense.sum(1, keepdim=True)
    return (dense / torch.where(total > 0, total, 1.0)).numpy()


def _routing_curvature(model: TinyLM, routing: list, labels: np.ndarray, seed: int) -> dict:
    """Per token, the routing-weighted mean log-curvature (mean over layers); hierarchical − flat and its null."""
    per_layer, experts, routed = [], [], np.ones(labels.shape, dtype=bool)
    for block, r in zip(model.blocks, routing, strict=True):
        bank = block.ffn.experts
        logc = torch.log(bank.curvatures.detach()).to(torch.float64).numpy()
        dense = _dense_weights(r.indices, r.weights, bank.num_experts)
        per_layer.append(dense @ logc)
        routed &= dense.sum(1) > 0                                       # tokens no expert took carry no curvature
        hier_mass, flat_mass = dense[labels == HIER].sum(0), dense[labels == FLAT].sum(0)
        experts.append({"curvature": np.exp(logc).tolist(),
                        "hier_share": (hier_mass / np.maximum(hier_mass + flat_mass, 1e-300)).tolist(),
                        "load": (dense.sum(0) / dense.shape[0]).tolist()})
    kappa = np.mean(per_layer, axis=0)                                   # (T,)
    keep = (labels != SHARED) & routed
    k, lab = kappa[keep], labels[keep]

    def diff(lbl: np.ndarray) -> float:
        return float(k[lbl == HIER].mean() - k[lbl == FLAT].mean())

    rng = np.random.default_rng([seed, 18, 3])
    null = [diff(rng.permutation(lab)) for _ in range(NULL_DRAWS)]
    obs = diff(lab)
    p = (1 + sum(v >= obs for v in null)) / (1 + NULL_DRAWS)
    return {"diff": obs, "hier_mean": float(k[lab == HIER].mean()), "flat_mean": float(k[lab == FLAT].mean()),
            "null": null, "p_value": p, "layers": experts}


def _one_seed(corpus: TaxonomyCorpus, prof: Profile, seed: int) -> dict:
    mice, twin, mice_cfg = _models(corpus, prof, seed)
    params = {"mice": _lm_params(mice), "twin": _lm_params(twin)}
    curve_m = _train(mice, corpus, prof, seed)
    curve_t = _train(twin, corpus, prof, seed)
    loss_m, routing_m = _evaluate(mice, corpus)
    loss_t, _ = _evaluate(twin, corpus)
    labels = corpus.held_out_labels[:, :-1].reshape(-1).numpy()
    rc = _routing_curvature(mice, routing_m, labels, seed)
    return {"seed": seed, "mice_loss": loss_m, "twin_loss": loss_t, "loss_gain": loss_t - loss_m,
            "curve_mice": curve_m, "curve_twin": curve_t, "routing": rc, "params": params,
            "mice_config": mice_cfg.to_dict()}


def _lm_params(model: TinyLM) -> dict[str, float]:
    """Whole-model parameter counts: total, and active per token (everything but the unchosen experts)."""
    total = sum(p.numel() for p in model.parameters())
    layers = [count_params(b.ffn) for b in model.blocks if isinstance(b.ffn, MiCELayer)]
    inactive = sum(c["total"] - c["active"] for c in layers)
    return {"total": int(total), "active": float(total - inactive)}


def run_curvature_experts(profile: str = "quick", seed: int = 0) -> dict:
    """Train MiCE and its twin over ``PROFILES[profile].seeds`` seeds derived from ``seed``; a JSON-ready dict.

    Keys: ``profile``, ``seed``, ``seeds``, ``settings``, ``runs`` (one dict per seed: held-out losses,
    training curves, routing curvature with its label-shuffle null, learnt curvatures per expert,
    parameter counts), and the per-seed lists the claim reads: ``routing_diff``, ``mice_loss``,
    ``twin_loss``. Global RNG state is restored on return.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}; got profile={profile!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got seed={seed!r}")
    prof = PROFILES[profile]
    seeds = [int(s) for s in np.random.default_rng([seed, 18]).integers(0, 2**31 - 1, size=prof.seeds)]
    runs, vocab = [], []
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)      # deterministic reductions; the model is too small to gain from more
            for s in seeds:
                corpus = build_corpus(s, seq_len=SEQ_LEN, train_windows=prof.train_windows,
                                      held_out_windows=prof.held_out_windows)
                runs.append(_one_seed(corpus, prof, s))
                vocab.append(len(corpus.tokenizer))
        finally:
            torch.set_num_threads(threads)
    return {
        "profile": profile, "seed": seed, "seeds": seeds,
        "settings": {"steps": prof.steps, "batch": prof.batch, "d_model": prof.d_model, "n_layer": prof.n_layer,
                     "seq_len": SEQ_LEN, "train_windows": prof.train_windows,
                     "held_out_windows": prof.held_out_windows, "lr": prof.lr, "null_draws": NULL_DRAWS,
                     "aux_coef": AUX_COEF, "log_every": prof.log_every, "vocab_size": max(vocab)},
        "runs": runs,
        "routing_diff": [r["routing"]["diff"] for r in runs],
        "routing_null": [r["routing"]["null"] for r in runs],
        "mice_loss": [r["mice_loss"] for r in runs],
        "twin_loss": [r["twin_loss"] for r in runs],
    }
