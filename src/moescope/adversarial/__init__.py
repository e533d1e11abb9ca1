"""Adversarial examples and the geometry behind them: the "terror" side of the lecture.

Attacks in the style of torchattacks / Foolbox / CleverHans, as functions and as objects:
:func:`fgsm` / :class:`FGSM`, :func:`fgm` / :class:`FGM`, :func:`pgd` / :class:`PGD` /
:class:`PGDL2`, :func:`deepfool` / :class:`DeepFool`; and the measured geometry that makes
them easy in high dimension: distances to the boundary along adversarial vs random
directions against the exact sphere law (:mod:`.boundary`), the linearity law
(:mod:`.linearity`) and Gilmer et al.'s adversarial spheres (:mod:`.spheres`).
"""

from moescope.adversarial.attacks import (
    FGM,
    FGSM,
    PGD,
    PGDL2,
    AttackSummary,
    evaluate_attack,
    fgm,
    fgsm,
    pgd,
    random_noise,
)
from moescope.adversarial.boundary import (
    BoundaryDistances,
    first_flip,
    line_distance,
    linear_ratio_sweep,
    measure_boundary,
    minimal_fast_gradient,
    random_ratio_cdf,
    random_ratio_quantile,
)
from moescope.adversarial.deepfool import DeepFool, DeepFoolResult, deepfool, deepfool_search, l2_fraction
from moescope.adversarial.linearity import linearity_sweep, score_shift

__all__ = [
    "FGM", "FGSM", "PGD", "PGDL2", "AttackSummary", "BoundaryDistances", "DeepFool", "DeepFoolResult",
    "deepfool", "deepfool_search", "evaluate_attack", "fgm", "fgsm", "first_flip", "l2_fraction",
    "line_distance", "linear_ratio_sweep", "linearity_sweep", "measure_boundary", "minimal_fast_gradient",
    "pgd", "random_noise", "random_ratio_cdf", "random_ratio_quantile", "score_shift",
]
