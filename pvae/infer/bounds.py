"""Importance-weighted bounds and log-evidence estimates, per datum, with errors.

With log-weights :math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k \\mid x)`,
:math:`z_k \\sim q(z \\mid x)`, from :func:`pvae.infer.traces.site_log_probs`,

.. math::

    \\mathrm{IWAE}_K(x) = \\log \\frac1K \\sum_{k=1}^K w_k
        = \\operatorname{logsumexp}_k \\log w_k - \\log K,

    \\mathrm{ELBO}(x) = \\mathrm{IWAE}_1(x) \\le \\mathrm{IWAE}_K(x)
        \\le \\mathrm{IWAE}_{2K}(x) \\le \\log p(x)

in expectation, with :math:`\\mathrm{IWAE}_K \\to \\log p(x)` as
:math:`K \\to \\infty` (Burda et al. 2016, Theorem 1). The particles are drawn
in chunks of vectorised passes and reduced by a streaming (running-maximum)
logsumexp, so memory is bounded by the chunk, not by :math:`K`.

References

1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016.
2. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
3. C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational
   Autoencoders. ICML 2018 (the variational gap).
4. A. B. Owen. Monte Carlo theory, methods and examples. 2013, chapter 9
   (importance sampling, effective sample size, delta method).
5. T. F. Chan, G. H. Golub, R. J. LeVeque. Algorithms for computing the sample
   variance. The American Statistician 37(3), 1983 (pairwise merging).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pyro
import torch
from pyro import poutine
from pyro.infer import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from ..models.base import program_verb

from .capture import CapturedFunction, capture_mode, check_compile
from .traces import SiteLogProbs, check_count, guess_max_plate_nesting, pin_subsample, site_log_probs

__all__ = ["CHUNK_MEMORY_BYTES", "BoundEstimate", "EvidenceEstimate", "iwae_bound", "log_evidence"]

#: Memory budget of one chunk of particles when ``chunk_size=None`` (256 MiB).
CHUNK_MEMORY_BYTES = 256 * 2**20
# Tensors of a site's size alive at once per particle during a pass: the
# distribution parameters, the log-prob and its temporaries, the network
# activations that produced them. Measured on the MNIST VAE of Burda et al.
# (784-200-200-50, K=5000): peak resident memory grew by 5x (batch 100, 153 MB)
# to 7x (batch 2000, 205 MB) the site bytes of a chunk; 8 leaves headroom.
_MEMORY_OVERHEAD = 8


@dataclass(frozen=True)
class BoundEstimate:
    """A per-datum Monte Carlo estimate of a bound, with its standard error.

    :ivar torch.Tensor value: ``(batch,)`` the estimate; higher is better.
    :ivar torch.Tensor stderr: ``(batch,)`` its Monte Carlo standard error given
        the data (NaN when it cannot be estimated from one particle).
    :ivar int num_particles: particles per datum behind each value.
    :ivar dict subsample: ``{plate name: indices}`` of a data plate that drew a
        random subsample (``pyro.plate(..., subsample_size=B)``): the values are
        those of these data, in this order. Empty when every datum is evaluated.
    """

    value: torch.Tensor
    stderr: torch.Tensor
    num_particles: int
    subsample: dict[str, torch.Tensor] = field(default_factory=dict)

    def mean(self) -> "BoundEstimate":
        """The mean over data, a 0-dim estimate.

        Particles are drawn independently for each datum, so the Monte Carlo
        errors add in quadrature:

        .. math::

            \\bar v = \\frac1n \\sum_i v_i, \\qquad
            \\mathrm{se}(\\bar v) = \\frac1n \\sqrt{\\textstyle\\sum_i \\mathrm{se}_i^2}.

        This is the error of the Monte Carlo estimate given the data, not the
        spread of the bound over a population of data.
        """
        n = self.value.numel()
        return BoundEstimate(self.value.mean(), self.stderr.pow(2).sum().sqrt() / n, self.num_particles,
                             self.subsample)

    def summary(self) -> dict[str, float | int]:
        """``{"mean", "stderr", "num_particles", "num_data"}`` as plain numbers (see :meth:`mean`)."""
        m = self.mean()
        return {
            "mean": float(m.value),
            "stderr": float(m.stderr),
            "num_particles": self.num_particles,
            "num_data": self.value.numel(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of floats), e.g. for JSON."""
        return {
            "value": self.value.detach().cpu().tolist(),
            "stderr": self.stderr.detach().cpu().tolist(),
            "num_particles": self.num_particles,
            **({"subsample": {k: v.tolist() for k, v in self.subsample.items()}} if self.subsample else {}),
        }


@dataclass(frozen=True)
class EvidenceEstimate:
    """Log-evidence, ELBO and the variational gap of each datum.

    :ivar BoundEstimate log_evidence: :math:`\\log \\hat p(x)`, the IWAE bound at
        large K.
    :ivar BoundEstimate elbo: the ELBO and its standard error.
    :ivar torch.Tensor variational_gap: ``(batch,)``
        :math:`\\log \\hat p(x) - \\mathrm{ELBO}(x)`, an estimate of
        :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z \\mid x))` from below (Cremer et al.
        2018).
    """

    log_evidence: BoundEstimate
    elbo: BoundEstimate
    variational_gap: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """Means over data: ``{"log_evidence": {...}, "elbo": {...}, "variational_gap": float}``."""
        return {
            "log_evidence": self.log_evidence.summary(),
            "elbo": self.elbo.summary(),
            "variational_gap": float(self.variational_gap.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists of floats), e.g. for JSON."""
        return {
            "log_evidence": self.log_evidence.to_dict(),
            "elbo": self.elbo.to_dict(),
            "variational_gap": self.variational_gap.detach().cpu().tolist(),
        }


class _LogWeightStream:
    """Running reductions of ``(k, batch)`` chunks of log-weights, in float64.

    Keeps, per datum, the running maximum :math:`m`, the shifted power sums
    :math:`S_1 = \\sum_k e^{\\log w_k - m}`, :math:`S_2 = \\sum_k e^{2(\\log w_k - m)}`
    (rescaled by :math:`e^{m_\\text{old} - m_\\text{new}}` when the maximum
    grows), and the mean and centred sum of squares of :math:`\\log w_k`, merged
    chunk by chunk (Chan et al. 1983).
    """

    def __init__(self) -> None:
        self.count = 0
        self.subsample: dict[str, torch.Tensor] = {}
        self.max = self.shift = self.s1 = self.s2 = self.mean = self.m2 = None
        self.dtype = torch.get_default_dtype()

    def update(self, log_w: torch.Tensor) -> None:
        self.dtype = log_w.dtype
        log_w = log_w.detach().to(torch.float64)
        k = log_w.shape[0]
        chunk_max = log_w.max(0).values
        new_max = chunk_max if self.max is None else torch.maximum(self.max, chunk_max)
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rel = log_w - shift
        s1, s2 = rel.exp().sum(0), (2 * rel).exp().sum(0)
        chunk_mean = log_w.mean(0)
        chunk_m2 = (log_w - chunk_mean).pow(2).sum(0)
        if self.count:
            decay = torch.where(
                torch.isfinite(self.max), (self.max - shift).exp(), torch.zeros_like(shift)
            )
            s1, s2 = s1 + self.s1 * decay, s2 + self.s2 * decay.pow(2)
            delta, total = chunk_mean - self.mean, self.count + k
            chunk_mean = self.mean + delta * (k / total)
            chunk_m2 = self.m2 + chunk_m2 + delta.pow(2) * (self.count * k / total)
        self.max, self.shift, self.s1, self.s2 = new_max, shift, s1, s2
        self.mean, self.m2 = chunk_mean, chunk_m2
        self.count += k

    def iwae(self) -> BoundEstimate:
        """:math:`\\log \\frac1K \\sum w_k` and its delta-method standard error."""
        k = self.count
        value = self.shift + self.s1.log() - math.log(k)
        if k == 1:
            stderr = torch.full_like(value, math.nan)
        else:
            # (K / ESS - 1) / (K - 1), ESS = S1^2 / S2: shift-invariant.
            ratio = k * self.s2 / self.s1.pow(2)
            stderr = ((ratio - 1).clamp(min=0) / (k - 1)).sqrt()
        return BoundEstimate(value.to(self.dtype), stderr.to(self.dtype), k, dict(self.subsample))

    def elbo(self) -> BoundEstimate:
        """The mean log-weight and its standard error."""
        k = self.count
        stderr = (self.m2 / (k - 1) / k).sqrt() if k > 1 else torch.full_like(self.mean, math.nan)
        return BoundEstimate(self.mean.to(self.dtype), stderr.to(self.dtype), k, dict(self.subsample))


def _check_count(name: str, value: Any, allow_none: bool = False) -> int | None:
    """A positive ``int`` (numpy integers accepted; bools and floats refused), or None if allowed."""
    return check_count(name, value, allow_none)


BoundCompile = bool | Literal["graph", "inductor"]
BOUND_COMPILE_CHOICES: tuple[Any, ...] = (False, True, "graph", "inductor")


def _auto_chunk_size(slp: SiteLogProbs) -> int:
    """Particles per chunk that keep one pass within :data:`CHUNK_MEMORY_BYTES`.

    Measured on a one-particle run: the bytes of every sample site's
    distribution (batch and event shape) in model and guide, times
    :data:`_MEMORY_OVERHEAD`.
    """
    per_particle = 0
    for trace in (slp.model_trace, slp.guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                fn = site["fn"]
                numel = math.prod(tuple(fn.batch_shape) + tuple(fn.event_shape))
                per_particle += numel * torch.as_tensor(site["value"]).element_size()
    return max(1, CHUNK_MEMORY_BYTES // max(1, _MEMORY_OVERHEAD * per_particle))


def _stream_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    chunk_size: int | None,
    data_plate: str | None,
    max_plate_nesting: int | None,
    compile: BoundCompile = False,
    subsample: dict[str, torch.Tensor] | None = None,
) -> _LogWeightStream:
    """Draw ``num_particles`` log-weights per datum in chunks, reduced on the fly.

    With ``chunk_size=None`` the first chunk is one particle; its traces size
    the following chunks (:func:`_auto_chunk_size`). Every chunk evaluates the
    same data: a data plate that subsamples at random draws its indices in the
    first chunk (or takes ``subsample``, ``{plate: indices}``), and later chunks
    replay them (:func:`pvae.infer.pin_subsample`); the indices used are
    kept as ``stream.subsample``.
    """
    num_particles = _check_count("num_particles", num_particles)
    chunk_size = _check_count("chunk_size", chunk_size, allow_none=True)
    check_compile(compile, BOUND_COMPILE_CHOICES)
    mode = capture_mode(compile)
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    stream = _LogWeightStream()
    stream.subsample = dict(subsample or {})
    size = 1 if chunk_size is None else chunk_size
    model, proposal = pin_subsample(model, stream.subsample), pin_subsample(guide, stream.subsample)
    chunk = None  # the log-weights of a full chunk of particles, captured when compile
    with torch.no_grad():
        while stream.count < num_particles:
            k = min(size, num_particles - stream.count)
            if chunk is not None and k == size:
                stream.update(chunk(*args)[0])
                continue
            # Pyro's checks (data support, distribution arguments) run on the first
            # chunk only: the data and the program's structure are the same in every chunk
            with pyro.validation_enabled(stream.count == 0 and is_validation_enabled()):
                slp = site_log_probs(
                    model, proposal, *args, num_particles=k,
                    data_plate=data_plate, max_plate_nesting=max_plate_nesting, **kwargs,
                )
            if stream.count == 0:
                if slp.subsample and not stream.subsample:  # pin the first chunk's random indices
                    stream.subsample = slp.subsample
                    model, proposal = pin_subsample(model, slp.subsample), pin_subsample(guide, slp.subsample)
                if chunk_size is None:
                    size = _auto_chunk_size(slp)
                if slp.log_weight.shape[0] < num_particles:
                    proposal = _frozen_guide(proposal, args, kwargs) or proposal
                if mode is not None and num_particles - slp.log_weight.shape[0] >= 2 * size:
                    chunk = _captured_chunk(model, proposal, size, kwargs, data_plate, max_plate_nesting, mode)
            stream.update(slp.log_weight)
            del slp  # free this chunk's traces (the decoder's output) before the next is drawn
    return stream


def _captured_chunk(model, proposal, size, kwargs, data_plate, max_plate_nesting, mode):
    """One chunk's log-weights as a captured graph (:class:`~pvae.infer.CapturedFunction`)."""
    def chunk(*args: torch.Tensor) -> tuple[torch.Tensor]:
        with pyro.validation_enabled(False):
            slp = site_log_probs(model, proposal, *args, num_particles=size, data_plate=data_plate,
                                 max_plate_nesting=max_plate_nesting, **kwargs)
        return (slp.log_weight,)

    return CapturedFunction(chunk, f"iwae_bound(compile={mode!r})", mode=mode)


def _frozen_guide(guide: Callable, args: tuple, kwargs: dict) -> Callable | None:
    """The guide's distribution, computed once, as a guide of its own.

    Every chunk of particles would otherwise run the guide's networks again on
    the same data. For a guide with a single latent site (nothing downstream
    can depend on another latent) the distribution is fixed by the data, so it
    is traced once (without drawing from the session's random stream) and
    re-sampled inside the same plates, mask and scale. Returns None for other
    guides, which are then run for every chunk. A randomly subsampling plate
    must be pinned by the caller (``guide`` wrapped in
    :func:`pvae.infer.traces.pin_subsample`): the frozen distribution belongs
    to the indices traced here, which the frozen guide then passes as
    ``subsample=``.
    """
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False), poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
    if len(sites) != 1 or sites[0]["is_observed"]:
        return None
    site = sites[0]
    indices = {s["name"]: s["value"] for s in trace.nodes.values() if site_is_subsample(s)}

    def frozen(*_args: Any, **_kwargs: Any) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            for frame in reversed(site["cond_indep_stack"]):
                if frame.vectorized:
                    stack.enter_context(pyro.plate(frame.name, frame.full_size or frame.size,
                                                   subsample=indices.get(frame.name), dim=frame.dim))
            if site["mask"] is not None:
                stack.enter_context(poutine.mask(mask=site["mask"]))
            if not (isinstance(site["scale"], float) and site["scale"] == 1.0):
                stack.enter_context(poutine.scale(scale=site["scale"]))
            return pyro.sample(site["name"], site["fn"], infer=dict(site["infer"]))

    return frozen


@program_verb("pair")
def iwae_bound(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    chunk_size: int | None = None,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    compile: BoundCompile = False,
    **kwargs: Any,
) -> BoundEstimate:
    """Importance-weighted bound :math:`\\mathrm{IWAE}_K` per datum, with its error.

    .. math::

        \\mathrm{IWAE}_K(x) = \\log \\hat p_K(x), \\qquad
        \\hat p_K(x) = \\frac1K \\sum_{k=1}^K w_k, \\qquad
        w_k = \\frac{p(x, z_k)}{q(z_k \\mid x)}, \\quad z_k \\sim q(z \\mid x).

    Computed in log space by a streaming logsumexp over chunks of particles:
    with running maximum :math:`m` and :math:`S_1 = \\sum_k e^{\\log w_k - m}`,
    :math:`\\mathrm{IWAE}_K = m + \\log S_1 - \\log K`.

    Standard error (delta method on the mean of the weights): with the sample
    variance :math:`s^2` of the :math:`w_k`,
    :math:`\\mathrm{Var}[\\log \\hat p_K] \\approx s^2 / (K \\hat p_K^2)`, which in
    terms of the effective sample size
    :math:`\\mathrm{ESS} = (\\sum_k w_k)^2 / \\sum_k w_k^2 = S_1^2 / S_2`
    (:math:`S_2 = \\sum_k e^{2(\\log w_k - m)}`, also streamed) is

    .. math::

        \\mathrm{se}\\big(\\mathrm{IWAE}_K(x)\\big) \\approx
            \\sqrt{\\frac{K / \\mathrm{ESS} - 1}{K - 1}},

    free of overflow. It measures the estimator's spread, not its downward
    bias :math:`\\log p(x) - \\mathbb E[\\mathrm{IWAE}_K] \\approx \\mathrm{se}^2 / 2`,
    and is itself unreliable when the weights are heavy-tailed (ESS of a few).
    NaN for ``num_particles=1``.

    Evaluation only: runs under ``torch.no_grad()``. With ``num_particles=1``
    and the same seed the value equals :func:`pvae.infer.elbo` exactly.

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param int num_particles: K, importance samples per datum. Default 1.
    :param int chunk_size: particles per vectorised pass. Default None: one
        particle first, then as many as fit ``CHUNK_MEMORY_BYTES`` (256 MiB)
        judged from that run. Chunks change which random numbers are drawn, not
        the estimator.
    :param str data_plate: name of the data plate; found by itself when it is
        called ``"data"`` or is the only plate of every observed site.
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param compile: ``True`` or ``"graph"``: capture one chunk's computation as
        a graph (:class:`~pvae.infer.CapturedFunction`) and replay it for the
        full chunks after the first (same draws and values as eager; pays off
        for large K). ``"inductor"``: the same graph compiled by
        ``torch.compile`` (fused kernels: the likelihood's elementwise terms
        and their sum run as one pass over the decoder's output; values
        float-close to eager; the compile, seconds, runs in the second chunk,
        so it pays off only for K in the thousands). Default False.
    :returns: :class:`BoundEstimate` with ``(batch,)`` value and stderr. When
        the data plate subsamples at random (``subsample_size=``), the values
        are those of the subsample drawn by the first chunk, which every later
        chunk reuses; pass ``subsample=idx`` to the plate to choose the data.
    :raises ValueError: on a non-positive ``num_particles`` or ``chunk_size``, an
        unknown ``compile``, or a program the seam rejects (a global latent).
    """
    stream = _stream_log_weights(
        model, guide, args, kwargs, num_particles, chunk_size, data_plate, max_plate_nesting, compile
    )
    return stream.iwae()


@program_verb("pair")
def log_evidence(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 5000,
    chunk_size: int | None = None,
    elbo_particles: int | None = None,
    data_plate: str | None = None,
    max_plate_nesting: int | None = None,
    compile: BoundCompile = False,
    **kwargs: Any,
) -> EvidenceEstimate:
    """Log-evidence :math:`\\log \\hat p(x)`, ELBO and variational gap per datum.

    .. math::

        \\log \\hat p(x) = \\mathrm{IWAE}_K(x), \\qquad
        \\widehat{\\mathrm{ELBO}}(x) = \\frac1{K'} \\sum_{k=1}^{K'} \\log w_k, \\qquad
        \\widehat{\\mathrm{gap}}(x) = \\log \\hat p(x) - \\widehat{\\mathrm{ELBO}}(x)
            \\approx \\mathrm{KL}\\big(q(z \\mid x) \\,\\|\\, p(z \\mid x)\\big).

    The ELBO's standard error is the particle standard deviation of
    :math:`\\log w_k` over :math:`\\sqrt{K'}`. Since :math:`\\mathrm{IWAE}_K`
    is biased low, so is the gap. Evaluation only (``torch.no_grad()``).

    :param callable model: a Pyro model whose data sit in a ``pyro.plate``; or a
        program with ``.model`` and ``.guide``, and then no guide argument.
    :param callable guide: its guide, same signature.
    :param int num_particles: K of the importance-weighted estimate. Default 5000.
    :param int chunk_size: particles per vectorised pass (see :func:`iwae_bound`).
    :param int elbo_particles: K' of the ELBO. Default None: the same K particles
        as the evidence (no extra passes; the errors of the two are correlated,
        which makes the gap more precise); an integer draws K' fresh particles.
    :param str data_plate: name of the data plate (see :func:`iwae_bound`).
    :param int max_plate_nesting: the program's plate depth; guessed if None.
    :param compile: as for :func:`iwae_bound`. Default False.
    :returns: :class:`EvidenceEstimate`; evidence and ELBO are of the same data
        points, also when the data plate subsamples at random (see
        :func:`iwae_bound`).
    """
    elbo_particles = _check_count("elbo_particles", elbo_particles, allow_none=True)
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    common = (chunk_size, data_plate, max_plate_nesting, compile)
    stream = _stream_log_weights(model, guide, args, kwargs, num_particles, *common)
    evidence = stream.iwae()
    if elbo_particles is not None:  # the same data points as the evidence, if the plate subsamples
        stream = _stream_log_weights(model, guide, args, kwargs, elbo_particles, *common, stream.subsample)
    elbo = stream.elbo()
    return EvidenceEstimate(evidence, elbo, evidence.value - elbo.value)
