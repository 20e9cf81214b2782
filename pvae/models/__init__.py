"""Pyro programs: generative models with their guides. No losses, no loops.

Every model registers itself in the zoo (:func:`get_model`, :func:`list_models`);
the oracles (exact evidence and posteriors, for tests and tutorials) do not.
"""

from .base import DATA_PLATE, LATENT_SITE, OBS_SITE, ModelGuidePair, Program, as_program
from .ar1 import AR1Normal
from .likelihoods import LIKELIHOODS, Likelihood, SupportError, make_likelihood
from .nets import NormalHead, mlp
from .registry import Example, ModelEntry, get_model, list_models, model_entry, register_model
from .vae import VAE
from .cvae import ConditionalVAE
from .counts import CountVAE
from .crystal import CrystalVAE
from .denoising import DenoisingVAE
from .linear import LinearVAE, PPCASolution, ppca, principal_angles
from .multimodal import MultimodalVAE
from .profile import SiteIndependentModel
from .oracles import BetaBernoulliCoin, LinearGaussian
from .relaxed import GumbelSoftmaxCategorical, RelaxedCategoricalVAE, categorical_kl
from .sequence import AutoregressiveCategorical, GRUSequenceDecoder, SequenceLogits, SequenceVAE
from .sequential import SequentialVAE
from .ssvae import SemiSupervisedVAE
from .structures import (
    cartesian_from_internal,
    closest_contact,
    internal_coordinates,
    lattice_coordinates,
    lattice_from_coordinates,
    lattice_from_raw,
    lattice_parameters,
    minimum_image_distance,
    reduced_lattice_coordinates,
    shortest_lattice_vector,
)

__all__ = [
    "DATA_PLATE",
    "LATENT_SITE",
    "LIKELIHOODS",
    "OBS_SITE",
    "AR1Normal",
    "VAE",
    "AutoregressiveCategorical",
    "BetaBernoulliCoin",
    "ConditionalVAE",
    "CountVAE",
    "CrystalVAE",
    "DenoisingVAE",
    "Example",
    "GRUSequenceDecoder",
    "GumbelSoftmaxCategorical",
    "Likelihood",
    "LinearGaussian",
    "LinearVAE",
    "ModelEntry",
    "ModelGuidePair",
    "MultimodalVAE",
    "NormalHead",
    "PPCASolution",
    "Program",
    "RelaxedCategoricalVAE",
    "SemiSupervisedVAE",
    "SequenceLogits",
    "SequenceVAE",
    "SequentialVAE",
    "SiteIndependentModel",
    "SupportError",
    "as_program",
    "cartesian_from_internal",
    "categorical_kl",
    "closest_contact",
    "get_model",
    "internal_coordinates",
    "lattice_coordinates",
    "lattice_from_coordinates",
    "lattice_from_raw",
    "lattice_parameters",
    "list_models",
    "make_likelihood",
    "mlp",
    "minimum_image_distance",
    "model_entry",
    "ppca",
    "principal_angles",
    "reduced_lattice_coordinates",
    "register_model",
    "shortest_lattice_vector",
]
