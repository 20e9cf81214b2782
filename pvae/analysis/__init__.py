"""Analysis of fitted programs: reads results and programs, never trains.

Figures (:mod:`pvae.analysis.figures`) write one PNG each and return its path.
"""

from .figures import (
    plot_image,
    plot_latent_map,
    plot_reconstructions,
    plot_samples,
    plot_training_curves,
)

__all__ = [
    "plot_image",
    "plot_latent_map",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
]

# calibrated anomaly scores and Pearson residuals (issue 7)
from .anomaly import AnomalyDetector, anomaly_scores, pearson_residuals  # noqa: E402

__all__ += ["AnomalyDetector", "anomaly_scores", "pearson_residuals"]

# latent tools, decoder geometry, inverse problems (issue 7, items 4-6)
from .figures import plot_geodesics, plot_image_rows, plot_interpolation, plot_traversal  # noqa: E402
from .geometry import (  # noqa: E402
    GeodesicResult,
    curve_length,
    geodesic_dijkstra,
    geodesic_optimize,
    magnification_factor,
    pullback_metric,
)
from .inverse import GaussianPosterior, InverseSolution, linear_gaussian_posterior_mean, solve_inverse  # noqa: E402
from .latent import (  # noqa: E402
    decoder_mean,
    encode_mean,
    interpolate,
    interpolate_latent,
    latent_arithmetic,
    prototype,
    traverse,
)

__all__ += [
    "GaussianPosterior",
    "GeodesicResult",
    "InverseSolution",
    "curve_length",
    "decoder_mean",
    "encode_mean",
    "geodesic_dijkstra",
    "geodesic_optimize",
    "interpolate",
    "interpolate_latent",
    "latent_arithmetic",
    "linear_gaussian_posterior_mean",
    "magnification_factor",
    "plot_geodesics",
    "plot_image_rows",
    "plot_interpolation",
    "plot_traversal",
    "prototype",
    "pullback_metric",
    "solve_inverse",
    "traverse",
]
