"""Causal queries on any fitted Pyro program: potential outcomes, ITE, CATE, ATE.

A query is a composition of Pyro handlers on a fitted model/guide pair
(DESIGN principle 3); it adds no networks. For a model with a binary (or any
numeric) *treatment* site ``t`` and an *outcome* site ``y`` inside the data
plate, the model's latent sites split by the model's execution order (read from
one trace of the model with the same arguments) into the *upstream* latents
:math:`u` -- those sampled before ``t`` -- and the *downstream* latents
:math:`m` -- those sampled after it, which may be effects of the treatment
(mediators). A query has three steps (Pearl 2009, ch. 7):

1. **abduction** -- draw the upstream latents from the guide's posterior given
   what is observed, :math:`u^{(s)} \\sim q(u \\mid \\text{args})`,
   ``s = 1..S``, in one vectorised pass (an outer plate of ``num_samples``);
   whatever the guide draws for downstream latents is not used;
2. **action** -- replace the treatment mechanism by a constant,
   ``poutine.do(model, {t: a})``;
3. **prediction** -- run the intervened model with the upstream latents
   replayed (``poutine.replay`` on a trace holding only them): every downstream
   latent is drawn afresh from the intervened model,
   :math:`m^{(s)} \\sim p(m \\mid do(T = a), u^{(s)})`, and the expected outcome
   is read at the outcome site,

.. math::

    \\mu_a^{(s)}(i) = \\mathbb E\\big[Y_i \\mid do(T_i = a), u_i^{(s)}, m_i^{(s)}\\big],
    \\qquad m_i^{(s)} \\sim p\\big(m_i \\mid do(T_i = a), u_i^{(s)}\\big),

    \\frac1S \\sum_{s=1}^S \\mu_a^{(s)}(i) \\;\\to\\;
    \\mathbb E_{q(u_i \\mid \\text{args})}\\,\\mathbb E\\big[Y_i \\mid do(T_i = a), u_i\\big],

    \\hat\\tau_i = \\frac1S \\sum_{s=1}^S \\big(\\mu_1^{(s)}(i) - \\mu_0^{(s)}(i)\\big),
    \\qquad
    \\widehat{\\mathrm{CATE}}(A) = \\frac{1}{|A|}\\sum_{i \\in A} \\hat\\tau_i, \\qquad
    \\widehat{\\mathrm{ATE}} = \\frac1n \\sum_{i=1}^n \\hat\\tau_i .

So an effect that passes through a latent mediator (``t -> m -> y``) is kept:
the answer is the *interventional* (total) effect given the abducted upstream
latents, not a controlled direct effect with the mediator held at a value the
guide drew under the factual treatment. Without downstream latents (CEVAE, and
any program whose latents all come before ``t``) every guide latent is replayed
and the two readings coincide.

What is observed is what the program's arguments carry: called with the
covariates only (``x``), the guide conditions on ``x`` and the effect is the
conditional effect :math:`\\mathbb E[Y(1) - Y(0) \\mid X = x]`; called with the
factual treatment and outcome as well (``x, t, y``), the posterior over the
upstream latents also uses them and the result is the effect for those
observed units given what their outcome says about :math:`u`. That is a
unit-level counterfactual only as far as the upstream latents carry the unit's
individuality: a counterfactual *through a mediator* would need the mediator's
own exogenous noise abducted from the factual world (``m = f(t, u, e_m)`` with
:math:`e_m` inferred and kept fixed under the intervention), and a replayed
*value* of ``m`` cannot give it -- replaying the value would cut the path
``t -> m``, and redrawing ``m`` (what is done here) integrates :math:`e_m` over
its prior instead of its posterior. Write the program so that its exogenous
noise is an upstream latent (``e = sample("e", ...)`` before ``t``, then
``m = f(t, u, e)`` deterministically) if that counterfactual is wanted.
Because the rule is the execution order, a latent that is *not* an effect of
the treatment should be sampled before ``t``: sampled after it, it is drawn
from the model rather than from the guide's posterior.

Intervals are equal-tailed quantiles of the ``num_samples`` draws: they express
the posterior uncertainty about each unit's upstream latents under the fitted
networks, plus the randomness of the downstream latents under the intervention
when there are any, not the estimation error of the networks themselves.

The treatment need not be binary: ``control`` and ``treated`` are any two
values of the treatment site, so a categorical treatment gets the contrast
between two of its arms (``control=0, treated=2``: integer codes stay
integers) and a continuous one the effect of moving the dose from ``a`` to
``b`` (``control=a, treated=b``),

.. math::

    \\hat\\tau_i(a, b) = \\frac1S \\sum_{s=1}^S \\Big(
        \\mathbb E\\big[Y_i \\mid do(T_i = b), u_i^{(s)}, m_i^{(s, b)}\\big]
      - \\mathbb E\\big[Y_i \\mid do(T_i = a), u_i^{(s)}, m_i^{(s, a)}\\big]\\Big).

These answers are causal only under the model's assumptions -- the program's
graph is the true one (the upstream latents block every back-door path between
``t`` and ``y``: ignorability given them) and every unit could receive either
treatment (positivity).

The expected outcome is the outcome distribution's ``.mean``; for families
without one, the mean of a draw per latent sample is used instead.

References

1. J. Pearl. Causality: Models, Reasoning and Inference, 2nd ed. 2009.
2. C. Louizos, U. Shalit, J. Mooij, D. Sontag, R. Zemel, M. Welling. Causal
   Effect Inference with Deep Latent-Variable Models. NeurIPS 2017.
3. T. Richardson, J. Robins. Single World Intervention Graphs: A Primer. 2013
   (the semantics of ``pyro.poutine.do``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..infer.traces import find_data_plate, guess_max_plate_nesting
from ..models.base import DATA_PLATE, OUTCOME_SITE, TREATMENT_SITE, Program, program_verb

__all__ = ["EffectEstimate", "SiteError", "ate", "cate", "ite", "potential_outcomes"]

_PARTICLES = "num_samples_vectorized"


class SiteError(ValueError):
    """A treatment or outcome site the program does not have (or cannot be intervened on)."""


@dataclass(frozen=True)
class EffectEstimate:
    """A causal effect (or a potential outcome) with an equal-tailed interval.

    For per-unit quantities (:func:`ite`, :func:`potential_outcomes`) the
    tensors ``mean``, ``lower`` and ``upper`` have shape ``(n,)``; for averages
    (:func:`cate`, :func:`ate`) they are 0-dim.

    :ivar torch.Tensor mean: the point estimate (posterior mean of the draws).
    :ivar torch.Tensor lower: the ``alpha / 2`` quantile of the draws.
    :ivar torch.Tensor upper: the ``1 - alpha / 2`` quantile of the draws.
    :ivar float alpha: one minus the interval's nominal coverage.
    :ivar int num_samples: posterior draws behind the estimate.
    :ivar draws: the draws, shape ``(num_samples,) + mean.shape``, or None if
        they were not kept.
    """

    mean: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    alpha: float
    num_samples: int
    draws: torch.Tensor | None = field(default=None, repr=False)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation of the draws (needs ``draws``)."""
        if self.draws is None:
            raise ValueError("this estimate kept no draws. Try keep_draws=True.")
        return self.draws.std(0, unbiased=self.num_samples > 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (the draws are left out)."""
        return {
            "mean": self.mean.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "alpha": self.alpha,
            "num_samples": self.num_samples,
        }


def _estimate(draws: torch.Tensor, alpha: float, keep_draws: bool) -> EffectEstimate:
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=draws.dtype)
    lower, upper = torch.quantile(draws, q, dim=0)
    return EffectEstimate(draws.mean(0), lower, upper, float(alpha), draws.shape[0], draws if keep_draws else None)


def _check_options(num_samples: int, alpha: float) -> None:
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}. Try num_samples=100.")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}. Try alpha=0.05 for 95% intervals.")


def _sample_sites(trace) -> dict[str, dict]:
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def _check_sites(model_trace, treatment: str, outcome: str) -> None:
    sites = _sample_sites(model_trace)
    for role, name in (("treatment", treatment), ("outcome", outcome)):
        if name not in sites:
            raise SiteError(
                f"{role} site {name!r} is not a sample site of the model; its sample sites are "
                f"{sorted(sites)}. Try {role}=<one of these names>."
            )
    if treatment == outcome:
        raise SiteError(f"treatment and outcome must be different sites, got {treatment!r} for both.")


def _upstream_latents(model_trace, treatment: str) -> frozenset[str]:
    """The sample sites the model draws before ``treatment``, in its execution order
    (a trace's nodes are in the order the program visited them)."""
    upstream = []
    for name in _sample_sites(model_trace):
        if name == treatment:
            break
        upstream.append(name)
    return frozenset(upstream)


def _latent_replay_trace(guide_trace, model_trace, treatment: str, outcome: str):
    """The guide's draws of the model's *upstream* latents only (sampled before
    ``treatment`` in the model): auxiliary or observed guide sites (e.g. a guide's
    own prediction of ``t`` or ``y``), the treatment / outcome sites and every
    latent the model samples after the treatment (a possible mediator, which the
    intervened model must draw afresh) are dropped, so they can neither override
    the intervention nor be replayed into the model."""
    trace = guide_trace.copy()
    model_sites = _sample_sites(model_trace)
    upstream = _upstream_latents(model_trace, treatment)
    for name, site in list(trace.nodes.items()):
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        model_site = model_sites.get(name)
        if (
            name in (treatment, outcome)
            or name not in upstream
            or site["is_observed"]
            or site["infer"].get("is_auxiliary", False)
            or model_site is None
            or model_site["is_observed"]
        ):
            trace.remove_node(name)
    return trace


def _unit_values(site: dict, particle_dim: int, num_samples: int, batch: int, outcome: str) -> torch.Tensor:
    """The expected outcome at ``site`` as ``(num_samples, batch)``."""
    fn = site["fn"]
    try:
        value = fn.mean
    except (NotImplementedError, AttributeError):
        value = site["value"]
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    value = value.expand(shape) if value.shape != shape else value
    dim = len(fn.batch_shape) + particle_dim
    if dim < 0 or value.shape[dim] != num_samples:
        raise SiteError(
            f"outcome site {outcome!r} does not broadcast over the posterior-sample plate (its batch shape "
            f"is {tuple(fn.batch_shape)}). Try declaring every batch dimension of the program with pyro.plate."
        )
    value = value.movedim(dim, 0).reshape(num_samples, -1)
    if value.shape[1] != batch:
        raise SiteError(
            f"outcome site {outcome!r} must hold one scalar per unit: expected {batch} values per draw, "
            f"got {value.shape[1]} (site shape {shape}). Try an outcome with event shape () per unit."
        )
    return value


def _units(model_trace, outcome: str, data_plate: str | None) -> int:
    """Number of units: the size of the data plate around the outcome site.

    The data plate is ``data_plate`` if given, else the plate called ``"data"``,
    else the outcome site's only plate."""
    plates = {f.name: f for f in model_trace.nodes[outcome]["cond_indep_stack"] if f.vectorized}
    if data_plate is not None:
        find_data_plate(model_trace, data_plate)  # raises, listing the model's plates, if unknown
        name = data_plate
    elif DATA_PLATE in plates or len(plates) == 1:
        name = DATA_PLATE if DATA_PLATE in plates else next(iter(plates))
    else:
        raise SiteError(
            f"cannot tell which plate holds the units: the outcome site {outcome!r} sits in the plates "
            f"{sorted(plates)}. Try data_plate='<name>'." if plates else
            f"outcome site {outcome!r} is outside the data plate: it has no value per unit. "
            "Try sampling it inside pyro.plate('data', n)."
        )
    if name not in plates:
        raise SiteError(f"outcome site {outcome!r} is outside the data plate {name!r}: it has no value per unit.")
    return plates[name].size


def _treatment_value(value: float | int | torch.Tensor, site_value: Any) -> torch.Tensor:
    """The intervention's value: a tensor as given; a number in the dtype and on the device of
    the treatment site's own value (``site_value``, from a probe run) when that is a floating
    tensor, so that a float64 program computes its effects in float64 and ``do(t = 0.1)``
    applies 0.1, not float32's 0.10000000149; otherwise an int as an integer tensor (an arm's
    code, e.g. for a categorical treatment that indexes its arms) and any other number as a
    float."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(site_value, torch.Tensor) and site_value.is_floating_point():
        return torch.tensor(float(value), dtype=site_value.dtype, device=site_value.device)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.tensor(value)
    return torch.tensor(float(value))


@torch.no_grad()
def _outcome_draws(
    program: Program,
    args: tuple,
    kwargs: dict,
    treatment: str,
    outcome: str,
    values: Sequence[float | torch.Tensor],
    num_samples: int,
    data_plate: str | None,
) -> torch.Tensor:
    """Draws of the expected outcome under ``do(treatment = v)`` for each ``v``:
    a tensor ``(len(values), num_samples, batch)``; one guide pass shared by
    every intervention."""
    model, guide = program.model, program.guide
    # the probes leave the RNG where it was: under a seed, the posterior draws below are
    # those of a plain vectorised guide run (as in CEVAE's own queries)
    with torch.random.fork_rng(devices=[]), poutine.block():
        nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        probe = poutine.trace(model).get_trace(*args, **kwargs)
    _check_sites(probe, treatment, outcome)
    batch = _units(probe, outcome, data_plate)
    particle_dim = -nesting - 1
    plate = pyro.plate(_PARTICLES, num_samples, dim=particle_dim)
    with poutine.block():
        guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
        upstream = _latent_replay_trace(guide_trace, probe, treatment, outcome)
        results = []
        for value in values:
            value = _treatment_value(value, probe.nodes[treatment]["value"])
            intervened = poutine.do(model, data={treatment: value})
            replay = poutine.replay(intervened, trace=upstream)
            model_trace = poutine.trace(plate(replay)).get_trace(*args, **kwargs)
            results.append(_unit_values(model_trace.nodes[outcome], particle_dim, num_samples, batch, outcome))
    return torch.stack(results)


@program_verb()
def potential_outcomes(
    program: Program,
    *args: Any,
    treatment: str = TREATMENT_SITE,
    outcome: str = OUTCOME_SITE,
    control: float | torch.Tensor = 0.0,
    treated: float | torch.Tensor = 1.0,
    num_samples: int = 100,
    alpha: float = 0.05,
    keep_draws: bool = False,
    data_plate: str | None = None,
    **kwargs: Any,
) -> tuple[EffectEstimate, EffectEstimate]:
    """Expected potential outcomes :math:`\\mathbb E[Y_i(a) \\mid \\text{args}]` per unit.

    .. math::

        \\hat\\mu_a(i) = \\frac1S \\sum_{s=1}^S
            \\mathbb E\\big[Y_i \\mid do(T_i = a), u_i^{(s)}, m_i^{(s)}\\big],
        \\qquad u^{(s)} \\sim q(u \\mid \\text{args}),
        \\quad m^{(s)} \\sim p(m \\mid do(T = a), u^{(s)}),

    where :math:`u` are the latents the model samples before the treatment
    (replayed from the guide) and :math:`m` those it samples after it (possible
    mediators, drawn afresh from the intervened model; see the module notes: this
    is the interventional answer given :math:`u`, not a counterfactual that keeps
    a mediator's exogenous noise).

    :param program: a fitted object with ``model`` and ``guide`` (or a
        :class:`~pvae.models.ModelGuidePair`).
    :param args: the program's arguments for the units queried (e.g. ``x``, or
        ``x, t, y`` for counterfactuals of observed units).
    :param str treatment: name of the treatment sample site. Default ``"t"``.
    :param str outcome: name of the outcome sample site. Default ``"y"``.
    :param control: the treatment value of the control arm. Default 0.
    :param treated: the treatment value of the treated arm. Default 1.
    :param int num_samples: posterior draws of the latents. Default 100.
    :param float alpha: intervals have nominal coverage ``1 - alpha``. Default 0.05.
    :param bool keep_draws: keep the ``(num_samples, n)`` draws. Default False.
    :param str data_plate: name of the plate over units, if not ``"data"`` or
        the one plate all observed sites share.
    :param kwargs: keyword arguments of the program.
    :returns: ``(y(control), y(treated))``, two :class:`EffectEstimate` of shape ``(n,)``.
    :raises SiteError: listing the model's sites when ``treatment`` or
        ``outcome`` is not one of them.
    """
    _check_options(num_samples, alpha)
    draws = _outcome_draws(program, args, kwargs, treatment, outcome, (control, treated), int(num_samples), data_plate)
    return _estimate(draws[0], alpha, keep_draws), _estimate(draws[1], alpha, keep_draws)


def _effect_draws(program, args, kwargs, treatment, outcome, control, treated, num_samples, alpha, data_plate):
    _check_options(num_samples, alpha)
    draws = _outcome_draws(program, args, kwargs, treatment, outcome, (control, treated), int(num_samples), data_plate)
    return draws[1] - draws[0]


@program_verb()
def ite(
    program: Program,
    *args: Any,
    treatment: str = TREATMENT_SITE,
    outcome: str = OUTCOME_SITE,
    control: float | torch.Tensor = 0.0,
    treated: float | torch.Tensor = 1.0,
    num_samples: int = 100,
    alpha: float = 0.05,
    keep_draws: bool = False,
    data_plate: str | None = None,
    **kwargs: Any,
) -> EffectEstimate:
    """Individual treatment effects, one per unit of the data plate.

    .. math::

        \\hat\\tau_i = \\frac1S \\sum_{s=1}^S \\Big(
            \\mathbb E\\big[Y_i \\mid do(T_i = 1), u_i^{(s)}, m_i^{(s, 1)}\\big]
          - \\mathbb E\\big[Y_i \\mid do(T_i = 0), u_i^{(s)}, m_i^{(s, 0)}\\big]\\Big),

        u^{(s)} \\sim q(u \\mid \\text{args}), \\qquad
        m^{(s, a)} \\sim p\\big(m \\mid do(T = a), u^{(s)}\\big),

    with :math:`u` the latents sampled before the treatment (replayed from the
    guide) and :math:`m` those sampled after it (possible mediators, drawn afresh
    in each arm, so effects through them are kept). The estimate targets the
    interventional effect :math:`\\mathbb E_q\\,\\mathbb E[Y_i \\mid do(T_i=1), u_i]
    - \\mathbb E_q\\,\\mathbb E[Y_i \\mid do(T_i=0), u_i]`; with no latent after the
    treatment (e.g. CEVAE) :math:`m` is empty.

    Parameters as in :func:`potential_outcomes`.

    :returns: an :class:`EffectEstimate` of shape ``(n,)``.

    Example::

        est = ite(cevae, x_new)                  # E[Y(1) - Y(0) | X = x]
        est = ite(cevae, x_obs, t_obs, y_obs)    # counterfactuals of observed units
        est.mean, est.lower, est.upper
    """
    draws = _effect_draws(program, args, kwargs, treatment, outcome, control, treated, num_samples, alpha, data_plate)
    return _estimate(draws, alpha, keep_draws)


@program_verb()
def cate(
    program: Program,
    *args: Any,
    where: torch.Tensor | Sequence[int] | None = None,
    treatment: str = TREATMENT_SITE,
    outcome: str = OUTCOME_SITE,
    control: float | torch.Tensor = 0.0,
    treated: float | torch.Tensor = 1.0,
    num_samples: int = 100,
    alpha: float = 0.05,
    keep_draws: bool = False,
    data_plate: str | None = None,
    **kwargs: Any,
) -> EffectEstimate:
    """Conditional average treatment effect over a subgroup of the units.

    .. math::

        \\widehat{\\mathrm{CATE}}(A) = \\frac{1}{|A|} \\sum_{i \\in A} \\hat\\tau_i,

    with the interval taken over the draws of the subgroup average (so the
    posterior correlation between units is respected).

    :param where: the subgroup :math:`A`: a bool mask of length ``n`` or integer
        indices; None for every unit (then this is :func:`ate`).

    Other parameters as in :func:`potential_outcomes`.

    :returns: a 0-dim :class:`EffectEstimate`.
    """
    draws = _effect_draws(program, args, kwargs, treatment, outcome, control, treated, num_samples, alpha, data_plate)
    if where is not None:
        index = torch.as_tensor(where)
        n = draws.shape[1]
        if index.dtype == torch.bool:
            if index.shape != (n,):
                raise ValueError(f"where as a bool mask must have shape ({n},), got {tuple(index.shape)}. Try one flag per unit.")
            index = index.nonzero().squeeze(-1)
        elif index.dtype.is_floating_point or index.dim() != 1:
            raise ValueError(
                f"where must be a bool mask of shape ({n},) or 1-D integer indices, got dtype {index.dtype} "
                f"and shape {tuple(index.shape)}."
            )
        if index.numel() == 0:
            raise ValueError("where selects no unit: the subgroup is empty. Try a mask with at least one True.")
        if int(index.max()) >= n or int(index.min()) < -n:
            raise ValueError(f"where holds an index out of range for {n} units.")
        draws = draws[:, index]
    return _estimate(draws.mean(1), alpha, keep_draws)


@program_verb()
def ate(
    program: Program,
    *args: Any,
    treatment: str = TREATMENT_SITE,
    outcome: str = OUTCOME_SITE,
    control: float | torch.Tensor = 0.0,
    treated: float | torch.Tensor = 1.0,
    num_samples: int = 100,
    alpha: float = 0.05,
    keep_draws: bool = False,
    data_plate: str | None = None,
    **kwargs: Any,
) -> EffectEstimate:
    """Average treatment effect over the units given.

    .. math::

        \\widehat{\\mathrm{ATE}} = \\frac1n \\sum_{i=1}^n \\hat\\tau_i .

    Parameters as in :func:`potential_outcomes`.

    :returns: a 0-dim :class:`EffectEstimate`.
    """
    return cate(
        program, *args, where=None, treatment=treatment, outcome=outcome, control=control, treated=treated,
        num_samples=num_samples, alpha=alpha, keep_draws=keep_draws, data_plate=data_plate, **kwargs,
    )

