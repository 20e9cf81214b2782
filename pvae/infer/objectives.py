"""Training objectives: the only place where a bound becomes a loss.

An objective maps a program and a batch to :class:`StepTerms`: the loss to
minimise and, for the trainer's history, the batch totals of the ELBO, the
reconstruction term and the KL term (all with beta = 1 and no KL warm-up).

Two objectives, each with its gradient estimator as an option (DESIGN
principle 2):

- :class:`ElboObjective` -- the ELBO, with beta through ``poutine.scale``, and
  ``estimator="standard" | "stl"`` (sticking the landing [2]).
- :class:`IWAEObjective` -- importance-weighted bounds: IWAE [1] and Renyi's
  variational bounds [4] (``alpha``), with ``estimator="standard" | "dreg"``
  (doubly reparameterised gradients [3]).

Choose one in :func:`pvae.fit` by name or as an instance::

    pvae.fit(vae, x, objective="iwae", num_particles=5)
    pvae.fit(vae, x, objective=make_objective("iwae", num_particles=5, estimator="dreg"))
    pvae.fit(vae, x, objective=IWAEObjective(num_particles=5, estimator="dreg"))
    pvae.fit(vae, x, objective=ElboObjective(estimator="stl"))

References

1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016.
2. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance
   Gradient Estimators for Variational Inference. NeurIPS 2017.
3. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized
   Gradient Estimators for Monte Carlo Objectives. ICLR 2019.
4. Y. Li, R. E. Turner. Renyi Divergence Variational Inference. NeurIPS 2016.
5. T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood,
   Y. W. Teh. Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, get_args

import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution
from torch.distributions.transforms import Transform, _InverseTransform

from .traces import (
    PARTICLE_PLATE,
    _guide_only_error,
    check_count,
    find_data_plate,
    guess_max_plate_nesting,
    is_point_mass,
    trace_pair,
)

__all__ = [
    "ElboObjective",
    "IWAEObjective",
    "Objective",
    "StepTerms",
    "detach_distribution",
    "make_objective",
]

ElboEstimator = Literal["standard", "stl"]
IWAEEstimator = Literal["standard", "dreg"]


@dataclass(frozen=True)
class StepTerms:
    """What one objective evaluation gives the trainer.

    :ivar torch.Tensor loss: scalar to minimise (carries gradients), summed over
        the batch and averaged over particles.
    :ivar torch.Tensor reconstruction: batch total of E_q log p(x | z) (detached),
        the mean over the particles drawn.
    :ivar torch.Tensor kl: batch total of the rate, E_q[log q(z|x) - log p(z)]
        (detached), with beta = 1 and no warm-up weight.
    :ivar torch.Tensor bound: batch total of the objective's own bound
        (detached; IWAE_K or the Renyi bound, with no warm-up weight), or None
        when that bound is the ELBO (then read :attr:`elbo`).
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    bound: torch.Tensor | None = None

    @property
    def elbo(self) -> torch.Tensor:
        """Batch total of the ELBO, ``reconstruction - kl``."""
        return self.reconstruction - self.kl


def _unit(kl_weight: float | torch.Tensor) -> bool:
    """A KL weight of exactly 1 as a Python number: no multiplication needed. A
    tensor weight (a captured step's graph input) is always applied."""
    return not isinstance(kl_weight, torch.Tensor) and kl_weight == 1.0


def _model_key(model: Callable) -> tuple[int, Any]:
    # a bound method (``vae.model``) is a new object on every attribute access:
    # key it by its instance and function, which live as long as the program
    return (id(getattr(model, "__self__", model)), getattr(model, "__func__", None))


class Objective:
    """Base class; subclasses implement ``__call__``."""

    num_particles: int = 1

    def __init__(self) -> None:
        self._max_plate_nesting: dict[Any, int] = {}
        self._checked_guides: set[Any] = set()

    def _nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        # static model structure assumed, as in Pyro's ELBOs: guessed once per model
        key = _model_key(model)
        if key not in self._max_plate_nesting:
            # the guess runs the program once; keep the RNG where it was, so that a
            # seeded evaluation gives the same draws whether the cache is warm or not
            with torch.random.fork_rng(devices=[]):
                self._max_plate_nesting[key] = guess_max_plate_nesting(model, guide, args, kwargs)
        return self._max_plate_nesting[key]

    def _check_detachable_once(self, model: Callable, model_trace: Any, guide_trace: Any, what: str) -> None:
        """Once per model (on the first call with gradients): the guide's
        distribution parameters must not depend on its other latent samples."""
        if not torch.is_grad_enabled():
            return
        key = _model_key(model)
        if key not in self._checked_guides:
            latent = [n for n, s in model_trace.nodes.items() if _is_latent(s)]
            latent += [n for n, _ in _auxiliary_sites(model_trace, guide_trace)]
            _check_no_latent_parameters(guide_trace, latent, what)
            self._checked_guides.add(key)

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        raise NotImplementedError


def _check_choice(name: str, value: Any, choices: Any, objective: str, hint: str = "") -> str:
    allowed = list(get_args(choices))
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed} for objective {objective!r}, got {value!r}.{hint}")
    return value


# -- the ELBO --------------------------------------------------------------------------
class ElboObjective(Objective):
    """The (beta-weighted, KL-annealed) evidence lower bound.

    .. math::

        \\mathcal L = \\mathbb E_{q}\\Big[\\sum_{\\text{obs}} s_i \\log p(x_i \\mid z)
            - w \\sum_{\\text{latent}} \\big(s_j \\log q(z_j) - s_j \\log p(z_j)\\big)\\Big],

    with Pyro's site scales :math:`s` (beta via ``poutine.scale``, subsample
    factors) and the KL warm-up weight :math:`w`, estimated with ``K``
    reparameterised particles :math:`z_k = g_\\phi(\\epsilon_k, x)`.

    Gradient estimators:

    - ``"standard"``: the reparameterised (pathwise) gradient of the estimate,
      as Pyro's ``Trace_ELBO`` for reparameterisable guides. (Non-reparameterised
      guide sites get no score-function term here: their gradient is biased.)
    - ``"stl"``, sticking the landing [2]: the total derivative of
      :math:`\\log q_\\phi(z_\\phi)` is a path term plus the score
      :math:`\\partial_\\phi \\log q_\\phi(z)`, whose expectation is zero; STL
      drops the score by evaluating :math:`\\log q` with the guide's
      distribution parameters detached, while :math:`z` keeps its pathwise
      gradient:

      .. math::

          \\widehat{\\nabla_\\phi \\mathcal L}_{\\mathrm{STL}} = \\frac1K \\sum_k
              \\nabla_z\\big[\\log p_\\theta(x, z) - \\log q_{\\bot(\\phi)}(z \\mid x)\\big]_{z = z_k}
              \\frac{\\partial z_k}{\\partial \\phi},

      unbiased, and with zero variance when :math:`q` is the exact posterior.
      The decoder gradient is unchanged. Needs reparameterised guide sites
      whose parameters can be detached (see :func:`detach_distribution`), and
      guides whose distribution parameters do not depend on other latent
      samples (checked once).

    :param int num_particles: particles per datum, vectorised. Default 1.
    :param str estimator: ``"standard"`` or ``"stl"``. Default ``"standard"``.
    """

    def __init__(self, num_particles: int = 1, estimator: ElboEstimator = "standard") -> None:
        super().__init__()
        self.num_particles = check_count("num_particles", num_particles)
        self.estimator = _check_choice(
            "estimator", estimator, ElboEstimator, "elbo",
            " Try objective='iwae' with estimator='dreg'." if estimator == "dreg" else "",
        )

    def __repr__(self) -> str:
        return f"ElboObjective(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        nesting = self._nesting(model, guide, args, kwargs) if self.num_particles > 1 else 0
        model_trace, guide_trace, _ = trace_pair(model, guide, args, kwargs, self.num_particles, nesting)
        stl = self.estimator == "stl"
        if stl:
            self._check_detachable_once(model, model_trace, guide_trace, "estimator='stl'")
        return _elbo_terms_from_traces(model_trace, guide_trace, kl_weight, self.num_particles, stl)


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _auxiliary_sites(model_trace: Any, guide_trace: Any) -> list[tuple[str, dict]]:
    """The guide's auxiliary sites: latent guide sites the model lacks, marked
    ``infer={"is_auxiliary": True}``; an unmarked one is an error (as in
    :func:`pvae.infer.traces.site_log_probs`). Dict look-ups only: for an
    ordinary pair every guide site is in the model and nothing else runs."""
    model_nodes = model_trace.nodes
    out: list[tuple[str, dict]] = []
    unmarked: list[str] = []
    for name, q in guide_trace.nodes.items():
        if name in model_nodes or q["type"] != "sample" or q["is_observed"] or site_is_subsample(q):
            continue  # observed guide sites (auxiliary classifiers) belong to no bound
        if q["infer"].get("is_auxiliary", False):
            out.append((name, q))
        else:
            unmarked.append(name)
    if unmarked:
        raise _guide_only_error(unmarked)
    return out


def _masked(lp: torch.Tensor, mask: Any) -> torch.Tensor:
    """``lp`` where ``mask``, 0 elsewhere; ``mask`` a bool tensor or a Python bool
    (``poutine.mask(mask=False)``)."""
    if isinstance(mask, bool):
        return lp if mask else torch.zeros_like(lp)
    return torch.where(mask, lp, lp.new_zeros(()))


def _site_log_prob(site: dict) -> torch.Tensor:
    """The site's masked log-density, elementwise over its batch shape."""
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = _masked(lp, site["mask"])
    return lp


def _scaled(scale: Any, log_prob: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """The site's scaled total: ``total`` itself for scale 1, ``scale * total`` for a
    number, and ``(scale * log_prob).sum()`` for a tensor scale (per-datum weights)."""
    if isinstance(scale, torch.Tensor):
        return (scale * log_prob).sum()
    return total if scale == 1.0 else scale * total


def _elbo_terms_from_traces(
    model_trace: Any, guide_trace: Any, kl_weight: float, num_particles: int, stl: bool = False
) -> StepTerms:
    """Sum the traces into the loss and the detached reconstruction / KL totals.

    Scales of 1 and a KL weight of 1 cost no tensor operation: this runs once
    per training step. With ``stl`` the guide's log-densities are evaluated
    with detached distribution parameters.
    """
    rec: list[torch.Tensor] = []
    rec_scaled: list[torch.Tensor] = []
    kl: list[torch.Tensor] = []
    kl_scaled: list[torch.Tensor] = []
    guide_nodes = guide_trace.nodes
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp_each = _site_log_prob(site)
        lp = lp_each.sum()
        if site["is_observed"]:
            rec.append(lp)
            rec_scaled.append(_scaled(site["scale"], lp_each, lp))
            continue
        q = guide_nodes.get(name)
        if q is None:
            raise ValueError(
                f"latent site {name!r} of the model has no counterpart in the guide. "
                f"Try adding pyro.sample({name!r}, ...) to the guide."
            )
        if stl:
            _check_reparameterized(name, q["fn"], "estimator='stl'")
            q = {**q, "fn": detach_distribution(q["fn"], name)}
        lq_each = _site_log_prob(q)
        lq = lq_each.sum()
        kl.append(lq - lp)
        scaled_p, scaled_q = _scaled(site["scale"], lp_each, lp), _scaled(q["scale"], lq_each, lq)
        kl_scaled.append(kl[-1] if scaled_p is lp and scaled_q is lq else scaled_q - scaled_p)
    # auxiliary guide sites: log q enters the rate with no model term, as in Pyro's Trace_ELBO
    for name, q in _auxiliary_sites(model_trace, guide_trace):
        if stl:
            _check_reparameterized(name, q["fn"], "estimator='stl'")
            q = {**q, "fn": detach_distribution(q["fn"], name)}
        lq_each = _site_log_prob(q)
        lq = lq_each.sum()
        kl.append(lq)
        kl_scaled.append(_scaled(q["scale"], lq_each, lq))
    if not rec:
        raise ValueError("the model has no observed sample site: nothing to fit. Pass the data as obs=.")
    total_kl_scaled = _total(kl_scaled, rec[0])
    if not _unit(kl_weight):
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


# -- importance-weighted objectives ---------------------------------------------------
class IWAEObjective(Objective):
    """Importance-weighted bounds: IWAE [1] and Renyi's variational bound [4].

    With :math:`K` particles :math:`z_k = g_\\phi(\\epsilon_k, x) \\sim q_\\phi(z \\mid x)`
    drawn in one vectorised pass, per datum

    .. math::

        \\log w_k = \\log p_\\theta(x \\mid z_k)
            + w\\,\\big[\\log p_\\theta(z_k) - \\log q_\\phi(z_k \\mid x)\\big],

        \\mathcal L_\\alpha = \\frac{1}{1 - \\alpha}
            \\log \\frac1K \\sum_{k=1}^K w_k^{1-\\alpha},
        \\qquad \\text{loss} = -\\sum_b s\\, \\mathcal L_\\alpha(x_b),

    where :math:`w` is the KL warm-up weight (1 after warm-up), :math:`s` the
    data plate's subsample scale (1 in :func:`pvae.fit`), and
    :math:`\\alpha = 0` gives IWAE, :math:`\\mathcal L_0 = \\log \\frac1K \\sum_k w_k`
    [1]. :math:`\\alpha \\to 1` is the ELBO: use :class:`ElboObjective`.
    :math:`\\alpha < 0` is allowed: there the exact Renyi bound lies above
    :math:`\\log p(x)` [4]; its :math:`K`-sample estimate, like IWAE's, is biased
    downwards (Jensen).

    **Site scales.** Log-weights are built from *unscaled* per-datum
    log-densities (:mod:`pvae.infer.traces`), so the bound of a datum never
    depends on the minibatch; a subsample scale common to every site of the
    data plate multiplies the per-datum loss, as in the ELBO. A latent site
    with another scale (beta via ``poutine.scale``) raises ``ValueError``: beta
    reweights the KL *term* of the ELBO, and an importance weight has no KL
    term to reweight. The warm-up weight :math:`w` above is the one principled
    reweighting (an annealed target :math:`p(x \\mid z)\\,p(z)^w q(z)^{1-w}`).

    **Gradient estimators.** With self-normalised weights
    :math:`\\tilde v_k = \\mathrm{softmax}_k((1-\\alpha) \\log w_k)` (for IWAE
    :math:`\\tilde w_k = w_k / \\sum_j w_j`):

    - ``"standard"``: the reparameterised gradient of the estimate,
      :math:`\\nabla \\hat{\\mathcal L}_\\alpha = \\sum_k \\tilde v_k \\nabla \\log w_k`.
      Its encoder part contains the score terms
      :math:`-w \\sum_k \\tilde v_k \\partial_\\phi \\log q_\\phi(z_k)`, whose
      signal-to-noise ratio decays as :math:`K` grows [5].
    - ``"dreg"``, doubly reparameterised [3]: reparameterising the score terms
      once more (:math:`\\mathbb E_q[f(z)\\, \\partial_\\phi \\log q_\\phi(z)]
      = \\mathbb E[\\partial_z f\\, \\partial_\\phi z]` with
      :math:`f = \\tilde v_k`, :math:`\\partial_{z_k} \\tilde v_k = (1-\\alpha)
      \\tilde v_k (1 - \\tilde v_k) \\partial_{z_k} \\log \\hat w_k`) gives the
      same expectation as

      .. math::

          \\widehat{\\nabla_\\phi \\mathcal L}_{\\mathrm{DReG}} = \\sum_k
              \\tilde v_k\\, c_k\\, \\frac{\\partial \\log \\hat w_k}{\\partial z_k}
              \\frac{\\partial z_k}{\\partial \\phi},
          \\qquad c_k = 1 - w (1 - \\alpha)(1 - \\tilde v_k),

      where :math:`\\log \\hat w_k` is :math:`\\log w_k` with the guide's
      distribution parameters detached (:math:`q_{\\bot(\\phi)}`). For IWAE
      (:math:`\\alpha = 0, w = 1`), :math:`\\tilde v_k c_k = \\tilde w_k^2`:
      Tucker et al.'s estimator [3, eq. 7]. With :math:`K = 1` it is STL [2].
      The model (decoder) keeps the standard gradient
      :math:`\\nabla_\\theta \\hat{\\mathcal L}_\\alpha = \\sum_k \\tilde v_k
      \\nabla_\\theta \\log p_\\theta(x, z_k)`.

      *The decoder/encoder split.* The common one-line surrogate
      :math:`\\sum_k \\bot(\\tilde w_k^2) \\log \\hat w_k` gives the DReG encoder
      gradient but weights the decoder gradient by :math:`\\tilde w_k^2`
      instead of :math:`\\tilde w_k` (biased for :math:`\\theta`), so
      implementations add a second surrogate for the decoder with :math:`z`
      detached, :math:`\\sum_k \\bot(\\tilde w_k - \\tilde w_k^2) \\log p_\\theta(x,
      \\bot(z_k))`, which costs a second decoder pass. Here one surrogate and one
      decoder pass give both exactly:

      .. math::

          S = \\sum_k \\bot(\\tilde v_k) \\log \\hat w_k(\\bar z_k),
          \\qquad \\bar z_k = z_k \\text{ in value}, \\quad
          \\frac{\\partial \\bar z_k}{\\partial z_k} = \\bot(c_k),

      (a gradient hook scales what flows back into each latent sample by
      :math:`c_k`). :math:`\\theta` enters :math:`S` only through
      :math:`\\log p_\\theta(x, z_k)` at fixed :math:`z_k`, so
      :math:`\\nabla_\\theta S = \\sum_k \\tilde v_k \\nabla_\\theta \\log
      p_\\theta(x, z_k)`, the standard IWAE gradient (a); :math:`\\phi` enters
      only through :math:`z_k` (the parameters of :math:`q` are detached), so
      :math:`\\nabla_\\phi S = \\sum_k \\tilde v_k c_k\\, \\partial_{z_k} \\log \\hat
      w_k\\, \\partial_\\phi z_k`, the DReG gradient (b). The loss *value* is
      the bound's.

      Needs reparameterised guide sites whose parameters can be detached (see
      :func:`detach_distribution`) and whose parameters do not depend on other
      latent samples of the guide (checked once: detaching would then also cut
      that path, and bias the estimator).

    Every latent site must be reparameterised (``fn.has_rsample``): score-function
    (REINFORCE) estimators for discrete latents are out of scope. Every site must
    lie in the data plate (found by ``pvae.infer.traces.find_data_plate``).

    :param int num_particles: :math:`K`, vectorised. Default 1.
    :param str estimator: ``"standard"`` or ``"dreg"``. Default ``"standard"``.
    :param float alpha: Renyi's :math:`\\alpha`, any real number but 1.
        Default 0 (IWAE).
    """

    def __init__(self, num_particles: int = 1, estimator: IWAEEstimator = "standard", alpha: float = 0.0) -> None:
        super().__init__()
        self.num_particles = check_count("num_particles", num_particles)
        objective = "iwae" if alpha == 0 else "renyi"
        self.estimator = _check_choice(
            "estimator", estimator, IWAEEstimator, objective,
            " Try objective='elbo' with estimator='stl' (STL is DReG with K = 1)." if estimator == "stl" else "",
        )
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite real number, got {alpha!r}.")
        if alpha == 1:
            raise ValueError(
                "alpha=1 is the ELBO (the Renyi bound's limit as alpha -> 1), where the formula "
                "divides by zero. Try objective='elbo' (or alpha=0.99)."
            )
        self.alpha = float(alpha)
        name = "iwae" if self.alpha == 0 else f"renyi (alpha={self.alpha:g})"
        self._what = f"objective {name!r} with estimator={self.estimator!r}"

    def __repr__(self) -> str:
        return (
            f"IWAEObjective(num_particles={self.num_particles}, estimator={self.estimator!r}, "
            f"alpha={self.alpha!r})"
        )

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        K, alpha = self.num_particles, self.alpha
        dreg = self.estimator == "dreg"
        nesting = self._nesting(model, guide, args, kwargs)
        model_trace, guide_trace, particle_dim = trace_pair(model, guide, args, kwargs, K, nesting)
        parts = _log_weight_parts(model_trace, guide_trace, particle_dim, K, dreg, self._what)
        log_lik, log_prior, log_q, scale = parts.log_lik, parts.log_prior, parts.log_q, parts.scale
        latent_term = log_prior - log_q
        log_w = log_lik + (latent_term if _unit(kl_weight) else kl_weight * latent_term)
        one_minus_alpha = 1.0 - alpha
        log_k = math.log(K)
        if dreg:
            self._check_detachable_once(model, model_trace, guide_trace, "estimator='dreg'")
            with torch.no_grad():
                scaled = log_w if alpha == 0.0 else one_minus_alpha * log_w
                bound = (torch.logsumexp(scaled, 0) - log_k) / one_minus_alpha
                v = torch.softmax(scaled, 0)  # (K, batch)
                c = 1.0 - kl_weight * one_minus_alpha * (1.0 - v)
            surrogate = -(v * log_w).sum()
            target = -bound.sum()
            loss = surrogate + (target - surrogate).detach()  # the bound's value, DReG's gradient
            if torch.is_grad_enabled():
                _scale_latent_gradients(parts, c, particle_dim, parts.data_dim)
        else:
            if alpha == 0.0:
                bound = torch.logsumexp(log_w, 0) - log_k
            else:
                bound = (torch.logsumexp(one_minus_alpha * log_w, 0) - log_k) / one_minus_alpha
            loss = -bound.sum()
        if scale != 1.0:
            loss = scale * loss
        with torch.no_grad():
            if not _unit(kl_weight):
                log_w = log_lik + latent_term
                bound = (torch.logsumexp(one_minus_alpha * log_w, 0) - log_k) / one_minus_alpha
            bound_total = bound.detach().sum()
            rec_total = log_lik.detach().sum() / K
            kl_total = -latent_term.detach().sum() / K
        return StepTerms(loss, rec_total, kl_total, bound_total)


@dataclass
class _Parts:
    log_lik: torch.Tensor  # (K, batch), summed over observed sites
    log_prior: torch.Tensor  # (K, batch), summed over latent sites
    log_q: torch.Tensor  # (K, batch); with detached guide parameters under DReG
    scale: float  # the data plate's subsample scale
    latent: list[str]
    guide_sites: list[dict]
    data_dim: int


def _log_weight_parts(
    model_trace: Any, guide_trace: Any, particle_dim: int, num_particles: int, detach: bool, what: str
) -> _Parts:
    """Per-datum ``(K, batch)`` log-densities from the two traces.

    The same reduction as :func:`pvae.infer.traces.site_log_probs` (unscaled,
    masked, every batch dim but the particle and data dims summed), written
    out here for the training loop: no trace copies, no per-site dicts.
    """
    _, data_dim = find_data_plate(model_trace)
    ndim = -particle_dim
    data_pos = ndim + data_dim
    batch = None
    lik: list[torch.Tensor] = []
    prior: list[torch.Tensor] = []
    guide: list[torch.Tensor] = []
    latent: list[str] = []
    guide_sites: list[dict] = []
    scale: float | None = None
    site_scales: list[tuple[str, float]] = []
    guide_nodes = guide_trace.nodes
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frame = None
        for f in site["cond_indep_stack"]:
            if f.dim == data_dim and f.vectorized and f.name != PARTICLE_PLATE:
                frame = f
        if frame is None:
            raise ValueError(
                f"site {name!r} lies outside the data plate: it is a global variable, and "
                f"{what} needs per-datum importance weights, so every latent and observation "
                "must sit inside the data plate. Try fitting global variables as parameters "
                "(pyro.param), or objective='elbo'."
            )
        if batch is None:
            batch = frame.size
        s = _float_scale(name, site["scale"], what)
        lp = _per_datum(site["fn"].log_prob(site["value"]), site["mask"], name, ndim, data_pos, num_particles, batch)
        if site["is_observed"]:
            lik.append(lp)
            if scale is None:
                scale = s
            site_scales.append((name, s))
            continue
        q = guide_nodes.get(name)
        if q is None or q["type"] != "sample":
            raise ValueError(
                f"latent site {name!r} of the model has no counterpart in the guide. "
                f"Try adding pyro.sample({name!r}, ...) to the guide."
            )
        fn = q["fn"]
        _check_reparameterized(name, fn, what)
        if detach:
            fn = detach_distribution(fn, name)
        site_scales.append((name, s))
        site_scales.append((name, _float_scale(name, q["scale"], what)))
        prior.append(lp)
        guide.append(_per_datum(fn.log_prob(q["value"]), q["mask"], name, ndim, data_pos, num_particles, batch))
        latent.append(name)
        guide_sites.append(q)
    # auxiliary guide sites: log q enters the log-weight with no model term
    for name, q in _auxiliary_sites(model_trace, guide_trace):
        if not any(f.dim == data_dim and f.vectorized for f in q["cond_indep_stack"]):
            raise ValueError(
                f"auxiliary guide site {name!r} lies outside the data plate: it is a global variable "
                f"(e.g. the joint latent of an AutoContinuous guide), and {what} needs per-datum "
                "importance weights. Try a guide whose auxiliary sites sit in the data plate "
                "(e.g. AutoNormal), or objective='elbo'."
            )
        fn = q["fn"]
        _check_reparameterized(name, fn, what)
        if detach:
            fn = detach_distribution(fn, name)
        site_scales.append((name, _float_scale(name, q["scale"], what)))
        guide.append(_per_datum(fn.log_prob(q["value"]), q["mask"], name, ndim, data_pos, num_particles, batch))
        latent.append(name)
        guide_sites.append(q)
    if not lik:
        raise ValueError("the model has no observed sample site: nothing to fit. Pass the data as obs=.")
    for name, s in site_scales:
        if s != scale:
            raise ValueError(
                f"site {name!r} has scale {s:g} while the observed data have scale {scale:g} "
                "(beta via poutine.scale, or a per-site weight): importance-weighted objectives "
                f"use whole log-densities, and beta is an ELBO-only notion, so {what} cannot honour "
                "it. Try objective='elbo' for a beta-VAE, or beta=1 (kl_warmup=... anneals the latent "
                "terms of the log-weights)."
            )
    if not latent:
        raise ValueError(f"the model has no latent sample site: {what} has nothing to importance-weight.")
    like = lik[0]
    return _Parts(_total(lik, like), _total(prior, like), _total(guide, like), scale, latent, guide_sites, data_dim)


def _float_scale(name: str, scale: Any, what: str) -> float:
    if isinstance(scale, (int, float)):
        return float(scale)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return float(scale)
    raise ValueError(
        f"site {name!r} has a tensor scale of shape {tuple(scale.shape)}: per-element weights "
        f"are not supported by {what}. Try objective='elbo'."
    )


def _per_datum(
    lp: torch.Tensor, mask: Any, name: str, ndim: int, data_pos: int, num_particles: int, batch: int
) -> torch.Tensor:
    """A site's ``log_prob`` (batch shape, right-aligned in ``ndim`` dims with the
    particle dim leftmost) reduced to ``(num_particles, batch)``."""
    if mask is not None:
        lp = _masked(lp, mask)
    if lp.dim() > ndim:
        raise ValueError(
            f"site {name!r} has log_prob shape {tuple(lp.shape)}, with dims left of every plate "
            "(enumerated or unplated batch dims). Declare them with pyro.plate or .to_event()."
        )
    if lp.dim() < ndim:
        lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape))
    if ndim > 2 or data_pos != 1:
        drop = [d for d in range(1, ndim) if d != data_pos]
        if drop:
            lp = lp.sum(drop, keepdim=True)
        lp = lp.reshape(lp.shape[0], -1)
    if lp.shape != (num_particles, batch):
        lp = lp.expand(num_particles, batch)
    return lp


def _scale_latent_gradients(parts: _Parts, c: torch.Tensor, particle_dim: int, data_dim: int) -> None:
    """Register ``grad -> c * grad`` on every latent sample of the guide.

    The guide's distribution parameters do not depend on other latent samples
    (checked), so no gradient path runs from one latent sample into another
    and every path from the loss to the encoder is scaled exactly once. A point
    mass (``Delta``: an autoguide's ``z = T(u)`` of its auxiliary draw ``u``, or a
    MAP site) is not hooked: its paths reach the draw ``u`` and are scaled there,
    and a MAP value's gradient keeps IWAE's own weights.
    """
    ndim = -particle_dim
    for site in parts.guide_sites:
        z = site["value"]
        if not (isinstance(z, torch.Tensor) and z.requires_grad) or is_point_mass(site["fn"]):
            continue  # a point mass is no draw: the paths into it are scaled at the draw it is made of
        fn = site["fn"]
        batch_ndim, event_ndim = len(fn.batch_shape), len(fn.event_shape)
        shape = [1] * ndim
        shape[0] = c.shape[0]
        shape[ndim + data_dim] = c.shape[1]
        shape = shape[ndim - batch_ndim :] if batch_ndim < ndim else shape
        factor = c.reshape(shape + [1] * event_ndim)
        z.register_hook(lambda grad, factor=factor: grad * factor)


def _check_reparameterized(name: str, fn: Distribution, what: str) -> None:
    if not getattr(fn, "has_rsample", False):
        raise ValueError(
            f"guide site {name!r} ({type(fn).__name__}) is not reparameterised (has_rsample is "
            f"False): {what} differentiates through the latent samples, and score-function "
            "(REINFORCE) estimators for such sites are out of scope. Try a reparameterised "
            "relaxation (e.g. dist.RelaxedBernoulliStraightThrough / RelaxedOneHotCategorical), "
            "or Pyro's score-function ELBO (pyro.infer.TraceGraph_ELBO) for discrete latents."
        )


def _check_no_latent_parameters(guide_trace: Any, latent: list[str], what: str) -> None:
    """Raise if some guide site's distribution parameters depend on an earlier
    latent sample of the guide (a hierarchical guide). A point mass at a function
    of an earlier draw (Pyro's autoguides: ``u ~ q(u)``, then ``z ~ Delta(T(u),
    log_density)``) is not hierarchical in this sense: it has no parameters to
    detach (see :func:`detach_distribution`)."""
    earlier: list[tuple[str, torch.Tensor]] = []
    for name in [n for n in guide_trace.nodes if n in set(latent)]:
        site = guide_trace.nodes[name]
        params = [] if is_point_mass(site["fn"]) else [t for t in _tensors(site["fn"]) if t.requires_grad]
        if earlier and params:
            grads = torch.autograd.grad(
                sum(p.sum() for p in params), [z for _, z in earlier], allow_unused=True, retain_graph=True
            )
            for (upstream, _), g in zip(earlier, grads):
                if g is not None:
                    raise ValueError(
                        f"the parameters of guide site {name!r} depend on the latent sample "
                        f"{upstream!r} (a hierarchical guide): {what} evaluates log q with detached "
                        "distribution parameters, which would also cut that path and bias the "
                        "gradient. Try estimator='standard'."
                    )
        z = site["value"]
        if isinstance(z, torch.Tensor) and z.requires_grad:
            earlier.append((name, z))


def _tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (Distribution, Transform)):
            stack.extend(vars(o).values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return out


# -- detaching a guide's distribution parameters ------------------------------------------
def detach_distribution(fn: Distribution, site: str | None = None) -> Distribution:
    """A copy of ``fn`` with every distribution parameter detached from the graph.

    ``detach_distribution(q).log_prob(z)`` is :math:`\\log q_{\\bot(\\phi)}(z)`:
    equal in value to ``q.log_prob(z)``, with gradient only through ``z``,
    which is what STL [2] and DReG [3] need.

    Handles any torch / Pyro distribution that keeps its parameters as tensors
    (its ``arg_constraints`` entries stored on the instance: ``Normal``,
    ``MultivariateNormal``, ``LowRankMultivariateNormal``, ``Gamma``,
    ``Dirichlet``, ``StudentT``, ...) or in nested distributions (``Beta``), the
    wrappers ``Independent``, Pyro's ``ExpandedDistribution`` and
    ``MaskedDistribution``, and ``TransformedDistribution`` (``LogNormal``,
    relaxed distributions, ...) whose transforms are parameter-free or hold
    plain tensors (``AffineTransform``); cached transform values are dropped
    so that ``log_prob`` inverts the detached transforms.

    A point mass (``Delta``, also inside ``Independent`` / ``MaskedDistribution``)
    is returned as it is: its ``log_prob`` at its own value is its
    ``log_density``, for an autoguide's :math:`z = T(u)` the log-Jacobian of
    :math:`T^{-1}`, a function of the draw :math:`u` whose path derivative STL and
    DReG keep; it has no distribution parameter of its own (the parameters are
    those of :math:`q(u)`, detached at the auxiliary site).

    :param fn: a distribution, typically a guide site's ``site["fn"]``.
    :param str site: the site's name, for error messages.
    :raises ValueError: naming the site and the distribution type when its
        parameters cannot be found (e.g. a transform that is an ``nn.Module``,
        such as a normalising flow).
    """
    if is_point_mass(fn):
        return fn
    return _detach(fn, site, fn)


def _detach(obj: Any, site: str | None, top: Distribution) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, Distribution):
        state = vars(obj)
        nested = any(isinstance(v, Distribution) for v in state.values())
        if not nested and not any(k in state for k in getattr(obj, "arg_constraints", {})):
            raise _cannot_detach(site, top, obj, "its parameters are not stored on the instance")
        new = object.__new__(type(obj))
        new.__dict__.update({k: _detach(v, site, top) for k, v in state.items()})
        return new
    if isinstance(obj, Transform):
        if isinstance(obj, torch.nn.Module):
            raise _cannot_detach(site, top, obj, "it has a transform that is an nn.Module")
        state = dict(vars(obj))
        # ``_inv`` links a transform and its inverse both ways: an inverse holds
        # its forward transform there (copied), a forward one a cached inverse (dropped)
        inverse_of = state.pop("_inv", None)
        new = object.__new__(type(obj))
        new.__dict__.update({k: _detach(v, site, top) for k, v in state.items()})
        if "_inv" in vars(obj):
            new._inv = _detach(inverse_of, site, top) if isinstance(obj, _InverseTransform) else None
        if "_cached_x_y" in new.__dict__:
            new._cached_x_y = (None, None)  # log_prob must invert the detached transform
        return new
    if isinstance(obj, torch.nn.Module):
        raise _cannot_detach(site, top, obj, "it holds an nn.Module")
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return type(obj)(_detach(v, site, top) for v in obj)
    return obj


def _cannot_detach(site: str | None, top: Distribution, part: Any, why: str) -> ValueError:
    where = f"guide site {site!r}" if site is not None else "the distribution"
    inner = "" if part is top else f" (inside it, {type(part).__name__})"
    return ValueError(
        f"cannot detach the parameters of {where}: {type(top).__name__}{inner}, because {why}. "
        "STL and DReG need a reparameterised guide whose distribution parameters are tensors "
        "that can be detached. Try a torch/Pyro distribution built from tensors (dist.Normal, "
        "dist.MultivariateNormal, ...), or estimator='standard'."
    )


# -- the registry ----------------------------------------------------------------------
_REGISTRY: dict[str, tuple[Callable[..., Objective], tuple[str, ...]]] = {
    "elbo": (ElboObjective, ("num_particles", "estimator")),
    "iwae": (IWAEObjective, ("num_particles", "estimator")),
    "renyi": (IWAEObjective, ("num_particles", "estimator", "alpha")),
}


def register_objective(name: str, factory: Callable[..., Objective], options: Sequence[str] = ()) -> None:
    """Make ``name`` an objective of :func:`make_objective`, and so of
    ``pvae.fit(objective=name)`` and of a program's declared ``objectives``.

    A program whose training needs its own loss (e.g.
    :class:`pvae.causal.CEVAE`'s auxiliary terms) registers it under a name and
    declares that name first in its ``objectives``, so that ``pvae.fit(program,
    ...)`` trains it correctly by default.

    :param str name: the objective's name; a name already taken is refused.
    :param factory: called with the options given, returns the :class:`Objective`.
    :param options: the keyword options ``factory`` takes (``pvae.fit`` passes
        ``num_particles``, so list it).
    :raises ValueError: if ``name`` is taken.
    """
    if name in _REGISTRY:
        raise ValueError(f"objective {name!r} is already registered. Try another name.")
    _REGISTRY[name] = (factory, tuple(options))


def make_objective(objective: str | Objective = "elbo", **kwargs: Any) -> Objective:
    """An :class:`Objective` by name, or ``objective`` itself if it is one.

    ============  ===========================================  ===========================
    name          options                                      estimator
    ============  ===========================================  ===========================
    ``"elbo"``    ``num_particles``, ``estimator``             ``"standard"``, ``"stl"``
    ``"iwae"``    ``num_particles``, ``estimator``             ``"standard"``, ``"dreg"``
    ``"renyi"``   ``num_particles``, ``estimator``, ``alpha``  ``"standard"``, ``"dreg"``
    ============  ===========================================  ===========================

    Programs register their own names (:func:`register_objective`):
    ``"enum_elbo"`` (:class:`EnumElboObjective`) and ``"cevae"``
    (:class:`pvae.causal.CEVAEObjective`).

    Example: ``pvae.fit(vae, x, objective=make_objective("iwae", num_particles=5,
    estimator="dreg"))``; ``pvae.fit(vae, x, objective="iwae", num_particles=5)``
    uses the standard estimator.

    :param str objective: ``"elbo"``, ``"iwae"``, ``"renyi"`` or a registered name.
    :param kwargs: options of the objective, as above.
    :raises ValueError: on an unknown name or option, listing the allowed ones.
    """
    if isinstance(objective, Objective):
        return objective
    if objective not in _REGISTRY:
        raise ValueError(f"objective must be one of {sorted(_REGISTRY)}, got {objective!r}.")
    factory, options = _REGISTRY[objective]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        hint = " Try objective='renyi' for alpha." if "alpha" in unknown else ""
        raise ValueError(
            f"objective {objective!r} takes the options {list(options)}, got unknown {unknown}.{hint}"
        )
    return factory(**kwargs)


# -- exact enumeration of discrete latents (issue 6) ----------------------------------------
from pyro.infer import TraceEnum_ELBO  # noqa: E402
from pyro.infer.traceenum_elbo import _compute_dice_elbo, _compute_model_factors  # noqa: E402
from pyro.infer.util import Dice  # noqa: E402
from pyro.ops import packed  # noqa: E402

__all__ += ["EnumElboObjective"]


class EnumElboObjective(Objective):
    """The ELBO with discrete latents summed out exactly: Pyro's ``TraceEnum_ELBO``.

    Guide sites marked ``infer={"enumerate": "parallel"}`` are not sampled:
    every value is enumerated in a new tensor dimension left of the
    program's plates, and expectations under them are exact sums weighted by
    the guide's probabilities. For a discrete guide site :math:`y` and the
    rest of the latents :math:`z`,

    .. math::

        \\mathcal L(x) = \\sum_{y} q(y \\mid x)\\, \\mathbb E_{q(z \\mid x, y)}\\Big[
            \\log p(x \\mid y, z) - w \\log \\frac{q(y \\mid x)\\, q(z \\mid x, y)}{p(y)\\, p(z)}\\Big],

    with the KL warm-up weight :math:`w` of :func:`pvae.fit` on the latent
    terms (1 after warm-up); the gradient of the :math:`y` sum is exact, with
    no score-function variance (Kingma et al. 2014; Obermeyer et al. 2019).
    Model sites marked for enumeration (and absent from the guide) are
    marginalised by tensor variable elimination, as in ``TraceEnum_ELBO``.

    **The split of the history.** Without model-side enumeration the loss is
    computed from the enumerated traces as two DiCE expectations (Pyro's own
    estimator, ``pyro.infer.util.Dice``), one of the observed sites and one
    of the latent sites, so the trainer's ``reconstruction``
    (:math:`\\mathbb E_q \\log p(x \\mid \\cdot)`) and ``kl``
    (:math:`\\mathbb E_q[\\log q - \\log p]` over every latent, enumerated ones
    included) are exact (given the continuous draws) and sum to the ELBO. With
    model-side enumeration no such split exists (the marginalised latents have
    no :math:`q`): then ``reconstruction`` and ``kl`` are NaN, the ELBO is
    reported as ``bound`` (the history's ``bound`` column), and ``kl_warmup``
    is refused.

    **Auxiliary losses.** Some programs add a loss that belongs to no bound,
    e.g. Kingma et al.'s classification term of the semi-supervised VAE. With
    ``auxiliary="auto"`` (default), if ``model`` is a bound method of an object
    with a method ``auxiliary_loss(*args, **kwargs) -> Tensor`` (a scalar,
    summed over the batch), its value is added to the loss, and to nothing
    else; pass a callable to use another one, or None for none.

    Use it by name, ``pvae.fit(ssvae, (x, y), objective="enum_elbo")``, or as
    an instance. Pyro-ppl 1.9's private helpers ``_compute_model_factors`` and
    ``_compute_dice_elbo`` of ``pyro.infer.traceenum_elbo`` build the factors.

    :param int num_particles: particles for the sampled (non-enumerated)
        sites, vectorised. Default 1.
    :param int max_plate_nesting: the program's plate depth; enumeration
        dims go left of it. Guessed by one run of the program if None.
    :param auxiliary: ``"auto"``, a callable taking the program's arguments
        and returning a scalar loss, or None. Default ``"auto"``.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: int | None = None,
        auxiliary: Literal["auto"] | Callable[..., torch.Tensor] | None = "auto",
    ) -> None:
        super().__init__()
        self.num_particles = check_count("num_particles", num_particles)
        if max_plate_nesting is not None and (
            isinstance(max_plate_nesting, bool) or int(max_plate_nesting) != max_plate_nesting or max_plate_nesting < 0
        ):
            raise ValueError(f"max_plate_nesting must be a non-negative integer or None, got {max_plate_nesting!r}.")
        if not (auxiliary is None or auxiliary == "auto" or callable(auxiliary)):
            raise ValueError(f"auxiliary must be 'auto', a callable or None, got {auxiliary!r}.")
        self.max_plate_nesting = None if max_plate_nesting is None else int(max_plate_nesting)
        self.auxiliary = auxiliary
        self._elbos: dict[int, TraceEnum_ELBO] = {}

    def __repr__(self) -> str:
        return (f"EnumElboObjective(num_particles={self.num_particles}, "
                f"max_plate_nesting={self.max_plate_nesting})")

    def _trace_enum(self, nesting: int) -> TraceEnum_ELBO:
        if nesting not in self._elbos:
            self._elbos[nesting] = TraceEnum_ELBO(
                num_particles=self.num_particles,
                max_plate_nesting=nesting,
                vectorize_particles=True,
                strict_enumeration_warning=False,
            )
        return self._elbos[nesting]

    def _auxiliary_fn(self, model: Callable) -> Callable[..., torch.Tensor] | None:
        if self.auxiliary != "auto":
            return self.auxiliary
        fn = getattr(getattr(model, "__self__", None), "auxiliary_loss", None)
        return fn if callable(fn) else None

    def __call__(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, kl_weight: float = 1.0
    ) -> StepTerms:
        nesting = self.max_plate_nesting
        if nesting is None:
            nesting = self._nesting(model, guide, args, kwargs)
        elbo_impl = self._trace_enum(nesting)
        loss = rec = kl = bound = None
        # one (model, guide) trace pair with parallel enumeration and vectorised
        # particles; several with sequential enumeration
        for model_trace, guide_trace in elbo_impl._get_traces(model, guide, args, kwargs):
            terms = _enum_terms(model_trace, guide_trace, kl_weight)
            loss = terms[0] if loss is None else loss + terms[0]
            rec = terms[1] if rec is None else rec + terms[1]
            kl = terms[2] if kl is None else kl + terms[2]
            if terms[3] is not None:
                bound = terms[3] if bound is None else bound + terms[3]
        if loss is None:
            raise ValueError("the program produced no trace to evaluate.")
        if self.num_particles != 1:
            loss, rec, kl = loss / self.num_particles, rec / self.num_particles, kl / self.num_particles
            bound = None if bound is None else bound / self.num_particles
        aux = self._auxiliary_fn(model)
        if aux is not None:
            loss = loss + aux(*args, **kwargs)
        return StepTerms(loss, rec, kl, bound)


def _as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else like.new_tensor(float(value))


def _enum_terms(
    model_trace: Any, guide_trace: Any, kl_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, reconstruction, kl, bound)`` of one enumerated trace pair (sums
    over the plates; reconstruction and kl detached and unscaled)."""
    _, log_factors, ordering, _, _ = _compute_model_factors(model_trace, guide_trace)
    like = next(s["value"] for s in model_trace.nodes.values() if s["type"] == "sample")
    like = like if like.is_floating_point() else like.float()
    if log_factors:  # model-side enumeration: only the whole ELBO exists
        if not _unit(kl_weight):
            raise ValueError(
                "kl_warmup needs the KL term of the ELBO, and a model with enumerated sites has none "
                "(its enumerated latents are summed out, with no guide). Try kl_warmup=None, or "
                "enumerate those sites in the guide."
            )
        elbo = _as_tensor(_compute_dice_elbo(model_trace, guide_trace), like)
        nan = like.new_tensor(math.nan)
        return -elbo, nan, nan, elbo.detach()
    dice = Dice(guide_trace, ordering)
    observed: dict[Any, list] = {}
    latent: dict[Any, list] = {}
    unscaled = any(not _unit_scale(s) for t in (model_trace, guide_trace) for s in t.nodes.values()
                   if s["type"] == "sample")
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample":
            target = observed if site["is_observed"] else latent
            target.setdefault(ordering[name], []).append(site["packed"]["log_prob"])
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            latent.setdefault(ordering[name], []).append(packed.neg(site["packed"]["log_prob"]))
    if not observed:
        raise ValueError("the model has no observed sample site: nothing to fit. Pass the data as obs=.")
    rec = _as_tensor(dice.compute_expectation(observed), like)
    neg_kl = _as_tensor(dice.compute_expectation(latent), like)
    loss = -(rec + (neg_kl if _unit(kl_weight) else kl_weight * neg_kl))
    with torch.no_grad():
        if unscaled:  # beta (poutine.scale) or subsampling: recompute with unit scales
            rec, neg_kl = _unscaled_expectations(dice, model_trace, guide_trace, ordering, like)
        return loss, rec.detach(), -neg_kl.detach(), None


def _unit_scale(site: dict) -> bool:
    scale = site["scale"]
    return isinstance(scale, (int, float)) and scale == 1.0


def _unscaled_expectations(
    dice: Any, model_trace: Any, guide_trace: Any, ordering: dict, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[log p(obs)] and E[log p(latent) - log q(latent)] with every site's scale 1 (beta = 1)."""
    observed: dict[Any, list] = {}
    latent: dict[Any, list] = {}

    def unscaled(site: dict) -> Any:
        return packed.scale_and_mask(site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"])

    for name, site in model_trace.nodes.items():
        if site["type"] == "sample":
            target = observed if site["is_observed"] else latent
            target.setdefault(ordering[name], []).append(unscaled(site))
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            latent.setdefault(ordering[name], []).append(packed.neg(unscaled(site)))
    return _as_tensor(dice.compute_expectation(observed), like), _as_tensor(dice.compute_expectation(latent), like)


register_objective("enum_elbo", EnumElboObjective, ("num_particles", "max_plate_nesting"))
