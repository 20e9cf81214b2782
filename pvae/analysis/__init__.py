"""Analysis of fitted programs: reads results and programs, never trains.

Anomaly scores with calibration, latent-space tools (traversals, interpolation,
prototype, arithmetic), decoder geometry (pullback metric, geodesics), inverse
problems with a VAE prior, oracle-guided design in the latent space, mutation
effects of protein variants and a validity filter for generated sequences,
disentanglement against known factors (MIG, DCI),
batch-integration measures of embeddings (batch mixing, batch and cell-type
ASW, kNN accuracy), and figures (each writes one PNG and returns its path).
"""

from .anomaly import AnomalyDetector, anomaly_scores, pearson_residuals
from .design import LatentDesignResult, LatentPredictor, fit_latent_predictor, latent_optimize
from .disentanglement import (
    DCIScores,
    DisentanglementResult,
    dci,
    disentanglement,
    mutual_information_gap,
)
from .figures import (
    draw_image_grid,
    plot_geodesics,
    plot_image,
    plot_image_rows,
    plot_interpolation,
    plot_latent_map,
    plot_reconstructions,
    plot_samples,
    plot_training_curves,
    plot_traversal,
)
from .geometry import (
    GeodesicResult,
    curve_length,
    geodesic_dijkstra,
    geodesic_optimize,
    magnification_factor,
    pullback_metric,
)
from .integration import (
    IntegrationMetrics,
    batch_asw,
    batch_mixing_entropy,
    cell_type_asw,
    integration_metrics,
    knn_accuracy,
)
from .inverse import GaussianPosterior, InverseSolution, linear_gaussian_posterior_mean, solve_inverse
from .mutations import MutationEffects, mutation_effects, parse_mutations
from .sequences import (
    HYDROPHOBIC,
    CompositionRule,
    FilterResult,
    IdentityRule,
    MotifRule,
    SequenceFilter,
    SequenceRule,
)
from .latent import (
    decoder_mean,
    encode_mean,
    interpolate,
    interpolate_latent,
    latent_arithmetic,
    prototype,
    traverse,
)

__all__ = [
    "HYDROPHOBIC",
    "CompositionRule",
    "FilterResult",
    "IdentityRule",
    "MotifRule",
    "MutationEffects",
    "SequenceFilter",
    "SequenceRule",
    "mutation_effects",
    "parse_mutations",
    "AnomalyDetector",
    "DCIScores",
    "DisentanglementResult",
    "dci",
    "disentanglement",
    "mutual_information_gap",
    "LatentDesignResult",
    "LatentPredictor",
    "fit_latent_predictor",
    "latent_optimize",
    "GaussianPosterior",
    "GeodesicResult",
    "IntegrationMetrics",
    "InverseSolution",
    "batch_asw",
    "batch_mixing_entropy",
    "cell_type_asw",
    "integration_metrics",
    "knn_accuracy",
    "anomaly_scores",
    "curve_length",
    "decoder_mean",
    "draw_image_grid",
    "encode_mean",
    "geodesic_dijkstra",
    "geodesic_optimize",
    "interpolate",
    "interpolate_latent",
    "latent_arithmetic",
    "linear_gaussian_posterior_mean",
    "magnification_factor",
    "pearson_residuals",
    "plot_geodesics",
    "plot_image",
    "plot_image_rows",
    "plot_interpolation",
    "plot_latent_map",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
    "plot_traversal",
    "prototype",
    "pullback_metric",
    "solve_inverse",
    "traverse",
]
