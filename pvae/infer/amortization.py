"""The amortisation gap of any amortised guide, and semi-amortised refinement.

Cremer, Li and Duvenaud (2018) split the inference gap of an amortised
encoder :math:`q_\\phi(z \\mid x)` into two parts (seed 003):

.. math::

    \\underbrace{\\log p(x) - \\mathcal L[q_\\phi]}_{\\text{inference gap}}
    = \\underbrace{\\log p(x) - \\mathcal L[q^*]}_{\\text{approximation gap}}
    + \\underbrace{\\mathcal L[q^*] - \\mathcal L[q_\\phi]}_{\\text{amortisation gap}},

where :math:`q^*` is the best member of the encoder's own family fitted to
each data point on its own, :math:`q^* = \\arg\\max_{q \\in \\mathcal Q}
\\mathcal L_x[q]`. The first gap is what the family cannot express; the
second is what the encoder loses by sharing one network across data points.

Here :math:`q^*` is found generically: the user's guide is traced to find its
local latent sites and their distributions; every distribution parameter
becomes a free per-datum tensor (in unconstrained space, initialised at the
encoder's output); the guide is then re-run under a handler that swaps each
site's distribution for the free one; the model's parameters stay fixed; all
data points are optimised at once (their ELBOs are independent, so one Adam
run on the sum optimises each). A richer local family (``family=
"full_covariance"`` or ``"planar_flow"``) measures how much of the
approximation gap the encoder's family costs (Cremer et al.'s
:math:`q^*_{AF}`).

:func:`refine` is semi-amortised inference (Kim et al. 2018): start at the
encoder and take ``num_steps`` gradient steps per data point.

References

1. C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational
   Autoencoders. ICML 2018.
2. Y. Kim, S. Wiseman, A. Miller, D. Sontag, A. Rush. Semi-Amortized
   Variational Autoencoders. ICML 2018.
3. R. Krishnan, D. Liang, M. Hoffman. On the challenges of learning with
   inference networks on sparse, high-dimensional data. AISTATS 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints, transform_to

from ..models.base import program_verb
from .traces import (
    _random_subsample,
    find_data_plate,
    guess_max_plate_nesting,
    pin_subsample,
    site_log_probs,
    trace_pair,
)

__all__ = ["GapReport", "RefinementResult", "amortization_gap", "refine"]

LocalFamily = Literal["same", "full_covariance", "planar_flow"]
_FAMILIES = ("same", "full_covariance", "planar_flow")


# -- free per-datum distributions ------------------------------------------------
class _FreeSite:
    """Free per-datum parameters for one guide site, and how to build its
    distribution from them. ``params`` are unconstrained leaf tensors."""

    def __init__(self, build: Callable[[dict[str, torch.Tensor]], Any], params: dict[str, torch.Tensor],
                 constraint_of: dict[str, Any]) -> None:
        self.build = build
        self.params = params
        self.constraint_of = constraint_of

    def distribution(self):
        return self.build({k: transform_to(self.constraint_of[k])(u) for k, u in self.params.items()})


def _leaf(value: torch.Tensor, constraint) -> torch.Tensor:
    return transform_to(constraint).inv(value.detach()).clone().requires_grad_(True)


def _unsupported(name: str, fn: Any, why: str) -> ValueError:
    return ValueError(
        f"guide site {name!r} ({type(fn).__name__}) is not supported by amortization_gap/refine: {why}. "
        "Try a reparameterised local guide such as Normal(...).to_event(1), "
        "LowRankMultivariateNormal or MultivariateNormal."
    )


def _free_same(name: str, fn: Any) -> _FreeSite:
    """Per-datum copies of the parameters of ``fn`` (same family)."""
    wrappers: list[Callable[[Any], Any]] = []
    base = fn
    while True:
        if isinstance(base, dist.Independent):
            n = base.reinterpreted_batch_ndims
            wrappers.append(lambda d, n=n: dist.Independent(d, n))
            base = base.base_dist
        elif isinstance(base, dist.MaskedDistribution):
            mask = base._mask
            wrappers.append(lambda d, mask=mask: d.mask(mask))
            base = base.base_dist
        elif isinstance(base, dist.ExpandedDistribution):
            base = base.base_dist  # re-expanded below from the site's batch shape
        else:
            break
    if isinstance(base, torch.distributions.TransformedDistribution):
        raise _unsupported(name, fn, "transformed distributions may hold parameters in their transforms")
    batch_shape = _base_batch_shape(fn, base)
    if isinstance(base, dist.MultivariateNormal):
        values = {"loc": base.loc, "scale_tril": base.scale_tril}
    else:
        values = {k: base.__dict__[k] for k in base.arg_constraints if k in base.__dict__}
        if "logits" in values and "probs" in values:
            values.pop("probs")
    if not values:
        raise _unsupported(name, fn, "its parameters could not be found")
    constraint_of = {k: base.arg_constraints[k] for k in values}
    params = {}
    for k, v in values.items():
        event_dim = getattr(constraint_of[k], "event_dim", 0)
        shape = batch_shape + (v.shape[v.dim() - event_dim:] if event_dim else torch.Size())
        params[k] = _leaf(torch.broadcast_to(v, shape), constraint_of[k])
    cls = type(base)

    def build(p: dict[str, torch.Tensor]) -> Any:
        d = cls(**p, validate_args=False)
        for wrap in reversed(wrappers):
            d = wrap(d)
        return d

    return _FreeSite(build, params, constraint_of)


def _base_batch_shape(fn: Any, base: Any) -> torch.Size:
    """The site's batch shape seen by the base distribution (before to_event)."""
    reinterpreted = fn.event_shape[: len(fn.event_shape) - len(base.event_shape)]
    return fn.batch_shape + reinterpreted


def _gaussian_moments(name: str, fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """loc and scale_tril of a Gaussian site with event shape (D,)."""
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    if isinstance(fn, dist.Independent) and isinstance(base, dist.Normal) and fn.reinterpreted_batch_ndims == 1:
        return base.loc.expand(fn.batch_shape + fn.event_shape), torch.diag_embed(
            base.scale.expand(fn.batch_shape + fn.event_shape)
        )
    if isinstance(fn, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        return fn.loc.expand(fn.batch_shape + fn.event_shape), fn.scale_tril.expand(
            fn.batch_shape + fn.event_shape + fn.event_shape
        )
    raise _unsupported(name, fn, "a richer family needs a Gaussian site with one event dimension "
                       "(Normal(...).to_event(1), MultivariateNormal, LowRankMultivariateNormal)")


def _free_full_covariance(name: str, fn: Any) -> _FreeSite:
    loc, tril = _gaussian_moments(name, fn)
    constraint_of = {"loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    params = {"loc": _leaf(loc, constraints.real_vector), "scale_tril": _leaf(tril, constraints.lower_cholesky)}
    return _FreeSite(lambda p: dist.MultivariateNormal(p["loc"], scale_tril=p["scale_tril"]), params, constraint_of)


def _free_planar_flow(name: str, fn: Any, num_flows: int) -> _FreeSite:
    """Full-covariance Gaussian base followed by ``num_flows`` per-datum planar flows."""
    gauss = _free_full_covariance(name, fn)
    loc = gauss.params["loc"]
    batch, d = loc.shape[:-1], loc.shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(0)
    params, constraint_of = dict(gauss.params), dict(gauss.constraint_of)
    for i in range(num_flows):
        # small random u, w (zero would stall the gradient); bias zero: starts near identity
        for key, shape in ((f"u{i}", batch + (d,)), (f"w{i}", batch + (d,)), (f"b{i}", batch + (1,))):
            init = 0.0 if key.startswith("b") else 0.01 * torch.randn(shape, generator=gen)
            params[key] = torch.as_tensor(init, dtype=loc.dtype).expand(shape).to(loc.device).clone().requires_grad_(True)
            constraint_of[key] = constraints.real

    def build(p: dict[str, torch.Tensor]) -> Any:
        base = dist.MultivariateNormal(p["loc"], scale_tril=p["scale_tril"])
        flows = [ConditionedPlanar((p[f"b{i}"], p[f"u{i}"], p[f"w{i}"])) for i in range(num_flows)]
        return dist.TransformedDistribution(base, flows)

    return _FreeSite(build, params, constraint_of)


class _SwapLocal(Messenger):
    """Replace the distribution at named guide sites by free per-datum ones."""

    def __init__(self, sites: dict[str, _FreeSite]) -> None:
        super().__init__()
        self.sites = sites

    def _pyro_sample(self, msg) -> None:
        free = self.sites.get(msg["name"])
        if free is not None and not msg["is_observed"]:
            new = free.distribution()
            msg["fn"] = new.expand(msg["fn"].batch_shape) if new.batch_shape != msg["fn"].batch_shape else new


@dataclass
class _Setup:
    sites: dict[str, _FreeSite]
    max_plate_nesting: int
    data_plate: str
    # indices of randomly subsampling plates, drawn once here: the free per-datum
    # parameters belong to these data points, so every later run replays them
    subsample: dict[str, torch.Tensor] = field(default_factory=dict)


def _setup(model: Callable, guide: Callable, args: tuple, kwargs: dict, family: str, num_flows: int,
           data_plate: str | None, subsample: dict[str, torch.Tensor] | None = None) -> _Setup:
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, got {family!r}.")
    model, guide = pin_subsample(model, subsample or {}), pin_subsample(guide, subsample or {})
    # the set-up runs draw random numbers; fork the RNG so that they leave no trace
    # (refine with 0 steps then reproduces the amortised ELBO under the same seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        model_trace, guide_trace, _ = trace_pair(model, guide, args, kwargs, 1, nesting)
    subsample = _random_subsample(guide_trace, model_trace)
    plate_name, data_dim = find_data_plate(model_trace, data_plate)
    sites: dict[str, _FreeSite] = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        fn = site["fn"]
        if not any(f.dim == data_dim for f in site["cond_indep_stack"]):
            raise _unsupported(name, fn, f"it is a global latent (outside the data plate {plate_name!r}); "
                               "only local, per-datum latents have a per-datum optimum")
        if not fn.has_rsample:
            raise _unsupported(name, fn, "it is not reparameterised (has_rsample is False), so its "
                               "per-datum ELBO cannot be optimised by pathwise gradients")
        if family == "same":
            sites[name] = _free_same(name, fn)
        elif family == "full_covariance":
            sites[name] = _free_full_covariance(name, fn)
        else:
            sites[name] = _free_planar_flow(name, fn, num_flows)
    if not sites:
        raise ValueError("the guide has no local latent site to optimise.")
    return _Setup(sites, nesting, plate_name, subsample)


# -- refinement --------------------------------------------------------------------
@dataclass(frozen=True)
class RefinementResult:
    """The outcome of :func:`refine`.

    :ivar guide: the refined guide, a callable with the original guide's
        signature (valid for the same data batch; a randomly subsampling data
        plate replays the subsample the refinement was fitted to).
    :ivar torch.Tensor elbo_trace: ``(num_steps + 1, batch)`` Monte Carlo ELBO
        estimates per datum before each step (row 0: the encoder) and after the
        last one.
    :ivar dict params: the free unconstrained parameters, by site and name.
    """

    guide: Callable[..., Any] = field(repr=False)
    elbo_trace: torch.Tensor
    params: dict[str, dict[str, torch.Tensor]] = field(repr=False)


@program_verb("pair", guide_keyword=True)
def refine(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_steps: int = 100,
    learning_rate: float = 1e-2,
    final_learning_rate: float | None = None,
    num_particles: int = 1,
    family: LocalFamily = "same",
    num_flows: int = 2,
    data_plate: str | None = None,
    **kwargs: Any,
) -> RefinementResult:
    """Semi-amortised inference: start at the guide's output and optimise each
    datum's variational parameters by ``num_steps`` Adam steps on its ELBO.

    .. math::

        \\lambda_x^{(0)} = \\text{encoder}_\\phi(x), \\qquad
        \\lambda_x^{(t+1)} = \\lambda_x^{(t)} + \\text{Adam}\\big(\\nabla_\\lambda
            \\widehat{\\mathcal L}_x(\\lambda_x^{(t)})\\big),

    with the model's parameters held fixed and all data optimised at once.

    Called as ``refine(model, guide, *args)`` or ``refine(program, *args)``
    (or, as before, ``refine(model, *args, guide=guide)``).

    :param callable model: the Pyro model (or a program, then no guide).
    :param callable guide: its guide.
    :param args: the data batch, as the program takes it (e.g. ``x`` or ``x, mask``).
    :param int num_steps: gradient steps per datum. Default 100.
    :param float learning_rate: Adam's step size. Default 0.01.
    :param float final_learning_rate: decay the step size geometrically to this
        value over the run (quiets the Monte Carlo noise at the optimum).
        Default None: constant.
    :param int num_particles: particles per step for the ELBO gradient. Default 1.
    :param str family: ``"same"`` (the guide's own family), ``"full_covariance"``
        or ``"planar_flow"`` (full-covariance base and ``num_flows`` planar flows).
    :param str data_plate: the data plate's name if it is not found by itself.
    :raises ValueError: naming a guide site that is global, not
        reparameterised, or of an unsupported distribution.
    """
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}.")
    setup = _setup(model, guide, args, kwargs, family, num_flows, data_plate)
    return _refine(model, guide, args, kwargs, setup, num_steps, learning_rate, final_learning_rate, num_particles)


def _refine(model: Callable, guide: Callable, args: tuple, kwargs: dict, setup: _Setup, num_steps: int,
            learning_rate: float, final_learning_rate: float | None, num_particles: int) -> RefinementResult:
    """The optimisation of :func:`refine` from a set-up. Every step (and the
    refined guide) replays the set-up's random subsample: the free parameters
    of a datum are always fitted to that datum."""
    model = pin_subsample(model, setup.subsample)
    free_guide = pin_subsample(_SwapLocal(setup.sites)(guide), setup.subsample)
    leaves = [p for s in setup.sites.values() for p in s.params.values()]
    optimizer = torch.optim.Adam(leaves, lr=learning_rate)
    gamma = 1.0 if final_learning_rate is None or num_steps == 0 else (final_learning_rate / learning_rate) ** (1 / num_steps)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    trace_rows = []
    for step in range(num_steps + 1):
        terms = site_log_probs(model, free_guide, *args, num_particles=num_particles,
                               data_plate=setup.data_plate, max_plate_nesting=setup.max_plate_nesting, **kwargs)
        elbo = terms.log_weight.mean(0)
        trace_rows.append(elbo.detach())
        if step == num_steps:
            break
        grads = torch.autograd.grad(-elbo.sum(), leaves)  # model parameters untouched
        for p, g in zip(leaves, grads):
            p.grad = g
        optimizer.step()
        schedule.step()
    for p in leaves:
        p.requires_grad_(False)
        p.grad = None
    params = {name: dict(s.params) for name, s in setup.sites.items()}
    return RefinementResult(free_guide, torch.stack(trace_rows), params)


# -- the gap -----------------------------------------------------------------------
@dataclass(frozen=True)
class GapReport:
    """Per-datum decomposition of the inference gap (all tensors ``(batch,)``, nats).

    :ivar log_evidence: importance-sampled :math:`\\log \\hat p(x)`, an IWAE
        bound with :math:`q^*` as proposal (or, with a flexible family, each
        datum's higher-ELBO one of :math:`q^*` and :math:`q^*_{\\text{flex}}`).
    :ivar elbo_amortized: :math:`\\mathcal L[q_\\phi]`, the encoder's ELBO.
    :ivar elbo_optimal: :math:`\\mathcal L[q^*]`, per-datum optimum in the family.
    :ivar approximation_gap: ``log_evidence - elbo_optimal``.
    :ivar amortization_gap: ``elbo_optimal - elbo_amortized``.
    :ivar elbo_flexible: :math:`\\mathcal L[q^*_{\\text{flex}}]` in a richer
        family, or None.
    :ivar approximation_gap_flexible: ``log_evidence - elbo_flexible``, or None.
    """

    log_evidence: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_optimal: torch.Tensor
    approximation_gap: torch.Tensor
    amortization_gap: torch.Tensor
    elbo_flexible: torch.Tensor | None = None
    approximation_gap_flexible: torch.Tensor | None = None
    refinement_trace: torch.Tensor | None = field(default=None, repr=False)

    def summary(self) -> dict[str, tuple[float, float]]:
        """Mean over data and its standard error, for every per-datum field."""
        out = {}
        for name in ("log_evidence", "elbo_amortized", "elbo_optimal", "approximation_gap",
                     "amortization_gap", "elbo_flexible", "approximation_gap_flexible"):
            v = getattr(self, name)
            if v is not None:
                n = v.numel()
                se = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
                out[name] = (float(v.mean()), se)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {k: (None if v is None else v.tolist()) for k, v in self.__dict__.items() if k != "refinement_trace"}
        d["summary"] = self.summary()
        return d


@torch.no_grad()
def _mc_elbo(model, guide, args, kwargs, num_particles: int, setup: _Setup, chunk: int = 100) -> torch.Tensor:
    """Per-datum ELBO from ``num_particles`` particles in chunks, on the set-up's subsample."""
    model, guide = pin_subsample(model, setup.subsample), pin_subsample(guide, setup.subsample)
    total, done = 0.0, 0
    while done < num_particles:
        k = min(chunk, num_particles - done)
        terms = site_log_probs(model, guide, *args, num_particles=k, data_plate=setup.data_plate,
                               max_plate_nesting=setup.max_plate_nesting, **kwargs)
        total = total + terms.log_weight.sum(0)
        done += k
    return total / num_particles


@program_verb("pair", guide_keyword=True)
def amortization_gap(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_steps: int = 500,
    learning_rate: float = 2e-2,
    num_particles: int = 8,
    elbo_particles: int = 1000,
    evidence_particles: int = 5000,
    flexible_family: Literal["full_covariance", "planar_flow"] | None = None,
    num_flows: int = 2,
    data_plate: str | None = None,
    **kwargs: Any,
) -> GapReport:
    """Split the inference gap of an amortised guide into approximation and
    amortisation gaps, per datum (Cremer et al. 2018).

    .. math::

        \\log p(x) - \\mathcal L[q_\\phi] =
        (\\log p(x) - \\mathcal L[q^*]) + (\\mathcal L[q^*] - \\mathcal L[q_\\phi]).

    :math:`q^*` is fitted per datum by :func:`refine` (``num_steps`` Adam steps
    with ``num_particles`` particles, from the encoder's output, the step size
    decaying geometrically from ``learning_rate`` to a 20th of it); the ELBOs are
    then re-estimated with ``elbo_particles`` fresh particles and
    :math:`\\log p(x)` with an IWAE bound of ``evidence_particles`` particles.

    Called as ``amortization_gap(model, guide, *args)`` or
    ``amortization_gap(program, *args)`` (or, as before, with ``guide=``).

    :param callable model: the Pyro model (or a program, then no guide).
    :param callable guide: its guide.
    :param args: the data batch as the program takes it.
    :param int num_steps: optimisation steps for :math:`q^*`. Default 500.
    :param float learning_rate: Adam's initial step size. Default 0.02.
    :param int num_particles: particles per optimisation step. Default 8.
    :param int elbo_particles: particles for the final ELBO estimates. Default 1000.
    :param int evidence_particles: particles of the IWAE estimate of log p(x). Default 5000.
    :param str flexible_family: also fit a richer per-datum family
        (``"full_covariance"`` or ``"planar_flow"``) and report its ELBO.
    :returns: a :class:`GapReport`.
    :raises ValueError: naming a guide site that is global, not reparameterised
        or unsupported.
    """
    from .bounds import iwae_bound

    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}.")
    # one set-up: with a randomly subsampling data plate, every estimate below is
    # of the data points drawn here
    setup = _setup(model, guide, args, kwargs, "same", num_flows, data_plate)
    common = (num_steps, learning_rate, learning_rate / 20, num_particles)
    optimal = _refine(model, guide, args, kwargs, setup, *common)
    elbo_amortized = _mc_elbo(model, guide, args, kwargs, elbo_particles, setup)
    elbo_optimal = _mc_elbo(model, optimal.guide, args, kwargs, elbo_particles, setup)
    proposals, elbos = [optimal.guide], [elbo_optimal]
    elbo_flexible = None
    if flexible_family is not None:
        flexible_setup = _setup(model, guide, args, kwargs, flexible_family, num_flows, data_plate, setup.subsample)
        flexible = _refine(model, guide, args, kwargs, flexible_setup, *common)
        elbo_flexible = _mc_elbo(model, flexible.guide, args, kwargs, elbo_particles, setup)
        proposals.append(flexible.guide)
        elbos.append(elbo_flexible)
    # importance sampling from each datum's tightest fitted q, chosen by its ELBO (not by
    # the noisy IWAE values themselves, which would bias log p(x) upwards)
    best = torch.stack(elbos).argmax(0)
    with torch.no_grad():
        bounds = torch.stack([
            iwae_bound(pin_subsample(model, setup.subsample), q, *args, num_particles=evidence_particles,
                       data_plate=setup.data_plate,
                       max_plate_nesting=setup.max_plate_nesting, **kwargs).value
            for q in proposals
        ])
    log_evidence = bounds.gather(0, best[None]).squeeze(0)
    return GapReport(
        log_evidence=log_evidence,
        elbo_amortized=elbo_amortized,
        elbo_optimal=elbo_optimal,
        approximation_gap=log_evidence - elbo_optimal,
        amortization_gap=elbo_optimal - elbo_amortized,
        elbo_flexible=elbo_flexible,
        approximation_gap_flexible=None if elbo_flexible is None else log_evidence - elbo_flexible,
        refinement_trace=optimal.elbo_trace,
    )
