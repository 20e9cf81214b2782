"""Error metrics for estimated treatment effects against a known truth.

Both need the true individual effects, which only (semi-)synthetic data
provide (IHDP's ``mu1 - mu0``; a simulator's known mechanism).

.. math::

    \\sqrt{\\epsilon_{\\mathrm{PEHE}}} = \\sqrt{\\frac1n \\sum_{i=1}^n
        \\big(\\hat\\tau_i - \\tau_i\\big)^2},
    \\qquad
    \\epsilon_{\\mathrm{ATE}} = \\Big|\\frac1n \\sum_{i=1}^n \\hat\\tau_i
        - \\frac1n \\sum_{i=1}^n \\tau_i\\Big| .

References

1. J. L. Hill. Bayesian Nonparametric Modeling for Causal Inference. Journal
   of Computational and Graphical Statistics 20(1), 2011 (PEHE).
2. C. Louizos et al. Causal Effect Inference with Deep Latent-Variable Models.
   NeurIPS 2017 (the IHDP protocol reporting both metrics).
"""

from __future__ import annotations

from typing import Any

import torch

from ..inputs import as_data

__all__ = ["ate_error", "sqrt_pehe"]


def _as_vector(value: Any, name: str) -> torch.Tensor:
    if hasattr(value, "mean") and hasattr(value, "lower") and hasattr(value, "upper"):
        value = value.mean  # an EffectEstimate
    value = as_data(value, name, dtype=torch.float64).detach()
    if value.dim() == 2 and value.shape[-1] == 1:
        value = value.squeeze(-1)
    if value.dim() != 1 or value.numel() == 0:
        raise ValueError(f"{name} must hold one effect per unit, shape (n,), got {tuple(value.shape)}.")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(value)).sum())} NaN or infinite entries.")
    return value


def _pair(estimate: Any, truth: Any) -> tuple[torch.Tensor, torch.Tensor]:
    est, true = _as_vector(estimate, "estimate"), _as_vector(truth, "truth")
    if est.shape != true.shape:
        raise ValueError(
            f"estimate and truth must have the same length: got {est.shape[0]} and {true.shape[0]}. "
            "Try evaluating the estimate on the same units as the truth."
        )
    return est, true


def sqrt_pehe(estimate: Any, truth: Any) -> float:
    """Root of the precision in estimating heterogeneous effects (Hill 2011).

    :param estimate: estimated individual effects, shape ``(n,)`` (a tensor,
        array, or an :class:`~pvae.causal.EffectEstimate`).
    :param truth: true individual effects, shape ``(n,)``.
    :returns: :math:`\\sqrt{\\mathrm{mean}_i (\\hat\\tau_i - \\tau_i)^2}`.
    """
    est, true = _pair(estimate, truth)
    return float(((est - true) ** 2).mean().sqrt())


def ate_error(estimate: Any, truth: Any) -> float:
    """Absolute error of the average effect over the units given.

    :param estimate: estimated individual effects, shape ``(n,)``.
    :param truth: true individual effects, shape ``(n,)``.
    :returns: :math:`|\\mathrm{mean}_i \\hat\\tau_i - \\mathrm{mean}_i \\tau_i|`.
    """
    est, true = _pair(estimate, truth)
    return float((est.mean() - true.mean()).abs())
