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
    :ivar torch.Tensor reconstruction: batch total of E_q log p(x | z) (detached).
    :ivar torch.Tensor kl: batch total of the rate, E_q[log q(z|x) - log p(z)]
        (detached), with beta = 1 and no warm-up weight.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """Batch total of the ELBO, ``reconstruction - kl``."""
        return self.reconstruction - self.kl


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


def _scaled(scale: Any, value: torch.Tensor) -> torch.Tensor:
    return value if isinstance(scale, float) and scale == 1.0 else scale * value


def _elbo_terms_from_traces(model_trace: Any, guide_trace: Any, kl_weight: float, num_particles: int) -> StepTerms:
    """Sum the traces into the loss and the detached reconstruction / KL totals.

    Scales of 1 and a KL weight of 1 cost no tensor operation: this runs once
    per training step.
    """
    rec: list[torch.Tensor] = []
    rec_scaled: list[torch.Tensor] = []
    kl: list[torch.Tensor] = []
    kl_scaled: list[torch.Tensor] = []
    guide_nodes = guide_trace.nodes
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = _site_sum(site)
        if site["is_observed"]:
            rec.append(lp)
            rec_scaled.append(_scaled(site["scale"], lp))
            continue
        q = guide_nodes.get(name)
        if q is None:
            raise ValueError(
                f"latent site {name!r} of the model has no counterpart in the guide. "
                f"Try adding pyro.sample({name!r}, ...) to the guide."
            )
        lq = _site_sum(q)
        kl.append(lq - lp)
        scaled_p, scaled_q = _scaled(site["scale"], lp), _scaled(q["scale"], lq)
        kl_scaled.append(kl[-1] if scaled_p is lp and scaled_q is lq else scaled_q - scaled_p)
    if not rec:
        raise ValueError("the model has no observed sample site: nothing to fit. Pass the data as obs=.")
    total_kl_scaled = _total(kl_scaled, rec[0])
    if kl_weight != 1.0:
        total_kl_scaled = kl_weight * total_kl_scaled
    loss = total_kl_scaled - _total(rec_scaled, rec[0])
    with torch.no_grad():
        rec_total, kl_total = _total(rec, rec[0]), _total(kl, rec[0])
    if num_particles != 1:
        loss, rec_total, kl_total = loss / num_particles, rec_total / num_particles, kl_total / num_particles
    return StepTerms(loss, rec_total, kl_total)


def _total(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not terms:
        return like.new_zeros(())
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


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
