r"""A spectro-Riemannian GNN (CUSP; Grover et al., ICLR 2025) and its Euclidean twin, a GCN of equal parameters.

CUSP runs a graph filter bank on node embeddings that live in a product of constant-curvature spaces.
This file builds the parts the paper names, small and in plain torch:

* **Cusp Laplacian.** Every edge gets the weight :math:`w_{xy} = \exp(-1/(1 - \tilde\kappa_{xy}))` from its
  Ollivier–Ricci curvature :math:`\tilde\kappa_{xy}` (:mod:`moescope.geometry.curved.ricci`, idleness 0.5 as in
  the paper; w = 0 at κ̃ = 1). Negatively curved edges (bridges between communities, tree edges) get more weight
  than edges inside dense clusters. The filters use :math:`\tilde A = \tilde D^{-1/2}(W + I)\tilde D^{-1/2}`, whose
  eigenvalues are :math:`1 - \lambda` for the eigenvalues λ ∈ [0, 2) of the Cusp Laplacian :math:`I - \tilde A`;
* **κ-GCN** (Bachmann, Bécigneul & Ganea 2020). Each factor of the product (signature such as ``"H2xS2xE2"``)
  is a κ-stereographic space (:mod:`moescope.geometry.curved.kappa_ops`). A layer is
  :math:`H \mapsto \sigma_\kappa(\hat A \boxtimes_\kappa (H \otimes_\kappa W))`, factor by factor: a Möbius
  matrix-vector product, the left multiplication by the adjacency (weighted gyromidpoints of the neighbours,
  scaled by the row sum), and ReLU in the tangent space at 0. Without a filter it is manify 0.1's
  ``KappaGCNLayer`` (the test's oracle);
* **Cusp Filtering.** In place of one multiplication by :math:`\hat A`, each layer runs a bank of generalised
  PageRank filters (GPR-GNN, Chien et al. 2021, which CUSP builds on): band b is
  :math:`Z_b = \bigoplus_{k=0}^{K} \gamma_{b,k} \otimes_\kappa (\tilde A \boxtimes_\kappa)^k H`,
  with learnable :math:`\gamma_b`. The low-pass band starts at personalised PageRank,
  :math:`\gamma_k = a(1-a)^k` (response :math:`\sum_k \gamma_k (1 - \lambda)^k`, largest at λ = 0); the
  high-pass band starts at :math:`\gamma_k = a(a-1)^k`, the same series in :math:`-\tilde A`, largest at λ = 2;
* **Clipped inputs.** The encoder's tangent vectors are clipped to norm ``clip`` per factor before
  :math:`\exp_0` (feature clipping, Guo, Chen & Yu, CVPR 2022), so no point starts at the edge of the ball;
* **Per-component combination.** In each factor the bands are merged by a weighted gyromidpoint with
  softmax weights learned per factor. This is a simple form of CUSP Pooling's attention over filters and
  components; the curvature positional encoding is left out. A linear classifier reads the tangent
  vectors at 0 of all factors, scaled to unit norm as in CUSP's readout.

The Euclidean twin is a Kipf & Welling GCN on the ordinary normalised adjacency (no curvature, no filter
bank): encoder, two graph convolutions, classifier. Its widths are chosen so that its parameter count
equals CUSP's exactly (:func:`euclidean_twin`).

API: ``model = CuspGNN(CuspConfig(), in_features, n_classes)``; ``op = cusp_operator(graph)``;
``logits = model(x, op)`` with x (N, F) → (N, C). Twin: ``twin = euclidean_twin(model)``,
``twin(x, gcn_operator(graph))``. ``count_params(m)`` counts trainable parameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from torch import nn

from moescope.geometry.curved import kappa_ops as ko
from moescope.geometry.curved.ricci import edge_curvatures

__all__ = [
    "BANDS",
    "CuspConfig",
    "CuspFilter",
    "CuspGNN",
    "EuclideanGCN",
    "KappaGCNLayer",
    "count_params",
    "cusp_edge_weights",
    "cusp_laplacian",
    "cusp_operator",
    "euclidean_twin",
    "filter_response",
    "gcn_operator",
    "normalized_adjacency",
]

BANDS = ("low", "high", "all")   # initial responses: personalised PageRank in Ã, the same in −Ã, identity


@dataclass(frozen=True)
class CuspConfig:
    """CUSP's hyper-parameters, small enough for a two-core laptop."""

    signature: str = "H4xS4xE4"      # one factor per sign of curvature, as in CUSP's mixed-curvature products
    hidden: int = 16                 # width of the encoder MLP's hidden layer (CUSP encodes with a 2-layer MLP)
    curvature: float = 1.0           # |κ| of the H and S factors (E is flat): the unit-radius spaces
    layers: int = 1                  # CUSP filters once, after an encoder; the K powers give K hops
    order: int = 3                   # K: powers Ã⁰..Ã^K per band; GPR-GNN uses 10 on large graphs, 3 suffices here
    bands: tuple[str, ...] = ("low", "high")   # at least a low- and a high-pass band (the paper's point)
    ppr_alpha: float = 0.3           # a in γ_k = a(±(1 − a))^k, the filters' starting point (GPR-GNN's range 0.1-0.9)
    clip: float = 1.0                # encoder vectors are clipped to this norm before exp₀ (Guo et al. 2022): keeps
    #                                  points off the ball's edge, where tanh saturates and gradients vanish
    ricci_alpha: float = 0.5         # idleness of the lazy walk behind the Ollivier–Ricci curvature (CUSP's value)
    cusp_laplacian: bool = True      # False: filter with the ordinary normalised adjacency (an ablation)

    def __post_init__(self) -> None:
        factors = ko.factor_curvatures(self.signature)      # ValueError naming a bad signature
        if len(factors) < 1:
            raise ValueError(f"signature must name at least one factor; got {self.signature!r}")
        if isinstance(self.curvature, bool) or not isinstance(self.curvature, (int, float)) or \
                not (math.isfinite(self.curvature) and self.curvature > 0):
            raise ValueError(f"curvature is the magnitude |κ| of the H and S factors and must be a positive finite "
                             f"number; got curvature={self.curvature!r}")
        for name, value, low in (("hidden", self.hidden, 1), ("layers", self.layers, 1), ("order", self.order, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {name}={value!r}")
        bands = tuple(self.bands) if isinstance(self.bands, (tuple, list)) else ()
        if not bands or len(set(bands)) != len(bands) or any(b not in BANDS for b in bands):
            raise ValueError(f"bands must be a non-empty tuple of distinct names from {BANDS}; "
                             f"got bands={self.bands!r}")
        object.__setattr__(self, "bands", bands)
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or \
                not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip is the largest norm of an encoder vector and must be a positive finite number; "
                             f"got clip={self.clip!r}")
        for name, value, lo_open in (("ppr_alpha", self.ppr_alpha, True), ("ricci_alpha", self.ricci_alpha, False)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (0.0 < value < 1.0 if lo_open else 0.0 <= value <= 1.0)
            if not ok:
                allowed = "(0, 1)" if lo_open else "[0, 1]"
                raise ValueError(f"{name} must lie in {allowed}; got {name}={value!r}")
        if not isinstance(self.cusp_laplacian, bool):
            raise ValueError(f"cusp_laplacian must be True or False; got {self.cusp_laplacian!r}")

    @property
    def factors(self) -> tuple[tuple[float, int], ...]:
        """(κ, n) per factor."""
        return ko.factor_curvatures(self.signature, [self.curvature] * len(ko.factor_curvatures(self.signature)))

    @property
    def dim(self) -> int:
        return sum(n for _, n in self.factors)


# ----------------------------------------------------------------------------- graph operators (pure math)

def cusp_edge_weights(kappa: np.ndarray) -> np.ndarray:
    r"""CUSP's edge weights :math:`\exp(-1/(1 - \tilde\kappa))` from Ollivier–Ricci curvatures in [−2, 1];
    0 at κ̃ = 1."""
    k = np.asarray(kappa, dtype=np.float64)
    if not np.isfinite(k).all() or (k > 1 + 1e-9).any() or (k < -2 - 1e-9).any():
        raise ValueError(f"Ollivier–Ricci curvatures lie in [−2, 1]; got values in [{k.min()}, {k.max()}]")
    gap = 1.0 - np.minimum(k, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(gap > 0, np.exp(-1.0 / np.where(gap > 0, gap, 1.0)), 0.0)


def normalized_adjacency(n: int, edges: np.ndarray, weights: np.ndarray | None = None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r""":math:`\tilde D^{-1/2}(W + I)\tilde D^{-1/2}`, (n, n), for undirected ``edges`` (E, 2) with ``weights`` (E,)
    (default 1: Kipf & Welling's operator)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    w = np.ones(len(e)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = np.zeros((n, n))
    np.add.at(a, (e[:, 0], e[:, 1]), w)
    np.add.at(a, (e[:, 1], e[:, 0]), w)
    a += np.eye(n)
    d = a.sum(1) ** -0.5
    return torch.as_tensor(d[:, None] * a * d[None, :], dtype=dtype)


def _edges(graph: nx.Graph) -> np.ndarray:
    index = {v: i for i, v in enumerate(graph.nodes)}
    return np.array([(index[x], index[y]) for x, y in graph.edges() if x != y], dtype=np.int64).reshape(-1, 2)


def gcn_operator(graph: nx.Graph, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Kipf & Welling's :math:`\\hat A = D^{-1/2}(A + I)D^{-1/2}` of ``graph`` (nodes in ``graph.nodes`` order)."""
    return normalized_adjacency(graph.number_of_nodes(), _edges(graph), dtype=dtype)


def cusp_operator(graph: nx.Graph, ricci_alpha: float = 0.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The curvature-weighted :math:`\\tilde A` (N, N) whose Laplacian :math:`I - \\tilde A` is the Cusp Laplacian."""
    edges, kappa = edge_curvatures(graph, ricci_alpha)
    return normalized_adjacency(graph.number_of_nodes(), edges, cusp_edge_weights(kappa), dtype=dtype)


def cusp_laplacian(graph: nx.Graph, ricci_alpha: float = 0.5) -> torch.Tensor:
    """The (normalised) Cusp Laplacian :math:`I - \\tilde A`, (N, N); its spectrum lies in [0, 2)."""
    a = cusp_operator(graph, ricci_alpha)
    return torch.eye(a.shape[0], dtype=a.dtype) - a


def filter_response(gamma: torch.Tensor | np.ndarray, lam: np.ndarray) -> np.ndarray:
    r"""Spectral response :math:`g(\lambda) = \sum_k \gamma_k (1 - \lambda)^k` of coefficients γ (..., K+1) at
    Laplacian eigenvalues λ → (..., len(λ)); the exact response of a band at κ = 0."""
    g = np.asarray(gamma.detach().cpu() if isinstance(gamma, torch.Tensor) else gamma, dtype=np.float64)
    powers = (1.0 - np.asarray(lam, dtype=np.float64))[None, :] ** np.arange(g.shape[-1])[:, None]   # (K+1, L)
    return g @ powers


def _initial_gamma(band: str, order: int, a: float) -> torch.Tensor:
    k = torch.arange(order + 1, dtype=torch.float64)
    if band == "low":
        return a * (1 - a) ** k
    if band == "high":
        return a * (a - 1) ** k
    return (k == 0).to(torch.float64)                         # "all": the identity


# ----------------------------------------------------------------------------- κ-GCN layer and the filter bank

class CuspFilter(nn.Module):
    r"""The bank of GPR filters of one layer, merged per factor (shapes: per factor (N, n_m) → (N, n_m)).

    Parameters: ``gamma`` (B, K + 1), one row per band; ``mix`` (M, B), per factor the logits of the
    softmax weights with which the bands' outputs are averaged (gyromidpoint).
    """

    def __init__(self, n_factors: int, *, order: int, bands: tuple[str, ...], ppr_alpha: float) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.gamma = nn.Parameter(torch.stack([_initial_gamma(b, order, ppr_alpha) for b in self.bands]))
        # one band: nothing to merge, so no mixing weights (they would count as parameters and never train)
        self.mix = nn.Parameter(torch.zeros(n_factors, len(self.bands), dtype=torch.float64)) \
            if len(self.bands) > 1 else None

    def forward(self, h: torch.Tensor, op: torch.Tensor, *, kappa: float, factor: int) -> torch.Tensor:
        gamma = self.gamma.to(h.dtype)
        powers = [h]                                           # (Ã ⊠)^k h, k = 0..K: (N, n) each
        for _ in range(gamma.shape[1] - 1):
            powers.append(ko.weighted_midpoint(powers[-1], op, kappa=kappa, lincomb=True))
        logs = torch.stack([ko.logmap0(q, kappa=kappa) for q in powers])         # (K+1, N, n)
        terms = ko.expmap0(gamma[:, :, None, None] * logs, kappa=kappa)          # γ_bk ⊗ (Ã⊠)^k h: (B, K+1, N, n)
        z = terms[:, 0]
        for k in range(1, terms.shape[1]):                                        # ⊕ over k, all bands at once
            z = ko.mobius_add(z, terms[:, k], kappa=kappa)                        # (B, N, n)
        if z.shape[0] == 1:
            return z[0]
        w = torch.softmax(self.mix[factor].to(h.dtype), dim=0).view(1, 1, -1)        # (1, 1, B)
        return ko.weighted_midpoint(z.transpose(0, 1), w, kappa=kappa).squeeze(-2)   # (N, B, n) → (N, n)


class KappaGCNLayer(nn.Module):
    r"""One κ-GCN layer on a product: :math:`\sigma_\kappa(\hat A \boxtimes_\kappa (H \otimes_\kappa W))` per factor,
    or, with a :class:`CuspFilter`, the filter bank in place of :math:`\hat A \boxtimes_\kappa`.

    ``weights[m]`` is factor m's (n_m, n_m) matrix (no bias, as in Bachmann et al. and manify). ``activation``
    False leaves σ out (CUSP's last layer, read by the classifier, like the last layer of a GCN).
    Input and output (N, Σ n_m), the factors' κ-stereographic coordinates side by side.
    """

    def __init__(self, factors: tuple[tuple[float, int], ...], *, filter: CuspFilter | None = None,
                 activation: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.factors = tuple((ko.check_kappa(k), int(n)) for k, n in factors)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.eye(n, dtype=torch.float64)
                          + 0.1 * torch.randn(n, n, generator=generator, dtype=torch.float64))
             for _, n in self.factors])
        self.filter = filter

    def split(self, h: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(h, [n for _, n in self.factors], dim=-1))

    def forward(self, h: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        outs = []
        for m, ((k, _), part, w) in enumerate(zip(self.factors, self.split(h), self.weights, strict=True)):
            xw = ko.mobius_matvec(w.to(h.dtype), part, kappa=k)
            if self.filter is None:
                agg = ko.weighted_midpoint(xw, op, kappa=k, lincomb=True)
            else:
                agg = self.filter(xw, op, kappa=k, factor=m)
            outs.append(ko.expmap0(torch.relu(ko.logmap0(agg, kappa=k)), kappa=k) if self.activation else agg)
        return torch.cat(outs, dim=-1)


class CuspGNN(nn.Module):
    """CUSP: encoder MLP → κ-GCN layers with the curvature-aware filter bank → tangent vectors at 0 → classifier.

    ``forward(x, op)``: x (N, F) node features, op (N, N) the operator from :func:`cusp_operator` (or
    :func:`gcn_operator` when ``config.cusp_laplacian`` is False) → logits (N, C).
    """

    def __init__(self, config: CuspConfig, in_features: int, n_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")
        self.config = config
        self.factors = config.factors
        gen = torch.Generator().manual_seed(seed)
        d = config.dim
        self.encoder = nn.Sequential(_linear(in_features, config.hidden, gen), nn.ReLU(),
                                     _linear(config.hidden, d, gen))
        self.layers = nn.ModuleList([
            KappaGCNLayer(self.factors, generator=gen, activation=i < config.layers - 1,
                          filter=CuspFilter(len(self.factors), order=config.order, bands=config.bands,
                                            ppr_alpha=config.ppr_alpha))
            for i in range(config.layers)])
        self.classifier = _linear(d, n_classes, gen)

    def embed(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        """Node embeddings on the product, (N, Σ n_m) in κ-stereographic coordinates."""
        u = self.encoder(x.to(torch.float64))
        clip = self.config.clip
        parts = torch.split(u, [n for _, n in self.factors], dim=-1)
        h = torch.cat([ko.expmap0(p * (clip / p.norm(dim=-1, keepdim=True).clamp_min(clip)), kappa=k)
                       for (k, _), p in zip(self.factors, parts, strict=True)], dim=-1)
        for layer in self.layers:
            h = layer(h, op)
        return h

    def forward(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        h = self.embed(x, op)
        tangent = torch.cat([ko.logmap0(p, kappa=k) for (k, _), p in
                             zip(self.factors, torch.split(h, [n for _, n in self.factors], dim=-1), strict=True)],
                            dim=-1)
        return self.classifier(torch.nn.functional.normalize(tangent, dim=-1))   # unit norm, as CUSP's readout


# ----------------------------------------------------------------------------- the Euclidean twin

class EuclideanGCN(nn.Module):
    r"""Kipf & Welling's GCN: encoder, graph convolutions :math:`H \mapsto \mathrm{ReLU}(\hat A H W + b)`, classifier.

    ``widths`` = (encoder width, width after each convolution). ``forward(x, op)``: (N, F), (N, N) → (N, C).
    """

    def __init__(self, in_features: int, widths: tuple[int, ...], n_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be >= 2 positive integers (encoder, then one per convolution); got {widths}")
        gen = torch.Generator().manual_seed(seed)
        self.widths = tuple(widths)
        self.encoder = _linear(in_features, widths[0], gen)
        self.convs = nn.ModuleList([_linear(a, b, gen) for a, b in itertools.pairwise(widths)])
        self.classifier = _linear(widths[-1], n_classes, gen)

    def forward(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x.to(torch.float64))
        for conv in self.convs:
            h = torch.relu(op @ conv(h))                       # Â (H W + 1 bᵀ): the bias enters before Â
        return self.classifier(h)


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    """nn.Linear in float64 with PyTorch's default init, drawn from ``gen`` (no global RNG touched)."""
    lin = torch.nn.utils.skip_init(nn.Linear, n_in, n_out, dtype=torch.float64)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        lin.weight.copy_(torch.empty(n_out, n_in, dtype=torch.float64).uniform_(-bound, bound, generator=gen))
        lin.bias.copy_(torch.empty(n_out, dtype=torch.float64).uniform_(-bound, bound, generator=gen))
    return lin


def count_params(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _gcn_count(in_features: int, widths: tuple[int, ...], n_classes: int) -> int:
    total = in_features * widths[0] + widths[0]
    for a, b in itertools.pairwise(widths):
        total += a * b + b
    return total + widths[-1] * n_classes + n_classes


def twin_widths(target: int, in_features: int, n_classes: int, *, layers: int, width: int) -> tuple[int, ...]:
    """GCN widths (encoder, one per convolution) whose parameter count is exactly ``target``, closest to ``width``.

    All widths but the last are searched in [1, 3·width]; the last is then solved for (the count is linear in
    it). Among exact solutions the one with the smallest largest |w − width| wins (ties: the earliest).
    ValueError when none exists in that range.
    """
    best, best_key = None, None
    span = range(1, 3 * width + 1)
    for head in _grid(span, layers):                            # widths[:-1]
        fixed = _gcn_count(in_features, (*head, 1), n_classes) - (head[-1] + 1 + n_classes)
        slope = head[-1] + 1 + n_classes                        # each unit of the last width: its column, bias, row
        rest = target - fixed
        if rest < slope or rest % slope:
            continue
        widths = (*head, rest // slope)
        key = max(abs(w - width) for w in widths)
        if best_key is None or key < best_key:
            best, best_key = widths, key
    if best is None:
        raise ValueError(f"no GCN with {layers} convolution(s) and widths in [1, {3 * width}] has exactly {target} "
                         f"parameters for {in_features} features and {n_classes} classes; change the CUSP config")
    return best


def _grid(span: range, depth: int):
    if depth == 0:
        yield ()
        return
    for w in span:
        for rest in _grid(span, depth - 1):
            yield (w, *rest)


def euclidean_twin(model: CuspGNN, *, convolutions: int = 2, seed: int = 0) -> EuclideanGCN:
    """The GCN with exactly ``model``'s number of parameters (widths by :func:`twin_widths`).

    ``convolutions`` defaults to Kipf & Welling's two, whatever CUSP's depth: each model gets its usual depth.
    """
    in_features, n_classes = model.encoder[0].in_features, model.classifier.out_features
    widths = twin_widths(count_params(model), in_features, n_classes,
                         layers=convolutions, width=model.config.dim)
    return EuclideanGCN(in_features, widths, n_classes, seed=seed)
