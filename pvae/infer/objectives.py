"""Training objectives: the only place where a bound becomes a loss.

An objective maps a program and a batch to :class:`StepTerms`: the loss to
minimise and, for the trainer's history, the batch totals of the ELBO, the
reconstruction term and the KL term (all with beta = 1 and no KL warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from pyro.poutine.util import site_is_subsample

from .traces import guess_max_plate_nesting, trace_pair

__all__ = ["ElboObjective", "Objective", "StepTerms", "make_objective"]


@dataclass(frozen=True)
class StepTerms:
    """What one objective evaluation gives the trainer.

    :ivar torch.Tensor loss: scalar to minimise (carries gradients), summed over
        the batch and averaged over particles.
    :ivar torch.Tensor elbo: batch total of the ELBO (detached).
    :ivar torch.Tensor reconstruction: batch total of E_q log p(x | z) (detached).
    :ivar torch.Tensor kl: batch total of the rate, E_q[log q(z|x) - log p(z)] (detached).
    """

    loss: torch.Tensor
    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


class Objective:
    """Base class; subclasses implement :meth:`__call__`."""

    num_particles: int = 1

    def __init__(self) -> None:
        self._max_plate_nesting: dict[int, int] = {}

    def _nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        # static model structure assumed, as in Pyro's ELBOs: guessed once per model
        key = id(model)
        if key not in self._max_plate_nesting:
            self._max_plate_nesting[key] = guess_max_plate_nesting(model, guide, args, kwargs)
        return self._max_plate_nesting[key]

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        raise NotImplementedError


class ElboObjective(Objective):
    """The (beta-weighted, KL-annealed) evidence lower bound.

    .. math::

        \\mathcal L = \\mathbb E_{q}\\Big[\\sum_{\\text{obs}} s_i \\log p(x_i \\mid z)
            - w \\sum_{\\text{latent}} \\big(s_j \\log q(z_j) - s_j \\log p(z_j)\\big)\\Big],

    with Pyro's site scales :math:`s` (beta via ``poutine.scale``, subsample
    factors) and the KL warm-up weight :math:`w`. Gradients are the
    reparameterised (pathwise) ones, as in Pyro's ``Trace_ELBO`` for
    reparameterisable guides.

    :param int num_particles: particles per datum, vectorised. Default 1.
    """

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__()
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}.")
        self.num_particles = int(num_particles)

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        nesting = self._nesting(model, guide, args, kwargs) if self.num_particles > 1 else 0
        model_trace, guide_trace, _ = trace_pair(model, guide, args, kwargs, self.num_particles, nesting)
        return _elbo_terms_from_traces(model_trace, guide_trace, kl_weight, self.num_particles)


def _site_sum(site: dict) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = torch.where(site["mask"], lp, lp.new_zeros(()))
    return lp.sum()


def _elbo_terms_from_traces(model_trace: Any, guide_trace: Any, kl_weight: float, num_particles: int) -> StepTerms:
    rec = rec_scaled = kl = kl_scaled = 0.0
    guide_nodes = guide_trace.nodes
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = _site_sum(site)
        if site["is_observed"]:
            rec = rec + lp
            rec_scaled = rec_scaled + site["scale"] * lp
            continue
        q = guide_nodes.get(name)
        if q is None:
            raise ValueError(
                f"latent site {name!r} of the model has no counterpart in the guide. "
                f"Try adding pyro.sample({name!r}, ...) to the guide."
            )
        lq = _site_sum(q)
        kl = kl + (lq - lp)
        kl_scaled = kl_scaled + (q["scale"] * lq - site["scale"] * lp)
    loss = -(rec_scaled - kl_weight * kl_scaled) / num_particles
    rec, kl = _detached(rec) / num_particles, _detached(kl) / num_particles
    return StepTerms(loss, rec - kl, rec, kl)


def _detached(t: Any) -> torch.Tensor:
    return t.detach() if isinstance(t, torch.Tensor) else torch.tensor(float(t))


def make_objective(objective: str | Objective = "elbo", **kwargs: Any) -> Objective:
    """An :class:`Objective` by name, or ``objective`` itself if it is one.

    :param str objective: ``"elbo"``.
    :param kwargs: options of the objective (``num_particles``).
    """
    if isinstance(objective, Objective):
        return objective
    registry: dict[str, Callable[..., Objective]] = {"elbo": ElboObjective}
    if objective not in registry:
        raise ValueError(f"objective must be one of {sorted(registry)}, got {objective!r}.")
    return registry[objective](**kwargs)
