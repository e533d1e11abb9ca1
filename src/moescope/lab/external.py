"""Measure a user's Hugging Face MoE checkpoint for the lab's claims 6 and 10–14.

``moescope lab --model PATH`` tests the claims that need only one trained MoE model on the
user's checkpoint instead of the lab's tiny model. :func:`measure_checkpoint` returns the
same structure the claim evaluators read from the ``training`` experiment
(:mod:`moescope.lab.trained`), with the one model under the run name :data:`RUN`:

* ``runs[RUN]["weights"]`` — :func:`~moescope.analysis.weights.view_geometry` of every MoE
  layer (expert subspaces vs the random-subspace null, shared experts, router centroids):
  claims 6 and 10;
* ``runs[RUN]["routing"]`` — :class:`~moescope.analysis.routing.RoutingStats` by domain over the
  lab corpus (:func:`moescope.lab.corpus.build_corpus`) tokenized with the checkpoint's own
  tokenizer, recorded by :class:`~moescope.models.RoutingRecorder`, and token × expert weights
  of a short sample per domain: claims 13 and 14;
* ``runs[RUN]["router_null"]`` — nmi, repetition, router entropy and how often the angle alone
  reproduces the router's first choice, for the trained router and for random-direction routers of
  the same norms on the same text: claims 11, 13 and 14; ``runs[RUN]["expert_null"]`` — the experts'
  overlap against random regroupings of their hidden units: claim 6;
* ``subspaces_used`` — the share of attention heads whose output (the ``o_proj`` input) is
  non-zero per token against the share of routed experts that process it, plus the geometry
  of the heads' read subspaces (per head, the rows of q/k/v that read the token) against the
  experts' input subspaces: claim 12.

Needs the checkpoint's tokenizer in the same directory: the lab's text must be turned into
the ids the model was trained on; byte-level ids from elsewhere would index the embedding
table meaninglessly, so there is no fallback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from moescope.analysis.expert_null import view_grouping_null
from moescope.analysis.router_null import random_router_rows, router_scalars, swappable
from moescope.analysis.routing import RoutingStats
from moescope.analysis.weights import overlap_zscore, subspace_geometry, top_subspace, view_geometry
from moescope.geometry import principal_angles, random_overlap_mean
from moescope.lab.corpus import DOMAINS, CorpusConfig, build_corpus
from moescope.lab.trained import carrying_count, head_contributions
from moescope.models import BY_MODEL_TYPE, BY_NAME, MoELayerView, RoutingRecorder, load_moe_model, supported_model_types

RUN = "checkpoint"  # the run name under which the checkpoint's measurements appear in ``runs``
# the files AutoTokenizer reads a tokenizer from (as moescope.models.loading)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class ModelInputError(ValueError):
    """The checkpoint given to ``lab --model`` cannot be measured: the message names the path and what is needed."""


@dataclass(frozen=True)
class ExternalConfig:
    """How much of the lab corpus is routed through the checkpoint (independent of the lab profile)."""

    chars_per_domain: int = 20_000  # ~5k tokens per domain for a 32k-vocab BPE: stable loads, seconds on tiny models
    max_tokens: int = 4_096         # per domain: bounds CPU time on a real (7B+) checkpoint
    seq_len: int = 128              # tokens per window (capped by the model's max_position_embeddings)
    batch_size: int = 4             # windows per forward pass
    sample_tokens: int = 32         # tokens per domain in the token × expert heatmaps (as lab.trained)
    seed: int = 0                   # the corpus's math generator, the randomized SVD and the nulls' draws
    null_draws: int = 100           # random-direction routers of claims 11, 13, 14: one model, so the interval is
                                    # their spread, and a 95% order-statistic interval needs >= 39 draws
    null_tokens: int = 1_024        # per domain, routed by the trained router and each random one (same text)
    expert_draws: int = 200         # random regroupings of each layer's hidden units (claim 6)
    dtype: str = "float32"          # parameters' dtype (moescope.models.DTYPES; "auto": the checkpoint's own)
    device: str = "cpu"             # where the model runs (moescope.models.DEVICES)

    def __post_init__(self) -> None:
        for name in ("max_tokens", "seq_len", "batch_size", "sample_tokens", "null_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if not isinstance(self.null_draws, int) or self.null_draws < 39:
            raise ValueError(f"null_draws must be an integer >= 39 (fewer cannot make a 95% interval); got "
                             f"null_draws={self.null_draws!r}")
        if not isinstance(self.expert_draws, int) or self.expert_draws < 39:
            raise ValueError(f"expert_draws must be an integer >= 39 (fewer cannot make a 95% interval); got "
                             f"expert_draws={self.expert_draws!r}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (consecutive-token statistics); got seq_len={self.seq_len}")


def check_checkpoint(path: str | Path) -> Path:
    """Fail early, with the path and what is missing, unless ``path`` is a usable checkpoint folder.

    Checks: a directory with ``config.json`` of a supported ``model_type`` and tokenizer files.
    The weights are checked when the model is loaded (:func:`moescope.models.load_moe_model`).
    """
    path = Path(path).expanduser()
    what = ("a local Hugging Face MoE checkpoint directory (config.json, model*.safetensors and the "
            "tokenizer files, e.g. written by model.save_pretrained(path) and tokenizer.save_pretrained(path))")
    if not path.exists():
        raise ModelInputError(f"--model {path}: the path does not exist; expected {what}")
    if not path.is_dir():
        raise ModelInputError(f"--model {path}: not a directory; expected {what}")
    if not (path / "config.json").is_file():
        raise ModelInputError(f"--model {path}: no config.json; expected {what}")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelInputError(f"--model {path}: config.json is not a JSON object: {err}") from err
    if model_type not in BY_MODEL_TYPE:
        raise ModelInputError(f"--model {path}: model_type={model_type!r} is not a supported MoE family; "
                              f"supported: {supported_model_types()}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelInputError(f"--model {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}). The lab routes "
                              "its code / language / math text through the model and needs the checkpoint's own "
                              "tokenizer saved in the same directory (tokenizer.save_pretrained(path))")
    return path


# -- attention modules -----------------------------------------------------------------------------
def _is_attention(m: nn.Module) -> bool:
    """A self-attention module with an output projection: HF ``o_proj`` or T5/Switch ``o``."""
    out = getattr(m, "o_proj", None) if hasattr(m, "o_proj") else getattr(m, "o", None)
    return isinstance(out, nn.Linear) and (hasattr(m, "q_proj") or hasattr(m, "q") or hasattr(m, "q_b_proj")
                                           or hasattr(m, "q_a_proj"))


def attention_for(model: nn.Module, view: MoELayerView) -> nn.Module | None:
    """The self-attention of the transformer layer that holds MoE layer ``view`` (None if not found).

    Walks up from the MoE block (``model.layers.3.mlp`` -> ``model.layers.3``; Switch:
    ``encoder.block.1.layer.1.mlp`` -> ``encoder.block.1``), never up to the whole model, and
    takes the first attention module found below that ancestor.
    """
    parts = view.name.split(".")
    for depth in range(len(parts) - 1, max(len(parts) - 4, 0), -1):
        ancestor = model.get_submodule(".".join(parts[:depth]))
        for _, m in ancestor.named_modules():
            if _is_attention(m):
                return m
    return None


def _out_proj(attn: nn.Module) -> nn.Linear:
    return attn.o_proj if hasattr(attn, "o_proj") else attn.o


def _num_heads(model: nn.Module, attn: nn.Module) -> int:
    cfg = model.config
    for name in ("num_attention_heads", "num_heads", "n_heads"):
        v = getattr(cfg, name, None) or getattr(attn, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"cannot tell the number of attention heads of {type(attn).__name__}")


def head_read_projections(attn: nn.Module, n_head: int) -> dict[str, list[Tensor]] | str:
    """The rows of q/k/v that read the token, per query head and per key/value group.

    Returns ``{"query": [W_q,h (dq, H) per head], "key_value": [[W_k,g; W_v,g] (dk + dv, H) per
    group]}``. The two are kept apart because with grouped-query attention the heads of a group
    share their keys and values: one subspace per head built from q, k and v would overlap
    within a group by construction. Returns a sentence saying why instead when the heads have
    no per-head input projection (DeepSeek's multi-head latent attention reads the token through
    a shared low-rank latent).
    """
    names = ("q_proj", "k_proj", "v_proj") if hasattr(attn, "q_proj") else ("q", "k", "v")
    if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
        return (f"{type(attn).__name__} has no per-head q/k/v projections (multi-head latent attention reads "
                "the token through a shared low-rank latent), so heads have no input subspace of their own")
    q, k, v = (getattr(attn, n).weight.detach().float() for n in names)     # (nh·dq, H), (nkv·dk, H), (nkv·dv, H)
    dq = q.shape[0] // n_head
    n_kv = next((g for g in range(n_head, 0, -1) if n_head % g == 0 and k.shape[0] % g == 0
                 and v.shape[0] % g == 0 and k.shape[0] // g == dq), None)
    if q.shape[0] % n_head or n_kv is None:
        return f"cannot split q {tuple(q.shape)} / k {tuple(k.shape)} / v {tuple(v.shape)} into {n_head} heads"
    dk, dv = k.shape[0] // n_kv, v.shape[0] // n_kv
    return {"query": [q[h * dq:(h + 1) * dq] for h in range(n_head)],
            "key_value": [torch.cat([k[g * dk:(g + 1) * dk], v[g * dv:(g + 1) * dv]]) for g in range(n_kv)]}


def _against_experts(rows: list[Tensor], experts: Tensor, seed: int) -> dict:
    """Subspaces of ``rows`` (each (m, H)) among themselves and against expert bases (E, H, r)."""
    _, h, rank = experts.shape
    r_h = min(rank, min(w.shape[0] for w in rows))
    bases = torch.stack([top_subspace(w, r_h, seed=seed + i)[0] for i, w in enumerate(rows)])       # (n, H, r_h)
    theta = principal_angles(bases[:, None].to(torch.float64), experts[None].to(torch.float64))  # (n, E, r_h)
    sum_cos2 = torch.cos(theta).square().sum(-1).flatten().numpy()
    null = float(random_overlap_mean(r_h, rank, h))
    out = {"count": len(rows), "rank": r_h, "vs_experts_mean_sum_cos2": float(sum_cos2.mean()),
           "vs_experts_null_sum_cos2": null,
           "vs_experts_z": float(overlap_zscore(sum_cos2.mean(), r_h, rank, h, n=sum_cos2.size)),
           "vs_experts_ratio_to_null": float(sum_cos2.mean() / null)}
    if len(rows) >= 2:
        geo = subspace_geometry(bases, matrices=False)
        out["among"] = {k: geo[k] for k in ("num_pairs", "z", "ratio_to_null", "mean_cos2_pairs", "null_mean_cos2")}
    return out


def head_expert_geometry(rows: dict[str, list[Tensor]], view: MoELayerView, rank: int, seed: int) -> dict:
    """Attention read subspaces against each other and against the experts' input subspaces.

    Args:
        rows: :func:`head_read_projections` of the layer's attention.
        view: the MoE layer; expert e's subspace is the top-``rank`` right singular vectors of
            its [gate; up] (E, H, r), as in :func:`~moescope.analysis.weights.view_geometry`.
        rank: r of the layer's expert subspaces; a head gets r_h = min(r, its rows).

    Returns:
        ``query`` (per head) and ``key_value`` (per kv group): ``count``, ``rank``, the overlap
        Σcos²θ with every expert subspace (``vs_experts_mean_sum_cos2``, its null r_h·r/H,
        ``vs_experts_z`` over the count·E pairs, pairwise uncorrelated under the null,
        ``vs_experts_ratio_to_null``) and, with two or more, ``among`` themselves
        (:func:`~moescope.analysis.weights.subspace_geometry` summary). Plus ``hidden`` and
        ``expert_rank``.
    """
    experts = torch.stack([top_subspace(view.expert(e).input_projection().detach().float(), rank, seed=seed + e)[0]
                           for e in range(view.num_experts)])                                     # (E, H, r)
    return {"hidden": view.hidden, "expert_rank": rank,
            **{name: _against_experts(r, experts, seed + 1000 * j) for j, (name, r) in enumerate(rows.items())}}


# -- routing over the corpus -------------------------------------------------------------------------
def _token_ids(tokenizer, corpus, max_tokens: int, vocab: int, path: Path) -> dict[str, list[int]]:
    """Per domain, the ids of its documents (joined by blank lines), at most ``max_tokens``."""
    out = {}
    for domain in DOMAINS:
        text = "\n\n".join(d.text for d in corpus.documents if d.domain == domain)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < 2:
            raise ModelInputError(f"the tokenizer in {path} turns the lab's {domain} text into {len(ids)} "
                                  "token(s)")
        top = max(ids)
        if top >= vocab:
            raise ModelInputError(f"the tokenizer in {path} produces id {top} but the model's embedding has "
                                  f"{vocab} rows: tokenizer and weights do not belong together")
        out[domain] = ids
    return out


def _windows(ids: list[int], seq_len: int) -> Tensor:
    """(N, S) full windows of S = min(seq_len, len(ids)) tokens (the tail shorter than S is dropped)."""
    s = min(seq_len, len(ids))
    n = len(ids) // s
    return torch.tensor(ids[: n * s], dtype=torch.long).view(n, s)


def _dense(r) -> list[list[float]]:
    """(T, E) combine weights of the experts actually used (0 elsewhere)."""
    out = torch.zeros(r.indices.shape[0], r.scores.shape[-1])
    valid = r.indices >= 0
    out.scatter_(1, r.indices.clamp_min(0), torch.where(valid, r.weights.float(), 0.0))
    return out.tolist()


def _route(model: nn.Module, views: list[MoELayerView], ids: dict[str, list[int]], cfg: ExternalConfig,
           seq_len: int, tokenizer) -> tuple[dict, dict, dict]:
    """One pass over every domain's windows, batches of (B, S) token ids with no padding.

    Returns ``routing`` ({"layers": RoutingStats summaries by domain, "samples": per domain the first
    ``sample_tokens`` ids and their (T, E) combine weights per MoE layer}), ``used`` (head and expert
    shares per token, claim 12) and the number of windows per domain.
    """
    stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], domains=DOMAINS)
    heads: dict[int, Tensor] = {}
    attns = {v.index: attention_for(model, v) for v in views}
    n_head = {i: _num_heads(model, a) for i, a in attns.items() if a is not None}
    hooks = []
    for v in views:
        if attns[v.index] is not None:
            hooks.append(_out_proj(attns[v.index]).register_forward_pre_hook(
                lambda mod, args, i=v.index: heads.__setitem__(i, args[0].detach())))
    head_shares: list[float] = []
    expert_shares: list[float] = []
    output_shares: list[dict] = []
    samples = {}

    def forward(batch: Tensor) -> list:
        heads.clear()
        rec.set_batch(batch, torch.ones_like(batch))
        batch = batch.to(model.device)
        model(input_ids=batch, attention_mask=torch.ones_like(batch))
        return rec.pop()

    try:
        with RoutingRecorder(model, views) as rec, torch.no_grad():
            for domain, domain_ids in ids.items():
                wins = _windows(domain_ids, seq_len)
                for start in range(0, wins.shape[0], cfg.batch_size):
                    for r in forward(wins[start : start + cfg.batch_size]):
                        stats.update(r, domain)
                        acting = ((r.indices >= 0) & (r.weights > 0)).sum(-1).float()         # (T,)
                        expert_shares.append(float(acting.mean()) / r.scores.shape[-1])
                    fractions = []
                    for i, y in heads.items():  # (B, S, nh·dv): the heads' outputs, concatenated
                        norms = y.reshape(*y.shape[:-1], n_head[i], -1).float().norm(dim=-1)   # (B, S, nh)
                        head_shares.append(float((norms > 1e-6 * norms.amax(-1, keepdim=True)).float().mean()))
                        carried = carrying_count(head_contributions(y, _out_proj(attns[i]).weight, n_head[i]))
                        fractions.append(float(carried.mean()) / n_head[i])
                    if fractions:
                        output_shares.append({"head_fraction": sum(fractions) / len(fractions), "n_head": n_head[
                            next(iter(heads))]})
                head = torch.tensor([domain_ids[: cfg.sample_tokens]])
                samples[domain] = {"tokens": head[0].tolist(),
                                   "pieces": [tokenizer.decode([t]) for t in head[0].tolist()],
                                   "weights": {r.layer: _dense(r) for r in forward(head)}}
    finally:
        for h in hooks:
            h.remove()
    used = {"head_share": sum(head_shares) / len(head_shares) if head_shares else None,
            "expert_share": sum(expert_shares) / max(len(expert_shares), 1),
            "n_head": next(iter(n_head.values()), 0), "output_shares": output_shares}
    if not head_shares:
        used["reason"] = "no self-attention module with an output projection was found next to the MoE layers"
    return ({"layers": stats.summaries(), "samples": samples}, used,
            {"windows_per_domain": {d: int(_windows(i, seq_len).shape[0]) for d, i in ids.items()}})


def _router_null(model: nn.Module, views: list[MoELayerView], ids: dict[str, list[int]], cfg: ExternalConfig,
                 seq_len: int) -> dict | None:
    """Per MoE layer, nmi / repetition / router entropy / angle agreement of the trained router and of
    ``cfg.null_draws`` random-direction routers of the same norms, on the same ``null_tokens`` per domain.

    The null of claims 11, 13 and 14 (:mod:`moescope.analysis.router_null`, the lab's definition). None
    when a view's router matrix is not the model's own parameter (it could not be swapped).
    """
    if not swappable(model, views):
        return None
    inputs: dict[int, list[Tensor]] = {}
    hooks = []
    for v in views:
        hook = BY_NAME[v.family].hook
        router = v.module.get_submodule(hook) if hook else v.module
        hooks.append(router.register_forward_pre_hook(
            lambda mod, args, kw, i=v.index: inputs.setdefault(i, []).append((args or tuple(kw.values()))[0].detach()),
            with_kwargs=True))
    windows = {d: _windows(i[: cfg.null_tokens], seq_len) for d, i in ids.items()}

    def measure() -> list[dict]:
        stats = RoutingStats([v.num_experts for v in views], [v.top_k for v in views], domains=DOMAINS)
        inputs.clear()
        with RoutingRecorder(model, views) as rec, torch.no_grad():
            for domain, wins in windows.items():
                for start in range(0, wins.shape[0], cfg.batch_size):
                    batch = wins[start : start + cfg.batch_size]
                    rec.set_batch(batch, torch.ones_like(batch))
                    batch = batch.to(model.device)
                    model(input_ids=batch, attention_mask=torch.ones_like(batch))
                    for r in rec.pop():
                        stats.update(r, domain)
        return router_scalars(views, stats.summaries(),
                              [torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[v.index]]) for v in views])

    try:
        observed = measure()
        gen = torch.Generator().manual_seed(cfg.seed)
        null = []
        for _ in range(cfg.null_draws):
            with random_router_rows(views, gen):
                null.append(measure())
    finally:
        for h in hooks:
            h.remove()
    return {"observed": observed, "null": null, "tokens_per_domain": cfg.null_tokens,
            "kind": f"the checkpoint with every router row replaced by a random direction of the same norm "
                    f"({cfg.null_draws} draws, seed {cfg.seed})"}


def measure_checkpoint(path: str | Path, cfg: ExternalConfig = ExternalConfig()) -> dict:
    """Everything claims 6 and 10–14 read, measured on the checkpoint in ``path``.

    Returns:
        JSON-ready dict: ``runs`` ({RUN: {"name", "moe", "routing", "router_null" (the trained and the
        random-direction routers, claims 11, 13, 14), "weights", "expert_null" (claim 6)}}), ``output_shares``
        (claim 12),
        ``subspaces_used`` (with ``geometry``: per MoE layer :func:`head_expert_geometry`, or
        ``geometry_skipped``: why), ``top_k`` and ``num_experts`` (of the first MoE layer),
        ``baseline`` and ``shared_run`` (both RUN: the run the figures draw), ``model``
        (path, model type, family, layers, experts, shared experts, hidden, tokenizer) and
        ``provenance`` (corpus and token counts per domain).

    Raises:
        ModelInputError (a ValueError): not a usable checkpoint folder (see :func:`check_checkpoint`),
            weights that cannot be loaded, no MoE layer, or a tokenizer that does not fit the weights.
    """
    path = check_checkpoint(path)
    try:
        model, tokenizer, views = load_moe_model(path, dtype=cfg.dtype, device=cfg.device)
    except (ValueError, FileNotFoundError) as err:  # no weights, corrupt files, a dense model
        raise ModelInputError(f"--model {path}: {err}") from err
    if tokenizer is None:  # check_checkpoint saw tokenizer files, but AutoTokenizer found none in them
        raise ModelInputError(f"--model {path}: the tokenizer files could not be loaded as a tokenizer")
    config = model.config
    seq_len = min(cfg.seq_len, getattr(config, "max_position_embeddings", None) or cfg.seq_len)
    corpus = build_corpus(CorpusConfig(chars_per_domain=cfg.chars_per_domain, doc_chars=min(1_000,
                                                                                           cfg.chars_per_domain),
                                       seed=cfg.seed))
    ids = _token_ids(tokenizer, corpus, cfg.max_tokens, model.get_input_embeddings().num_embeddings, path)
    routing, used, windows = _route(model, views, ids, cfg, seq_len, tokenizer)
    router_null = _router_null(model, views, ids, cfg, seq_len)
    if router_null is None:
        raise ModelInputError(f"--model {path}: the router weights of {type(model).__name__} are copies, not the "
                              "model's parameters, so the random-router null cannot be measured")
    weights = [view_geometry(v, seed=cfg.seed) for v in views]
    expert_null = [view_grouping_null(v, draws=cfg.expert_draws, seed=cfg.seed + i) for i, v in enumerate(views)]
    geometry, skipped = [], None
    for v, geo in zip(views, weights, strict=True):
        attn = attention_for(model, v)
        if attn is None:
            skipped = "no self-attention module found next to the MoE layers"
            break
        rows = head_read_projections(attn, _num_heads(model, attn))
        if isinstance(rows, str):
            skipped = rows
            break
        geometry.append({"index": v.index, **head_expert_geometry(rows, v, geo["experts"]["rank"], cfg.seed)})
    used = {**used, "geometry": geometry} if skipped is None else {**used, "geometry_skipped": skipped}
    first = views[0]
    info = {"path": str(path), "model_type": config.model_type, "family": BY_MODEL_TYPE[config.model_type].title,
            "num_hidden_layers": getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None),
            "num_moe_layers": len(views), "moe_layers": [v.name for v in views],
            "num_experts": [v.num_experts for v in views], "top_k": [v.top_k for v in views],
            "shared_experts": [len(v.shared) for v in views], "hidden": first.hidden,
            "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)}
    tokens = {d: len(i) for d, i in ids.items()}
    del model
    return {
        "runs": {RUN: {"name": RUN, "moe": True, "routing": routing, "router_null": router_null,
                       "weights": weights, "expert_null": expert_null}},
        "output_shares": used["output_shares"],
        "subspaces_used": used, "top_k": first.top_k, "num_experts": first.num_experts,
        "baseline": RUN, "shared_run": RUN, "model": info,
        "provenance": {"checkpoint": info, "tokens": tokens, "tokens_total": sum(tokens.values()),
                       "seq_len": seq_len, **windows, "settings": cfg.__dict__.copy(),
                       "corpus": {k: v for k, v in corpus.provenance().items() if k in ("config", "sizes",
                                                                                        "fingerprint", "sources")}},
    }


def describe(info: dict) -> str:
    """'the Mixtral checkpoint /path (model_type mixtral)': where the claims were measured."""
    return f"the {info['family']} checkpoint {info['path']} (model_type {info['model_type']})"


__all__ = ["RUN", "ExternalConfig", "ModelInputError", "attention_for", "check_checkpoint", "describe",
           "head_expert_geometry", "head_read_projections", "measure_checkpoint"]
