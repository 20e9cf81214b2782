"""pvae: variational inference answers for deep latent-variable Pyro programs."""

from . import causal, chem, data, infer, inputs, models
from .infer import FitResult, TrainingDivergedError, fit
from .inputs import DataError, DataTypeError
from .models import VAE, ModelGuidePair

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "DataError",
    "DataTypeError",
    "FitResult",
    "ModelGuidePair",
    "TrainingDivergedError",
    "__version__",
    "causal",
    "chem",
    "data",
    "fit",
    "infer",
    "inputs",
    "models",
]

# ArviZ export (issue 7)
from .infer import to_inference_data  # noqa: E402

__all__ += ["to_inference_data"]
