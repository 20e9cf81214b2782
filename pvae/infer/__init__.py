"""Inference for any Pyro program: the per-site seam, bounds, objectives,
training, the amortisation gap, collapse diagnostics and ArviZ export."""

from .amortization import GapReport, RefinementResult, amortization_gap, refine
from .arviz_export import PsisDiagnostics, psis_diagnostics, to_inference_data
from .bounds import BoundEstimate, EvidenceEstimate, iwae_bound, log_evidence
from .callbacks import LearningRateSchedule
from .capture import CapturedFunction, CapturedStep, CaptureWarning, TrainStep, is_capturing, make_train_step
from .engine import Callback, NonFiniteParametersError, TrainState
from .diagnostics import (
    CollapseReport,
    PosteriorCollapseWarning,
    active_units,
    collapse_diagnostics,
    collapse_summary,
    kl_per_dim,
    latent_activity,
    mutual_information,
)
from .elbo import ElboTerms, elbo, elbo_terms
from .objectives import (
    ElboObjective,
    EnumElboObjective,
    IWAEObjective,
    Objective,
    StepTerms,
    detach_distribution,
    make_objective,
    register_objective,
)
from .traces import SiteLogProbs, pin_subsample, site_log_probs
from .train import CheckpointError, FitResult, TrainingDivergedError, fit, load_checkpoint

__all__ = [
    "BoundEstimate",
    "Callback",
    "CaptureWarning",
    "CapturedFunction",
    "CapturedStep",
    "CheckpointError",
    "CollapseReport",
    "ElboObjective",
    "ElboTerms",
    "EnumElboObjective",
    "EvidenceEstimate",
    "FitResult",
    "GapReport",
    "IWAEObjective",
    "LearningRateSchedule",
    "NonFiniteParametersError",
    "Objective",
    "PosteriorCollapseWarning",
    "PsisDiagnostics",
    "RefinementResult",
    "SiteLogProbs",
    "StepTerms",
    "TrainState",
    "TrainStep",
    "TrainingDivergedError",
    "active_units",
    "amortization_gap",
    "collapse_diagnostics",
    "collapse_summary",
    "detach_distribution",
    "elbo",
    "elbo_terms",
    "fit",
    "is_capturing",
    "iwae_bound",
    "kl_per_dim",
    "latent_activity",
    "load_checkpoint",
    "log_evidence",
    "make_objective",
    "register_objective",
    "make_train_step",
    "mutual_information",
    "pin_subsample",
    "psis_diagnostics",
    "refine",
    "site_log_probs",
    "to_inference_data",
]
