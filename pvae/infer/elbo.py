"""The evidence lower bound of any Pyro program, per datum, and its decomposition.

Every quantity here is a reduction of the per-site log-densities of
:func:`pvae.infer.traces.site_log_probs` (DESIGN principle 1). With particles
:math:`z_k \\sim q(z \\mid x)`, :math:`k = 1, \\dots, K`, the ELBO of one datum

.. math::

    \\mathrm{ELBO}(x) = \\mathbb E_{q(z \\mid x)}\\big[\\log p(x, z) - \\log q(z \\mid x)\\big]
        = \\underbrace{\\mathbb E_q[\\log p(x \\mid z)]}_{\\text{reconstruction}}
        - \\underbrace{\\mathrm{KL}\\big(q(z \\mid x) \\,\\|\\, p(z)\\big)}_{\\text{rate}}
        = \\log p(x) - \\mathrm{KL}\\big(q(z \\mid x) \\,\\|\\, p(z \\mid x)\\big)

is estimated by the particle mean. Log-densities are unscaled, so neither a
subsample factor nor ``poutine.scale`` (beta) enters a per-datum value.

References

1. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
2. M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the
   variational evidence lower bound. NIPS Workshop on Advances in Approximate
   Bayesian Inference, 2016.
3. A. A. Alemi et al. Fixing a Broken ELBO. ICML 2018 (distortion and rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pyro.distributions import MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch.distributions import Independent, kl_divergence

from ..models.base import program_verb

from .traces import SiteLogProbs, site_log_probs

__all__ = ["KL_METHODS", "ElboTerms", "elbo", "elbo_terms"]

KLMethod = Literal["auto", "analytic", "monte_carlo"]
KL_METHODS: tuple[str, ...] = ("auto", "analytic", "monte_carlo")


@dataclass(frozen=True)
class ElboTerms:
    """The ELBO of each datum and its reconstruction / KL split.

    All tensors are per datum, shape ``(batch,)``, except ``kl_per_dim``.
    ``elbo`` is ``reconstruction - kl`` by construction.

    :ivar torch.Tensor reconstruction: :math:`\\mathbb E_q[\\log p(x \\mid z)]`
        (the negative distortion), summed over observed sites.
    :ivar torch.Tensor kl: the rate :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z))`,
        summed over latent sites.
    :ivar kl_per_dim: ``(batch, latent_dim)`` KL of each scalar latent
        coordinate (sites concatenated in trace order, event dims flattened,
        inner plates summed) when every latent site's guide and prior factorise
        into univariate distributions (and the guide has no auxiliary site);
        else None. Sums to ``kl`` over the last dim.
    :ivar str kl_method: ``"analytic"`` or ``"monte_carlo"``: how ``kl`` was computed.
    :ivar int num_particles: particles per datum.
    :ivar torch.Tensor elbo_stderr: Monte Carlo standard error of ``elbo``
        (particle std over :math:`\\sqrt K`); NaN when ``num_particles == 1``.
    :ivar torch.Tensor kl_stderr: likewise for ``kl`` (0 for an analytic KL of a
        fixed prior).
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor | None
    kl_method: str
    num_particles: int
    elbo_stderr: torch.Tensor
    kl_stderr: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """Per-datum ELBO, ``reconstruction - kl``: ``(batch,)``."""
        return self.reconstruction - self.kl

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of floats), e.g. for JSON."""
        tensors = {
            "elbo": self.elbo,
            "reconstruction": self.reconstruction,
            "kl": self.kl,
            "kl_per_dim": self.kl_per_dim,
            "elbo_stderr": self.elbo_stderr,
            "kl_stderr": self.kl_stderr,
        }
        out: dict[str, Any] = {k: None if v is None else v.detach().cpu().tolist() for k, v in tensors.items()}
        out.update(kl_method=self.kl_method, num_particles=self.num_particles)
        return out


def _stderr(per_particle: torch.Tensor) -> torch.Tensor:
    """Standard error of the particle mean of a ``(K, batch)`` tensor; NaN for K = 1."""
    num_particles = per_particle.shape[0]
    if num_particles == 1:
        return torch.full_like(per_particle[0], math.nan)
    return per_particle.std(0) / math.sqrt(num_particles)


def _same_mask(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    try:
        a, b = torch.broadcast_tensors(a, b)
    except RuntimeError:
        return False
    return bool(torch.equal(a, b))


def _distribution_masks(fn: Any) -> list[Any]:
    """The masks of the ``MaskedDistribution`` layers of ``fn`` (``.mask(m)``),
    outermost first, looking through ``Independent`` and expanded wrappers;
    a mask of ``True`` masks nothing and is left out."""
    masks = []
    while True:
        if isinstance(fn, MaskedDistribution):
            if fn._mask is not True:
                masks.append(fn._mask)
            fn = fn.base_dist
        elif isinstance(fn, (Independent, ExpandedDistribution)):
            fn = fn.base_dist
        else:
            return masks


def _same_masks(q_site: dict, p_site: dict) -> bool:
    """Model and guide mask the site alike: equal ``poutine.mask`` masks and equal
    distribution-level (``.mask()``) masks. Only then does the registered KL,
    which masks by both sides' masks together, equal the expectation of
    :math:`\\log q(z) - \\log p(z)` with each side's own mask (the Monte Carlo
    form, :func:`elbo`)."""
    if not _same_mask(q_site["mask"], p_site["mask"]):
        return False
    q_masks, p_masks = _distribution_masks(q_site["fn"]), _distribution_masks(p_site["fn"])
    return len(q_masks) == len(p_masks) and all(_same_mask(a, b) for a, b in zip(q_masks, p_masks))


def _univariate_parts(q, p):
    """``(q_base, p_base, event_dim)`` if both sides are (Independent of) univariate, else None."""
    event_dim = len(q.event_shape)
    if event_dim != len(p.event_shape):
        return None
    if event_dim:
        if not (isinstance(q, Independent) and isinstance(p, Independent)):
            return None
        if q.reinterpreted_batch_ndims != event_dim or p.reinterpreted_batch_ndims != event_dim:
            return None
        q, p = q.base_dist, p.base_dist
        if q.event_shape or p.event_shape:
            return None
    return q, p, event_dim


def _analytic_kl(q, p, shape: torch.Size) -> torch.Tensor | None:
    """``KL(q || p)`` of torch's registry, broadcast to ``shape``; None if unregistered."""
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        return None
    return torch.as_tensor(kl).expand(shape)


def _site_kl(slp: SiteLogProbs, name: str, analytic: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-particle KL of one latent site: ``(K, batch)``, and ``(K, batch, E)`` or None.

    Analytic: torch's registered ``KL(q || p)`` of the site's guide and
    (replayed) prior distributions; ``(None, None)`` if there is none or if the
    model and guide masks (``poutine.mask`` or ``.mask()``) differ.
    Monte Carlo: :math:`\\log q(z_k) - \\log p(z_k)`.
    The per-coordinate split exists when both sides are (Independent of)
    univariate distributions.
    """
    q_site, p_site = slp.guide_trace.nodes[name], slp.model_trace.nodes[name]
    q, p = q_site["fn"], p_site["fn"]
    parts = _univariate_parts(q, p)
    if analytic:
        shape = torch.broadcast_shapes(q.batch_shape, p.batch_shape)
        kl = _analytic_kl(q, p, shape) if _same_masks(q_site, p_site) else None
        if kl is None:
            return None, None
        total = slp.per_datum(name, kl, guide=True)
        if parts is None:
            return total, None
        q_base, p_base, event_dim = parts
        elementwise = _analytic_kl(q_base, p_base, shape + q.event_shape)
        if elementwise is None:
            return total, None
        return total, _columns(slp.per_datum(name, elementwise, event_dim=event_dim, guide=True), event_dim)
    total = slp.log_q[name] - slp.log_p[name]
    if parts is None:
        return total, None
    q_base, p_base, event_dim = parts
    value = q_site["value"]
    log_q = slp.per_datum(name, q_base.log_prob(value), event_dim=event_dim, guide=True)
    log_p = slp.per_datum(name, p_base.log_prob(value), event_dim=event_dim)
    return total, _columns(log_q - log_p, event_dim)


def _columns(per_dim: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``(K, batch)`` of a scalar site -> ``(K, batch, 1)``; ``(K, batch, E)`` unchanged."""
    return per_dim if event_dim else per_dim.unsqueeze(-1)


def _kl_terms(slp: SiteLogProbs, kl: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Per-particle rate ``(K, batch)``, per-dim rate ``(K, batch, E)`` or None, and the method.

    Auxiliary guide sites (no model counterpart) add their :math:`\\log q(u_k)`
    to the Monte Carlo rate; they have no analytic KL and no latent coordinate
    (``kl_per_dim`` is then None)."""
    if not slp.latent and not slp.auxiliary:
        zeros = torch.zeros_like(slp.log_likelihood)
        return zeros, zeros.unsqueeze(-1)[..., :0], "analytic"
    if kl != "monte_carlo" and not slp.auxiliary:
        analytic = [_site_kl(slp, n, analytic=True) for n in slp.latent]
        missing = [n for n, (total, _) in zip(slp.latent, analytic) if total is None]
        if not missing:
            return (*_combine(analytic), "analytic")
        if kl == "analytic":
            name = missing[0]
            q, p = slp.guide_trace.nodes[name]["fn"], slp.model_trace.nodes[name]["fn"]
            raise ValueError(
                f"kl='analytic' needs a KL divergence registered in torch for every latent "
                f"site; site {name!r} pairs the guide's {type(q).__name__} with the model's "
                f"{type(p).__name__}: expected a registered pair with equal model and guide "
                "masks, got none. Try kl='auto' (falls back to Monte Carlo) or "
                "kl='monte_carlo'."
            )
    if kl == "analytic":
        raise ValueError(
            f"kl='analytic' needs a KL divergence for every term of the rate; the guide's "
            f"auxiliary sites {list(slp.auxiliary)} have no model counterpart, so their term "
            "E_q[log q(u)] has none. Try kl='auto' (falls back to Monte Carlo) or kl='monte_carlo'."
        )
    parts = [_site_kl(slp, n, analytic=False) for n in slp.latent]
    parts += [(slp.log_q[n], None) for n in slp.auxiliary]
    return (*_combine(parts), "monte_carlo")


def _combine(parts: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum the sites' totals; concatenate their per-dim columns if every site has them."""
    total = torch.stack([t for t, _ in parts]).sum(0)
    columns = [d for _, d in parts]
    per_dim = None if any(d is None for d in columns) else torch.cat(columns, -1)
    return total, per_dim


@program_verb("pair")
def elbo_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_plate: str | None = None,
    kl: KLMethod = "auto",
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> ElboTerms:
    """Per-datum ELBO with its reconstruction and KL (rate) terms.

    With particles :math:`z_k \\sim q(z \\mid x)` drawn in one vectorised pass,

    .. math::

        \\widehat{\\mathrm{rec}}(x) = \\frac1K \\sum_{k=1}^K \\log p(x \\mid z_k), \\qquad
        \\widehat{\\mathrm{KL}}(x) = \\frac1K \\sum_{k=1}^K \\sum_{j}
            \\begin{cases}
              \\mathrm{KL}\\big(q(z_j \\mid z_{<j,k}, x) \\,\\|\\, p(z_j \\mid z_{<j,k})\\big)
                 & \\text{analytic} \\\\
              \\log q(z_{j,k} \\mid z_{<j,k}, x) - \\log p(z_{j,k} \\mid z_{<j,k})
                 & \\text{Monte Carlo}
            \\end{cases}

    over latent sites :math:`j`, and :math:`\\widehat{\\mathrm{ELBO}} =
    \\widehat{\\mathrm{rec}} - \\widehat{\\mathrm{KL}}`. The analytic KL of a site
    whose prior depends on parent latents (or whose guide does) is evaluated at
    each particle's parents and averaged over particles: still unbiased, and
    usually of lower variance than the Monte Carlo form when q is far from the
    posterior (near the exact posterior the Monte Carlo ELBO's variance goes to
    zero while the analytic split's does not; tutorial 01 measures both). Masks (``poutine.mask``) apply to
    both forms; the analytic form is used only where model and guide mask a
    site alike (``poutine.mask`` and ``.mask()``). Auxiliary guide sites
    (``infer={"is_auxiliary": True}``, absent from the model) add
    :math:`\\log q(u_k)` to the Monte Carlo KL (see :mod:`pvae.infer.traces`).

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param int num_particles: particles per datum. Default 1.
    :param str data_plate: name of the data plate; found by itself when it is
        called ``"data"`` or is the only plate of every observed site.
    :param str kl: ``"analytic"`` (torch's registered KL for the guide/prior
        pair of every latent site, error otherwise), ``"monte_carlo"``, or
        ``"auto"`` (analytic when possible at every site, else Monte Carlo).
        Default ``"auto"``.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :returns: :class:`ElboTerms` with ``(batch,)`` tensors (with gradients).
    :raises ValueError: on an unknown ``kl``, ``kl="analytic"`` where a site has
        no registered KL (or masks differently in model and guide, or the guide
        has auxiliary sites), or a program the seam rejects (a global latent).
    """
    if kl not in KL_METHODS:
        raise ValueError(f"kl must be one of {list(KL_METHODS)}, got {kl!r}.")
    slp = site_log_probs(
        model, guide, *args, num_particles=num_particles, data_plate=data_plate,
        max_plate_nesting=max_plate_nesting, **kwargs,
    )
    log_lik = slp.log_likelihood
    kl_k, kl_dim_k, method = _kl_terms(slp, kl)
    return ElboTerms(
        reconstruction=log_lik.mean(0),
        kl=kl_k.mean(0),
        kl_per_dim=None if kl_dim_k is None else kl_dim_k.mean(0),
        kl_method=method,
        num_particles=int(num_particles),
        elbo_stderr=_stderr(log_lik - kl_k),
        kl_stderr=_stderr(kl_k),
    )


@program_verb("pair")
def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-datum Monte Carlo ELBO, the particle mean of the log-weights.

    .. math::

        \\widehat{\\mathrm{ELBO}}(x) = \\frac1K \\sum_{k=1}^K
            \\log \\frac{p(x, z_k)}{q(z_k \\mid x)}, \\qquad z_k \\sim q(z \\mid x).

    Under the same seed this equals :func:`pvae.infer.iwae_bound` with
    ``num_particles=1`` exactly.

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param int num_particles: particles per datum (K), vectorised. Default 1.
    :param str data_plate: name of the data plate (see :func:`elbo_terms`).
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :returns: ``(batch,)`` tensor (with gradients); higher is better.
    """
    slp = site_log_probs(
        model, guide, *args, num_particles=num_particles, data_plate=data_plate,
        max_plate_nesting=max_plate_nesting, **kwargs,
    )
    return slp.log_weight.mean(0)
