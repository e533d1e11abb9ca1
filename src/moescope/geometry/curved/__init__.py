"""Curved spaces: hyperbolic (Poincaré ball, Lorentz), spherical, Euclidean and their products.

Pure math in modules (:mod:`.poincare`, :mod:`.lorentz`, :mod:`.spherical`), thin classes on
top (:class:`PoincareBall`, :class:`Lorentz`, :class:`Sphere`, :class:`Euclidean`,
:class:`ProductManifold`). Built on them: Riemannian SGD and Adam (:mod:`.optim`), Sarkar's
tree embedding and its precision (:mod:`.sarkar`), Gu et al.'s distortion-minimising
embeddings (:mod:`.embedding`), the discrete curvature of a graph (:mod:`.graph_curvature`), the
Ollivier–Ricci curvature of its edges (:mod:`.ricci`), Gromov's δ-hyperbolicity of a point cloud
(:mod:`.hyperbolicity`), κ-stereographic operations for any sign of curvature (:mod:`.kappa_ops`), the
Poincaré-ball layers' math (Möbius matvec, Einstein midpoint, hyperbolic MLR: :mod:`.poincare_layers`),
and the per-dtype numerics everything shares (:mod:`._numerics`).
"""

from moescope.geometry.curved import hyperbolicity, kappa_ops, lorentz, poincare, poincare_layers, ricci, spherical
from moescope.geometry.curved._numerics import BALL_MARGIN, MAX_DIST0, UNIT_ROUNDOFF
from moescope.geometry.curved.distortion import (
    average_distortion,
    distortion_loss,
    graph_distances,
    worst_case_distortion,
)
from moescope.geometry.curved.embedding import EmbeddingConfig, EmbeddingResult, embed_graph
from moescope.geometry.curved.euclidean import Euclidean
from moescope.geometry.curved.graph_curvature import curvature_estimates, suggest_signature
from moescope.geometry.curved.graphs import STANDARD_GRAPHS, ring_of_trees, standard_graph
from moescope.geometry.curved.lorentz import Lorentz
from moescope.geometry.curved.optim import RiemannianAdam, RiemannianSGD
from moescope.geometry.curved.poincare import PoincareBall
from moescope.geometry.curved.product import ProductManifold, format_signature, parse_signature
from moescope.geometry.curved.sarkar import precision_sweep, sarkar_embedding, sarkar_tau
from moescope.geometry.curved.spherical import Sphere

__all__ = [
    "BALL_MARGIN",
    "MAX_DIST0",
    "STANDARD_GRAPHS",
    "UNIT_ROUNDOFF",
    "EmbeddingConfig",
    "EmbeddingResult",
    "Euclidean",
    "Lorentz",
    "PoincareBall",
    "ProductManifold",
    "RiemannianAdam",
    "RiemannianSGD",
    "Sphere",
    "average_distortion",
    "curvature_estimates",
    "distortion_loss",
    "embed_graph",
    "format_signature",
    "graph_distances",
    "hyperbolicity",
    "kappa_ops",
    "lorentz",
    "parse_signature",
    "poincare",
    "poincare_layers",
    "precision_sweep",
    "ricci",
    "ring_of_trees",
    "sarkar_embedding",
    "sarkar_tau",
    "spherical",
    "standard_graph",
    "suggest_signature",
    "worst_case_distortion",
]
