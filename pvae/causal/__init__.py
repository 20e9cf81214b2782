"""Causal effects: the CEVAE program, do-queries on any fitted Pyro program, and refutation checks."""

from ..data.synthetic import hidden_confounder_data
from .cevae import CEVAE, CEVAEObjective
from .metrics import ate_error, sqrt_pehe
from .queries import EffectEstimate, SiteError, ate, cate, ite, potential_outcomes
from .refute import REFUTERS, RefutationResult, refute

__all__ = [
    "CEVAE",
    "CEVAEObjective",
    "EffectEstimate",
    "REFUTERS",
    "RefutationResult",
    "SiteError",
    "ate",
    "ate_error",
    "cate",
    "hidden_confounder_data",
    "ite",
    "potential_outcomes",
    "refute",
    "sqrt_pehe",
]
