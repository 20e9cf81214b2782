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

# training objectives: importance-weighted bounds, DReG / STL estimators (issue 3)
from .objectives import IWAEObjective, detach_distribution  # noqa: E402

__all__ += ["IWAEObjective", "detach_distribution"]

# evaluation bounds: per-datum ELBO terms, IWAE bounds, log-evidence (issue 3)
from .bounds import BoundEstimate, EvidenceEstimate, iwae_bound, log_evidence  # noqa: E402
from .elbo import ElboTerms, elbo, elbo_terms  # noqa: E402

__all__ += ["BoundEstimate", "ElboTerms", "EvidenceEstimate", "elbo", "elbo_terms", "iwae_bound", "log_evidence"]

# amortisation gap and semi-amortised refinement (issue 4)
from .amortization import GapReport, RefinementResult, amortization_gap, refine  # noqa: E402

__all__ += ["GapReport", "RefinementResult", "amortization_gap", "refine"]

# posterior-collapse diagnostics, ArviZ export, PSIS k-hat (issue 7)
from .arviz_export import PsisDiagnostics, psis_diagnostics, to_inference_data  # noqa: E402
from .diagnostics import (  # noqa: E402
    CollapseReport,
    PosteriorCollapseWarning,
    active_units,
    collapse_diagnostics,
    collapse_summary,
    kl_per_dim,
    latent_activity,
    mutual_information,
)

__all__ += [
    "CollapseReport",
    "PosteriorCollapseWarning",
    "PsisDiagnostics",
    "active_units",
    "collapse_diagnostics",
    "collapse_summary",
    "kl_per_dim",
    "latent_activity",
    "mutual_information",
    "psis_diagnostics",
    "to_inference_data",
]

# exact enumeration of discrete latents: TraceEnum_ELBO as an objective (issue 6)
from .objectives import EnumElboObjective  # noqa: E402

__all__ += ["EnumElboObjective"]
