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
