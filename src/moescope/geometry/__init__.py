"""Pure geometry of high-dimensional spaces: exact laws, no models.

Sphere coordinate laws (:mod:`.sphere`), distances (:mod:`.distance`), ball and Gaussian
shells (:mod:`.ball`), and subspace angles with their random null (:mod:`.subspace`).
"""

from moescope.geometry.ball import gaussian_annulus_mass, gaussian_norm_cdf, gaussian_norm_mean, shell_mass
from moescope.geometry.distance import (
    distance_cdf,
    distance_mean,
    distance_pdf,
    distance_quantile,
    distance_std,
    relative_contrast,
    relative_contrast_mc,
    relative_contrast_prediction,
)
from moescope.geometry.sphere import (
    band_mass,
    band_quantile,
    cap_mass,
    coordinate_cdf,
    coordinate_logpdf,
    coordinate_pdf,
    coordinate_std,
    log_band_mass,
    log_cap_mass,
    log_near_orthogonal_capacity,
    log_subgaussian_capacity,
    near_orthogonal_capacity,
    sample_sphere,
    welch_capacity,
)
from moescope.geometry.subspace import (
    grassmann_distance,
    mean_cos2,
    orthonormal_basis,
    principal_angles,
    projection_distance,
    random_overlap_mean,
    random_overlap_var,
    random_subspace,
    wachter_atom,
    wachter_cdf,
    wachter_pdf,
    wachter_support,
)

__all__ = [
    "band_mass", "band_quantile", "cap_mass", "coordinate_cdf", "coordinate_logpdf", "coordinate_pdf", "coordinate_std",
    "distance_cdf", "distance_mean", "distance_pdf", "distance_quantile", "distance_std",
    "gaussian_annulus_mass", "gaussian_norm_cdf", "gaussian_norm_mean", "grassmann_distance",
    "log_band_mass", "log_cap_mass", "log_near_orthogonal_capacity", "log_subgaussian_capacity",
    "mean_cos2", "near_orthogonal_capacity", "orthonormal_basis", "principal_angles",
    "projection_distance", "random_overlap_mean", "random_overlap_var", "random_subspace",
    "relative_contrast", "relative_contrast_mc", "relative_contrast_prediction", "sample_sphere",
    "shell_mass", "wachter_atom", "wachter_cdf", "wachter_pdf", "wachter_support", "welch_capacity",
]
