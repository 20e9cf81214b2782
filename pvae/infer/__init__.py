"""Inference for any Pyro program: traces, bounds, objectives, training."""

from .objectives import ElboObjective, Objective, StepTerms, make_objective
from .traces import SiteLogProbs, site_log_probs
from .train import CheckpointError, FitResult, TrainingDivergedError, fit, load_checkpoint

__all__ = [
    "CheckpointError",
    "ElboObjective",
    "FitResult",
    "Objective",
    "SiteLogProbs",
    "StepTerms",
    "TrainingDivergedError",
    "fit",
    "load_checkpoint",
    "make_objective",
    "site_log_probs",
]
