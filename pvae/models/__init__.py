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
