"""Measurements on the routing and weights of any MoE model.

* :mod:`.routing` — streaming, mergeable routing statistics (:class:`RoutingStats`);
* :mod:`.weights` — router-centroid and expert-subspace geometry streamed from safetensors;
* :mod:`.analyze` — the ``moescope analyze`` / ``compare`` pipelines.
"""

from moescope.analysis.routing import RoutingStats, topk_overlap

__all__ = ["RoutingStats", "topk_overlap"]
