"""Tiny Hugging Face MoE checkpoints with a planted structure whose verdict is known in advance.

Built on ``tests/models/tiny_checkpoints.py`` (real transformers config classes, random weights,
a byte-level BPE tokenizer saved alongside); every planting edits the live parameters in place and
:func:`save` writes them with ``save_pretrained``, so ``moescope lab --model`` reads them exactly as
it would read a user's checkpoint.

Expert weights of the transformers families used here are fused: ``experts.gate_up_proj`` is
(E, 2I, H), its rows the directions the expert's hidden units read. Routers are ``mlp.gate.weight``
(E, H), row e expert e's centroid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # tiny_checkpoints.py

import tiny_checkpoints

from moescope.lab.corpus import DOMAINS, CorpusConfig, build_corpus

H, E = tiny_checkpoints.H, tiny_checkpoints.E
NOISE = 0.01  # planted rows are O(1); 1% isotropic noise keeps every matrix full rank


def build(family: str, seed: int = 0) -> nn.Module:
    return tiny_checkpoints.build(family, seed=seed)


def save(model: nn.Module, path: Path) -> Path:
    """``save_pretrained`` + the tiny tokenizer: a folder ``lab --model`` accepts."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tiny_checkpoints.save_tokenizer(path)
    return path


def moe_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers' MoE blocks (``mlp`` with fused ``experts``), in order."""
    return [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]


def _rows_in(basis: Tensor, n: int, g: torch.Generator) -> Tensor:
    """(n, H): n random rows in the span of ``basis`` (k, H) orthonormal rows, plus :data:`NOISE`."""
    return torch.randn(n, basis.shape[0], generator=g) @ basis + NOISE * torch.randn(n, basis.shape[1], generator=g)


def frame(seed: int = 0) -> Tensor:
    """(H, H) a random orthonormal basis of R^H; its rows are dealt out as planted subspaces."""
    return torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(seed)))[0].t()


# -- claim 6: expert input subspaces ---------------------------------------------------------------
def plant_disjoint_experts(model: nn.Module, block: int = 4, seed: int = 0) -> None:
    """Expert e reads only rows [e·block, (e+1)·block) of a random frame: mutually orthogonal subspaces.

    Needs E·block <= H (8·4 = 32 here).
    """
    if E * block > H:
        raise ValueError(f"E·block must be <= H = {H}; got {E}·{block}")
    basis, g = frame(seed), torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mlp in moe_blocks(model):
            w = mlp.experts.gate_up_proj                                                   # (E, 2I, H)
            for e in range(E):
                w[e] = _rows_in(basis[e * block:(e + 1) * block], w.shape[1], g)


def plant_one_subspace(model: nn.Module, dim: int = 3, seed: int = 0) -> None:
    """Every expert reads the same ``dim``-dimensional subspace."""
    basis, g = frame(seed)[:dim], torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mlp in moe_blocks(model):
            w = mlp.experts.gate_up_proj
            for e in range(E):
                w[e] = _rows_in(basis, w.shape[1], g)


# -- claim 10: a shared expert and the common subspace ---------------------------------------------
def plant_common_and_private(model: nn.Module, shared: str, common: int = 4, private: int = 3,
                             seed: int = 0) -> None:
    """Routed expert e reads C (``common`` dims) ⊕ its own P_e (``private`` dims), all orthogonal.

    ``shared="common"``: the shared expert reads only C; ``shared="apart"``: it reads the
    H − common − E·private directions orthogonal to C and to every P_e.
    """
    spare = H - common - E * private
    if shared not in ("common", "apart") or spare < (1 if shared == "apart" else 0):
        raise ValueError(f"shared must be 'common' or 'apart' (with H − common − E·private >= 1); got "
                         f"shared={shared!r}, spare dims {spare}")
    basis, g = frame(seed), torch.Generator().manual_seed(seed + 1)
    c = basis[:common]
    with torch.no_grad():
        for mlp in moe_blocks(model):
            w = mlp.experts.gate_up_proj
            for e in range(E):
                p = basis[common + e * private: common + (e + 1) * private]
                w[e] = _rows_in(torch.cat([c, p]), w.shape[1], g)
            s_basis = c if shared == "common" else basis[common + E * private:]
            for s in _shared_modules(mlp):
                for proj in (s.gate_proj, s.up_proj):
                    proj.weight.copy_(_rows_in(s_basis, proj.weight.shape[0], g))


def _shared_modules(mlp: nn.Module) -> list[nn.Module]:
    found = [getattr(mlp, n) for n in ("shared_expert", "shared_experts") if hasattr(mlp, n)]
    if not found:
        raise ValueError(f"{type(mlp).__name__} has no shared expert")
    return found


# -- claims 13 and 14: routers -----------------------------------------------------------------------
def domain_ids(path: Path, max_tokens: int = 512) -> dict[str, list[int]]:
    """The lab corpus per domain, tokenized with the checkpoint's tokenizer (as ``lab --model`` does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    corpus = build_corpus(CorpusConfig(chars_per_domain=20_000, doc_chars=1_000, seed=0))
    return {d: tok("\n\n".join(x.text for x in corpus.documents if x.domain == d),
                   add_special_tokens=False)["input_ids"][:max_tokens] for d in DOMAINS}


def router_inputs(model: nn.Module, ids: dict[str, list[int]], layer: int, seq_len: int = 32) -> dict[str, Tensor]:
    """Per domain, (T, H) the inputs of MoE block ``layer``'s router over windows of ``seq_len`` tokens."""
    router = moe_blocks(model)[layer].gate
    out: dict[str, Tensor] = {}
    for d, x in ids.items():
        got: list[Tensor] = []
        hook = router.register_forward_pre_hook(lambda m, args, got=got: got.append(args[0].reshape(-1, H).detach()))
        try:
            n = len(x) // seq_len
            with torch.no_grad():
                model(input_ids=torch.tensor(x[: n * seq_len]).view(n, seq_len))
        finally:
            hook.remove()
        out[d] = torch.cat(got)
    return out


def plant_domain_router(model: nn.Module, ids: dict[str, list[int]], scale: float = 20.0, seed: int = 0) -> None:
    """Router row d (d < 3) = the unit direction of domain d's centred mean router input, times ``scale``.

    The other rows are small random directions. Layers are planted in order: layer i's inputs are
    recomputed after layers < i route by domain.
    """
    g = torch.Generator().manual_seed(seed)
    for i, mlp in enumerate(moe_blocks(model)):
        x = router_inputs(model, ids, i)
        means = torch.stack([x[d].mean(0) for d in DOMAINS])                             # (3, H)
        centred = means - means.mean(0)
        with torch.no_grad():
            w = mlp.gate.weight
            w.copy_(0.1 * torch.randn(w.shape, generator=g))
            w[: len(DOMAINS)] = scale * centred / centred.norm(dim=-1, keepdim=True)


def plant_collapsed_router(model: nn.Module, ids: dict[str, list[int]], scale: float = 20.0,
                           seed: int = 0) -> None:
    """Router rows 0 and 1 = ``scale`` × the unit mean router input; the others ``-scale`` × it.

    Every token whose input has a positive component along the mean goes to experts 0 and 1.
    """
    del seed
    for i, mlp in enumerate(moe_blocks(model)):
        x = torch.cat(list(router_inputs(model, ids, i).values()))
        m = x.mean(0)
        m = m / m.norm()
        with torch.no_grad():
            w = mlp.gate.weight
            w.copy_(-scale * m.expand_as(w))
            w[:2] = scale * m


def plant_domain_embeddings(model: nn.Module, ids: dict[str, list[int]], strength: float = 3.0,
                            seed: int = 0) -> None:
    """Token t's embedding += ``strength`` · Σ_d p(d | t) v_d, v_d orthonormal: hidden states carry the domain.

    p(d | t) is t's share of occurrences in domain d (each domain's counts normalised by its size);
    the shares sum to 1, so every token also gets a common component along Σ_d v_d.
    """
    emb = model.get_input_embeddings().weight
    counts = torch.zeros(emb.shape[0], len(DOMAINS))
    for j, d in enumerate(DOMAINS):
        counts[:, j] = torch.bincount(torch.tensor(ids[d]), minlength=emb.shape[0]).float() / len(ids[d])
    seen = counts.sum(1) > 0
    share = torch.where(seen[:, None], counts / counts.sum(1, keepdim=True).clamp_min(1e-12), 1.0 / len(DOMAINS))
    v = frame(seed + 100)[: len(DOMAINS)]                                                    # (3, H)
    with torch.no_grad():
        emb.add_(strength * share @ v)
