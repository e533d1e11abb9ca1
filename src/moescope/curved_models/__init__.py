"""The lecture's curvature systems, small and faithful, each against a Euclidean twin of equal parameters.

One file per system, built on :mod:`moescope.geometry.curved` (and on :mod:`moescope.moe`'s routers
where a system routes); the lab's claims 17–21 train and judge them:

* :mod:`.product_forest` — product-space decision trees and random forests (Chlenski et al., ICML 2025);
* :mod:`.mice` — mixture-of-curvature experts (HELM-MiCE, 2025);
* :mod:`.hyplora` — HypLoRA, low-rank adaptation on the hyperboloid (Yang et al. 2024);
* :mod:`.hvt` — a hyperbolic vision transformer in the Poincaré ball (Fein-Ashley et al. 2024);
* :mod:`.cusp` — a spectro-Riemannian GNN with curvature-aware filters (CUSP, ICLR 2025).
"""

from moescope.curved_models import cusp, hvt, hyplora, mice, product_forest
from moescope.curved_models.cusp import CuspConfig, CuspGNN
from moescope.curved_models.hvt import EuclideanViT, HVTConfig, HyperbolicViT
from moescope.curved_models.hyplora import HypLoRAConfig, apply_hyplora, apply_lora
from moescope.curved_models.mice import MiCEConfig, MiCELayer
from moescope.curved_models.product_forest import ProductSpaceDecisionTree, ProductSpaceRandomForest

__all__ = ["CuspConfig", "CuspGNN", "EuclideanViT", "HVTConfig", "HypLoRAConfig", "HyperbolicViT", "MiCEConfig",
           "MiCELayer", "ProductSpaceDecisionTree", "ProductSpaceRandomForest", "apply_hyplora", "apply_lora", "cusp",
           "hvt", "hyplora", "mice", "product_forest"]
