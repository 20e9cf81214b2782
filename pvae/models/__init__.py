"""Pyro programs: generative models with their guides. No losses, no loops."""

from .base import DATA_PLATE, LATENT_SITE, OBS_SITE, ModelGuidePair, Program, as_program
from .likelihoods import LIKELIHOODS, Likelihood, SupportError, make_likelihood
from .nets import NormalHead, mlp
from .vae import VAE

__all__ = [
    "DATA_PLATE",
    "LATENT_SITE",
    "LIKELIHOODS",
    "OBS_SITE",
    "VAE",
    "Likelihood",
    "ModelGuidePair",
    "NormalHead",
    "Program",
    "SupportError",
    "as_program",
    "make_likelihood",
    "mlp",
]

# oracles: programs with exact evidence and posterior (issue 3)
from .oracles import BetaBernoulliCoin, LinearGaussian  # noqa: E402

__all__ += ["BetaBernoulliCoin", "LinearGaussian"]

# the model zoo: a registry and the program variants (issue 6)
from .registry import Example, ModelEntry, get_model, list_models, model_entry, register_model  # noqa: E402
from .cvae import ConditionalVAE  # noqa: E402
from .denoising import DenoisingVAE  # noqa: E402
from .linear import LinearVAE, PPCASolution, ppca, principal_angles  # noqa: E402
from .multimodal import MultimodalVAE  # noqa: E402

__all__ += [
    "ConditionalVAE",
    "DenoisingVAE",
    "Example",
    "LinearVAE",
    "ModelEntry",
    "MultimodalVAE",
    "PPCASolution",
    "get_model",
    "list_models",
    "model_entry",
    "ppca",
    "principal_angles",
    "register_model",
]

# the model zoo, part two: semi-supervised, relaxed-discrete and sequential programs (issue 6)
from .relaxed import GumbelSoftmaxCategorical, RelaxedCategoricalVAE, categorical_kl  # noqa: E402
from .sequential import SequentialVAE  # noqa: E402
from .ssvae import SemiSupervisedVAE  # noqa: E402

__all__ += ["GumbelSoftmaxCategorical", "RelaxedCategoricalVAE", "SemiSupervisedVAE", "SequentialVAE",
            "categorical_kl"]
