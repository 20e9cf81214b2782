"""Causal effects: the CEVAE program and do-queries on any fitted Pyro program."""

from ..data.synthetic import hidden_confounder_data
from .cevae import CEVAE, CEVAEObjective
from .metrics import ate_error, sqrt_pehe
from .queries import EffectEstimate, SiteError, ate, cate, ite, potential_outcomes

__all__ = [
    "CEVAE",
    "CEVAEObjective",
    "EffectEstimate",
    "SiteError",
    "ate",
    "ate_error",
    "cate",
    "hidden_confounder_data",
    "ite",
    "potential_outcomes",
    "sqrt_pehe",
]
