"""Posterior-collapse diagnostics for any Pyro program: active units, KL per
dimension, the mutual information between data and code, and a warning.

A VAE's posterior *collapses* when the encoder stops carrying information about
``x``: :math:`q(z \\mid x) \\approx p(z)` for every datum, the KL (rate) falls to
zero and the decoder models the data on its own (seed 003: "the apprentice
gives up and always guesses the prior"). Collapse is often partial: some latent
dimensions stay in use, the rest are switched off. Three views of it, each a
function of a model/guide pair and data:

* **Active units** (Burda et al. 2016, section 5.2): dimension :math:`d` is
  active when its posterior mean moves with the data,

  .. math::

      A_d = \\mathrm{Cov}_x\\big(\\mathbb E_{q(z \\mid x)}[z_d]\\big) > 0.01 .

* **KL per dimension**: :math:`\\mathrm{KL}(q(z_d \\mid x) \\,\\|\\, p(z_d))`
  averaged over data (from :func:`pvae.infer.elbo_terms`); a dead dimension
  has KL ~ 0.
* **Mutual information** :math:`I_q(x; z)` under the aggregate posterior
  :math:`q(z) = \\frac1N \\sum_n q(z \\mid x_n)` (Hoffman and Johnson 2016):

  .. math::

      I_q(x; z) = \\mathbb E_{x}\\,\\mathrm{KL}\\big(q(z \\mid x) \\,\\|\\, p(z)\\big)
          - \\mathrm{KL}\\big(q(z) \\,\\|\\, p(z)\\big) \\;\\le\\; \\log N .

  A large KL with a small mutual information means the rate is spent on a
  mismatch between :math:`q(z)` and the prior, not on information about x.

:func:`collapse_diagnostics` gathers all three into a :class:`CollapseReport`
and warns (:class:`PosteriorCollapseWarning`) when the posterior has collapsed.
:func:`collapse_summary` is the cheap per-epoch version (three floats, no
warning), meant for a validation subsample during training.

Every function takes the program and then the program's own positional
arguments (``x``, or ``x, mask``) and keyword arguments, like the bounds.

References

1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016 (active units).
2. M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the
   variational evidence lower bound. NIPS Workshop on Advances in Approximate
   Bayesian Inference, 2016.
3. J. He, D. Spokoyny, G. Neubig, T. Berg-Kirkpatrick. Lagging Inference
   Networks and Posterior Collapse in Variational Autoencoders. ICLR 2019
   (the minibatch estimator of the mutual information).
4. B. Poole, S. Ozair, A. van den Oord, A. A. Alemi, G. Tucker. On Variational
   Bounds of Mutual Information. ICML 2019 (the estimator as an InfoNCE bound).
5. Seed 003: posterior collapse.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .._stack import user_stacklevel
from ..models.base import Program, program_verb
from .elbo import elbo_terms
from .traces import SiteLogProbs, is_point_mass, site_log_probs

__all__ = [
    "CollapseReport",
    "PosteriorCollapseWarning",
    "active_units",
    "collapse_diagnostics",
    "collapse_summary",
    "kl_per_dim",
    "latent_activity",
    "mutual_information",
]

#: Burda et al. (2016): a unit is active when Cov_x(E_q[z_d]) exceeds this.
ACTIVITY_THRESHOLD = 0.01
#: Mean KL per datum (nats) below which the posterior counts as collapsed.
KL_THRESHOLD = 0.01
# Samples per site to estimate E_q[z] when the guide's distribution has no
# closed-form ``.mean`` (e.g. a normalising flow).
_MEAN_SAMPLES = 256


class PosteriorCollapseWarning(UserWarning):
    """The guide carries (almost) no information about the data."""


@dataclass(frozen=True)
class CollapseReport:
    """Posterior-collapse diagnostics of a program on some data.

    :ivar int active_units: number of latent coordinates with activity above
        ``threshold``.
    :ivar torch.Tensor activity: ``(latent_dim,)``
        :math:`\\mathrm{Cov}_x(\\mathbb E_q[z_d])` of each flattened latent
        coordinate (sites concatenated in guide order).
    :ivar torch.Tensor kl_per_dim: ``(latent_dim,)`` mean KL per datum of each
        coordinate, or None when the guide/prior pair does not factorise into
        univariate parts.
    :ivar float kl: mean KL (rate) per datum, nats.
    :ivar float mutual_information: estimate of :math:`I_q(x; z)`, nats (see
        :func:`mutual_information`).
    :ivar float mutual_information_max: :math:`\\log B`, the largest value the
        estimator can return on B data.
    :ivar int num_data: data points behind the estimates.
    :ivar float threshold: the activity threshold.
    :ivar float kl_threshold: the KL threshold of ``collapsed``.
    :ivar bool collapsed: no active unit, or mean KL below ``kl_threshold``.
    """

    active_units: int
    activity: torch.Tensor
    kl_per_dim: torch.Tensor | None
    kl: float
    mutual_information: float
    mutual_information_max: float
    num_data: int
    threshold: float
    kl_threshold: float
    collapsed: bool

    @property
    def active(self) -> torch.Tensor:
        """``(latent_dim,)`` bool: which coordinates are active."""
        return self.activity > self.threshold

    @property
    def latent_dim(self) -> int:
        """Number of flattened latent coordinates."""
        return self.activity.numel()

    def summary(self) -> dict[str, float]:
        """``{"active_units", "kl", "mutual_information"}`` as floats."""
        return {
            "active_units": float(self.active_units),
            "kl": self.kl,
            "mutual_information": self.mutual_information,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of floats), e.g. for JSON."""
        return {
            "active_units": self.active_units,
            "latent_dim": self.latent_dim,
            "activity": self.activity.tolist(),
            "active": self.active.tolist(),
            "kl_per_dim": None if self.kl_per_dim is None else self.kl_per_dim.tolist(),
            "kl": self.kl,
            "mutual_information": self.mutual_information,
            "mutual_information_max": self.mutual_information_max,
            "num_data": self.num_data,
            "threshold": self.threshold,
            "kl_threshold": self.kl_threshold,
            "collapsed": self.collapsed,
        }


# -- helpers ----------------------------------------------------------------------
def _run(program: Program, args: tuple, kwargs: dict, num_particles: int, data_plate: str | None,
         max_plate_nesting: int | None) -> SiteLogProbs:
    with torch.no_grad():
        return site_log_probs(
            program.model, program.guide, *args, num_particles=num_particles, data_plate=data_plate,
            max_plate_nesting=max_plate_nesting, **kwargs,
        )


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_threshold(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")


def _site_mean(fn) -> torch.Tensor:
    """``E[fn]`` with shape ``batch_shape + event_shape``; Monte Carlo if no closed form."""
    try:
        mean = fn.mean
    except NotImplementedError:
        mean = None
    if mean is None or not bool(torch.isfinite(mean).all()):
        mean = fn.sample((_MEAN_SAMPLES,)).mean(0)
    return mean.expand(fn.batch_shape + fn.event_shape)


def _per_datum_columns(t: torch.Tensor, event_dim: int, slp: SiteLogProbs) -> torch.Tensor:
    """A site-shaped tensor ``(*batch, *event)`` -> ``(K, B, E)``: the particle
    and data dims in front, every other plate and event dim flattened."""
    nb = -slp.particle_dim
    batch_ndim = t.dim() - event_dim
    t = t.reshape((1,) * (nb - batch_ndim) + tuple(t.shape))
    num_particles, batch = slp.log_guide.shape
    shape = list(t.shape)
    shape[0], shape[nb + slp.data_dim] = num_particles, batch
    t = t.expand(shape).movedim(nb + slp.data_dim, 1)
    return t.reshape(num_particles, batch, -1)


def _latent_means(slp: SiteLogProbs) -> torch.Tensor:
    """``(B, D)``: :math:`\\mathbb E_q[z]` of every latent coordinate per datum.

    The guide's distribution mean of each site, averaged over particles (exact
    for guides whose sites do not depend on each other; an unbiased Monte
    Carlo estimate of the mean of a hierarchical guide).
    """
    columns = []
    for name in slp.latent:
        fn = slp.guide_trace.nodes[name]["fn"]
        columns.append(_per_datum_columns(_site_mean(fn), len(fn.event_shape), slp).mean(0))
    return torch.cat(columns, -1)


def _density_sites(slp: SiteLogProbs) -> list[str]:
    """The guide sites whose densities the mutual information reads: the latent sites,
    with point masses replaced by the auxiliary draws they are made of. For Pyro's
    autoguides (``u ~ q(u)``, ``z = T(u)`` by a bijection, a ``Delta`` at ``z``)
    :math:`I_q(x; z) = I_q(x; u)`, while a point mass has no density to compare
    across data (its own datum would always win: the estimate sat at ``log B``)."""
    points = [n for n in slp.latent if is_point_mass(slp.guide_trace.nodes[n]["fn"])]
    if not points:
        return list(slp.latent)
    return [n for n in slp.latent if n not in points] + list(slp.auxiliary)


def _pairwise_log_guide(slp: SiteLogProbs) -> torch.Tensor:
    """``(K, B_j, B_i)``: :math:`\\log q(z_{k,i} \\mid x_j)` for every pair of data.

    Each guide site's distribution (batch shape with the data dim, size B) is
    evaluated at the site's draws with the data index moved to a new leftmost
    dim and a 1 in its place, so broadcasting gives every pair; then reduced
    like a log-density (masks, inner plates) with the draw index kept as an
    event dim.
    """
    nb = -slp.particle_dim
    total = None
    for name in _density_sites(slp):
        site = slp.guide_trace.nodes[name]
        fn, value = site["fn"], site["value"]
        event_dim = len(fn.event_shape)
        value = value.reshape((1,) * (nb + event_dim - value.dim()) + tuple(value.shape))
        data_axis = nb + slp.data_dim
        paired = value.unsqueeze(0).transpose(0, data_axis + 1)  # (B_i, ..., 1, ..., *event)
        lp = fn.log_prob(paired)  # (B_i, *batch with B_j at the data dim)
        lp = slp.per_datum(name, lp.movedim(0, -1), event_dim=1, guide=True)  # (K, B_j, B_i)
        total = lp if total is None else total + lp
    return total


def _check_independent_sites(slp: SiteLogProbs) -> None:
    """The pairwise guide density needs each site's q to depend on x only, not
    on other latent draws: check that its distribution is the same for every
    particle (needs K >= 2)."""
    sites = _density_sites(slp)
    if len(sites) < 2:
        return
    for name in sites:
        site = slp.guide_trace.nodes[name]
        fn, value = site["fn"], site["value"]
        nb = -slp.particle_dim
        batch_ndim = value.dim() - len(fn.event_shape)
        if batch_ndim < nb or value.shape[0] < 2:
            continue
        rolled = value.roll(1, 0)
        if not torch.allclose(fn.log_prob(rolled), fn.log_prob(value).roll(1, 0), rtol=1e-4, atol=1e-4):
            raise NotImplementedError(
                f"mutual_information needs a guide whose sites depend on x only; site {name!r} "
                "depends on other latent draws (a hierarchical guide) or on randomness such as "
                "dropout. Try program.eval() for dropout; hierarchical guides are not supported."
            )


@torch.no_grad()
def _mutual_information(slp: SiteLogProbs) -> float:
    _check_independent_sites(slp)
    pair = _pairwise_log_guide(slp)  # (K, B_j, B_i)
    batch = pair.shape[1]
    own = pair.diagonal(dim1=1, dim2=2)  # (K, B): log q(z_ki | x_i)
    aggregate = pair.double().logsumexp(1) - math.log(batch)  # (K, B_i): log q_hat(z_ki)
    return float((own.double() - aggregate).mean())


def _kl_parts(program: Program, args: tuple, kwargs: dict, num_particles: int, data_plate: str | None,
              max_plate_nesting: int | None) -> tuple[float, torch.Tensor | None]:
    with torch.no_grad():
        terms = elbo_terms(
            program.model, program.guide, *args, num_particles=num_particles, data_plate=data_plate,
            max_plate_nesting=max_plate_nesting, **kwargs,
        )
    per_dim = None if terms.kl_per_dim is None else terms.kl_per_dim.mean(0)
    return float(terms.kl.mean()), per_dim


# -- public API -------------------------------------------------------------------
@program_verb()
def latent_activity(
    program: Any,
    *args: Any,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Activity of each latent coordinate: the variance over data of its posterior mean.

    .. math::

        A_d = \\mathrm{Cov}_x\\big(\\mathbb E_{q(z \\mid x)}[z_d]\\big)
            = \\frac{1}{B - 1} \\sum_{i=1}^{B} \\big(\\mu_{id} - \\bar\\mu_d\\big)^2,
        \\qquad \\mu_{id} = \\mathbb E_{q(z \\mid x_i)}[z_d]

    (Burda et al. 2016). :math:`\\mu_{id}` is the ``.mean`` of the guide's
    distribution at every latent site (local to the data plate), flattened per
    datum and concatenated in guide order; a distribution without a closed-form
    mean is averaged over 256 draws. One guide run, no gradients.

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x`` of shape
        ``(B, ...)``, B >= 2.
    :param str data_plate: name of the data plate (see :func:`pvae.infer.site_log_probs`).
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: ``(latent_dim,)`` tensor.
    :raises ValueError: with fewer than 2 data points.
    """
    slp = _run(program, args, kwargs, 1, data_plate, max_plate_nesting)
    return _activity(slp)


def _activity(slp: SiteLogProbs) -> torch.Tensor:
    means = _latent_means(slp)
    if means.shape[0] < 2:
        raise ValueError(
            f"active units need a variance over data: expected at least 2 data points, got "
            f"{means.shape[0]}. Try passing a batch of data."
        )
    return means.var(0)


@program_verb()
def active_units(
    program: Any,
    *args: Any,
    threshold: float = ACTIVITY_THRESHOLD,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> int:
    """Number of active latent units (Burda et al. 2016).

    .. math::

        \\mathrm{AU} = \\#\\big\\{d : \\mathrm{Cov}_x\\big(\\mathbb E_{q(z \\mid x)}[z_d]\\big)
            > \\text{threshold}\\big\\}

    See :func:`latent_activity` for the per-coordinate values.

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x``.
    :param float threshold: activity threshold. Default 0.01 (Burda et al.),
        meant for a standard-normal prior; scale it with the prior variance.
    :param str data_plate: name of the data plate.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: the count, an int.
    """
    _check_threshold("threshold", threshold)
    activity = latent_activity(program, *args, data_plate=data_plate, max_plate_nesting=max_plate_nesting,
                               **kwargs)
    return int((activity > threshold).sum())


@program_verb()
def kl_per_dim(
    program: Any,
    *args: Any,
    num_particles: int = 1,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Mean KL per datum of each latent coordinate.

    .. math::

        \\overline{\\mathrm{KL}}_d = \\frac1B \\sum_{i=1}^B
            \\mathrm{KL}\\big(q(z_d \\mid x_i) \\,\\|\\, p(z_d)\\big),
        \\qquad \\textstyle\\sum_d \\overline{\\mathrm{KL}}_d = \\overline{\\mathrm{KL}},

    from ``kl_per_dim`` of :class:`pvae.infer.ElboTerms` (analytic where torch has the
    KL, else Monte Carlo over ``num_particles``).

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x``.
    :param int num_particles: particles per datum. Default 1.
    :param str data_plate: name of the data plate.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: ``(latent_dim,)`` tensor, nats.
    :raises ValueError: when a latent site's guide or prior does not factorise
        into univariate distributions (no per-coordinate KL exists).
    """
    _check_positive_int("num_particles", num_particles)
    _, per_dim = _kl_parts(program, args, kwargs, num_particles, data_plate, max_plate_nesting)
    if per_dim is None:
        raise ValueError(
            "kl_per_dim needs every latent site's guide and prior to factorise into univariate "
            "distributions (e.g. Normal(...).to_event(1)); this program's do not. Try "
            "pvae.infer.elbo_terms(...).kl for the total KL."
        )
    return per_dim


@program_verb()
def mutual_information(
    program: Any,
    *args: Any,
    num_particles: int = 1,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> float:
    """Minibatch estimate of the mutual information :math:`I_q(x; z)` of the guide.

    Under the joint :math:`q(x, z) = p_\\text{data}(x)\\, q(z \\mid x)` with the
    aggregate posterior :math:`q(z) = \\mathbb E_x\\, q(z \\mid x)` (Hoffman and
    Johnson 2016),

    .. math::

        I_q(x; z) = \\mathbb E_{x}\\,\\mathrm{KL}\\big(q(z \\mid x) \\,\\|\\, p(z)\\big)
            - \\mathrm{KL}\\big(q(z) \\,\\|\\, p(z)\\big)
            = \\mathbb E_{q(x, z)}\\big[\\log q(z \\mid x) - \\log q(z)\\big].

    The prior cancels. With the B data of the batch, draws
    :math:`z_{ki} \\sim q(z \\mid x_i)`, :math:`k = 1, \\dots, K`, and
    :math:`\\log q(z)` estimated by the batch mixture (He et al. 2019),

    .. math::

        \\hat I = \\frac{1}{KB} \\sum_{k, i} \\Big[\\log q(z_{ki} \\mid x_i)
            - \\log \\frac1B \\sum_{j=1}^B q(z_{ki} \\mid x_j)\\Big].

    All :math:`B^2` densities :math:`\\log q(z_{ki} \\mid x_j)` come from one
    guide run: the guide's distribution (batch shape ``(B,)``) is evaluated at
    the draws reshaped to ``(B, 1, D)``, broadcasting to ``(B, B)``. Cost
    :math:`O(K B^2 D)` time and memory: use a subsample of a few hundred to a
    few thousand data.

    **Bias.** The mixture includes the datum's own component :math:`j = i`, so
    this is the InfoNCE bound with the (optimal) critic :math:`q(z \\mid x)`
    (Poole et al. 2019): in expectation :math:`0 \\le \\mathbb E\\,\\hat I \\le
    I_q(x; z)`, and :math:`\\hat I \\le \\log B` always (each datum's term is at
    most :math:`\\log B`). One estimate can be slightly negative when
    :math:`I_q \\approx 0` (a draw likelier under another datum's code): noise,
    not an error; it is not clamped, which would bias it. It is close to
    :math:`I_q` when :math:`I_q \\ll \\log B` and saturates at :math:`\\log B`
    otherwise, so compare it with :math:`\\log B` and use as large a B as memory
    allows. A value near 0 means the codes of different data are
    indistinguishable: the posterior has collapsed.

    **Autoguides.** A point-mass site (Pyro's autoguides draw ``u ~ q(u)`` and put
    a ``Delta`` at :math:`z = T(u)`) has no density to compare across data; its
    auxiliary draws are read instead, since :math:`I_q(x; z) = I_q(x; u)` for a
    bijection :math:`T`.

    :param program: a pvae program, or anything with ``model`` and ``guide``;
        each guide site's distribution must depend on ``x`` only (not on other
        latent draws).
    :param args: the program's positional arguments, e.g. ``x`` of shape ``(B, ...)``.
    :param int num_particles: draws per datum (K). Default 1.
    :param str data_plate: name of the data plate.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: the estimate in nats, a float.
    :raises NotImplementedError: for a guide whose sites depend on each other.
    """
    _check_positive_int("num_particles", num_particles)
    slp = _run(program, args, kwargs, _mi_particles(program, args, kwargs, num_particles, data_plate,
                                                    max_plate_nesting), data_plate, max_plate_nesting)
    return _mutual_information(slp)


def _mi_particles(program, args, kwargs, num_particles, data_plate, max_plate_nesting) -> int:
    """At least 2 particles when the guide has several latent sites, so their
    independence can be checked."""
    if num_particles >= 2:
        return num_particles
    slp = _run(program, args, kwargs, 1, data_plate, max_plate_nesting)
    return 2 if len(_density_sites(slp)) > 1 else 1


@program_verb()
def collapse_diagnostics(
    program: Any,
    *args: Any,
    threshold: float = ACTIVITY_THRESHOLD,
    kl_threshold: float = KL_THRESHOLD,
    num_particles: int = 1,
    warn: bool = True,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> CollapseReport:
    """Active units, KL per dimension and mutual information, with a collapse warning.

    The posterior counts as collapsed when no unit is active or the mean KL
    per datum is below ``kl_threshold``:

    .. math::

        \\text{collapsed} \\iff \\mathrm{AU} = 0 \\;\\lor\\;
            \\frac1B \\sum_i \\mathrm{KL}\\big(q(z \\mid x_i) \\,\\|\\, p(z)\\big)
            < \\text{kl\\_threshold}.

    Partial collapse (some inactive units) is reported, not warned about. See
    :func:`latent_activity`, :func:`kl_per_dim` and :func:`mutual_information`
    for the estimators (Burda et al. 2016; Hoffman and Johnson 2016).

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x`` of shape
        ``(B, ...)`` with B >= 2; the mutual information costs
        :math:`O(B^2)`, so pass a subsample of a few thousand at most.
    :param float threshold: activity threshold of an active unit. Default 0.01.
    :param float kl_threshold: mean KL (nats per datum) below which the
        posterior counts as collapsed. Default 0.01.
    :param int num_particles: draws per datum for the KL (if not analytic)
        and the mutual information. Default 1.
    :param bool warn: emit :class:`PosteriorCollapseWarning` when collapsed.
        Default True.
    :param str data_plate: name of the data plate.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param kwargs: the program's keyword arguments.
    :returns: :class:`CollapseReport`.
    """
    _check_threshold("threshold", threshold)
    _check_threshold("kl_threshold", kl_threshold)
    _check_positive_int("num_particles", num_particles)
    slp = _run(program, args, kwargs, num_particles, data_plate, max_plate_nesting)
    if len(_density_sites(slp)) > 1 and num_particles < 2:
        slp = _run(program, args, kwargs, 2, data_plate, max_plate_nesting)
    activity = _activity(slp)
    kl, per_dim = _kl_parts(program, args, kwargs, num_particles, data_plate, max_plate_nesting)
    batch = slp.log_guide.shape[1]
    active = int((activity > threshold).sum())
    report = CollapseReport(
        active_units=active,
        activity=activity,
        kl_per_dim=per_dim,
        kl=kl,
        mutual_information=_mutual_information(slp),
        mutual_information_max=math.log(batch),
        num_data=batch,
        threshold=float(threshold),
        kl_threshold=float(kl_threshold),
        collapsed=active == 0 or kl < kl_threshold,
    )
    if warn and report.collapsed:
        warnings.warn(
            f"the posterior has collapsed: {active} of {report.latent_dim} latent units active "
            f"(Cov_x(E_q[z_d]) > {threshold:g}), KL {kl:.4g} nats per datum, mutual information "
            f"I(x; z) ~ {report.mutual_information:.3g} nats: the code carries no information about "
            "x. Try KL warm-up (fit(..., kl_warmup=...)), a smaller beta, a weaker decoder, or "
            "more latent capacity.",
            PosteriorCollapseWarning,
            stacklevel=user_stacklevel(),
        )
    return report


@program_verb()
def collapse_summary(
    program: Any,
    *args: Any,
    threshold: float = ACTIVITY_THRESHOLD,
    num_particles: int = 1,
    **kwargs: Any,
) -> dict[str, float]:
    """Three numbers for a training history: active units, KL, mutual information.

    :func:`collapse_diagnostics` without the warning, as plain floats: cheap
    enough to call once per epoch on a validation subsample of a few hundred
    data (two guide runs and one model run; the mutual information costs
    :math:`O(B^2 D)`).

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x``.
    :param float threshold: activity threshold of an active unit. Default 0.01.
    :param int num_particles: draws per datum. Default 1.
    :param kwargs: the program's keyword arguments (and ``data_plate``,
        ``max_plate_nesting``).
    :returns: ``{"active_units": float, "kl": float, "mutual_information": float}``;
        KL and mutual information in nats per datum.
    """
    report = collapse_diagnostics(program, *args, threshold=threshold, num_particles=num_particles,
                                  warn=False, **kwargs)
    return report.summary()
