"""Calibrated anomaly scores from a fitted program.

A program fitted to normal data defines how surprising a new datum is (seeds
001 and 004: "a VAE trained on healthy samples learns the healthy manifold").
Three per-datum scores, higher = more anomalous:

* ``"nll"``: the expected negative reconstruction log-likelihood
  (seed 004's score),

  .. math:: s_\\text{nll}(x) = -\\mathbb E_{q(z \\mid x)}\\big[\\log p(x \\mid z)\\big]
            \\approx -\\frac1K \\sum_{k=1}^K \\log p(x \\mid z_k);

* ``"iwae"``: the negative importance-weighted bound, an estimate of
  :math:`-\\log p(x)` that also charges for an unusual code (Burda et al. 2016),

  .. math:: s_\\text{iwae}(x) = -\\log \\frac1K \\sum_{k=1}^K
            \\frac{p(x, z_k)}{q(z_k \\mid x)};

* ``"pearson"``: the Pearson statistic :math:`\\sum_j r_j^2` of the residuals
  of :func:`pearson_residuals`, for count data (seed 004: per-gene residuals of
  a negative binomial, summed into one score).

A raw score has no scale of its own; it is *calibrated* on held-out normal data
(seed 004): with null scores :math:`s_1, \\dots, s_n` of data the model never
trained on, a new score :math:`s` gets

.. math::

    z(s) = \\frac{s - \\bar s}{\\mathrm{sd}(s_{1:n})}, \\qquad
    p(s) = \\frac{1 + \\#\\{i : s_i \\ge s\\}}{n + 1}, \\qquad
    \\text{flag } s \\iff p(s) \\le \\alpha.

The p-value is the conformal (rank) p-value: if the new datum is normal and
exchangeable with the calibration data, :math:`P(p(s) \\le \\alpha) \\le \\alpha`
exactly, for any score and any n, with equality up to
:math:`\\lfloor \\alpha (n + 1) \\rfloor / (n + 1)` for continuous scores; the
+1 keeps :math:`p > 0` and makes this hold in finite samples (Vovk et al.
2005; Bates et al. 2023). The z-score assumes nothing but is only a
standardisation: its tail probabilities are not calibrated unless the null
scores are Gaussian. The guarantee is marginal (over calibration sets); the
false-positive rate of one calibration set scatters around :math:`\\alpha` with
standard deviation about :math:`\\sqrt{\\alpha(1-\\alpha)/n}`.

Monte Carlo scores (``num_particles`` draws) are random; calibration stays
valid as long as calibration and test scores are computed the same way.

References

1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
   ICLR 2016.
2. J. An, S. Cho. Variational Autoencoder based Anomaly Detection using
   Reconstruction Probability. SNU Data Mining Center, 2015.
3. V. Vovk, A. Gammerman, G. Shafer. Algorithmic Learning in a Random World.
   Springer 2005 (conformal p-values).
4. S. Bates, E. Candes, L. Lei, Y. Romano, M. Sesia. Testing for outliers with
   conformal p-values. Annals of Statistics 51(1), 2023.
5. A. Agresti. Categorical Data Analysis. Wiley 2013, section 4.5 (Pearson
   residuals).
6. Seeds 001 and 004: anomaly detection with a VAE trained on healthy data,
   calibration on held-out healthy samples, Pearson residuals for counts.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent

from ..infer.bounds import iwae_bound
from ..infer.traces import site_log_probs
from ..models.base import as_program, program_verb

__all__ = ["SCORES", "AnomalyDetector", "anomaly_scores", "pearson_residuals"]

ScoreName = Literal["nll", "iwae", "pearson"]
SCORES: tuple[str, ...] = ("nll", "iwae", "pearson")
PredictiveAt = Literal["draws", "mean"]
_AT = ("draws", "mean")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")


def _check_count(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


def _chunks(args: tuple, batch_size: int | None):
    """Split the tensor arguments sharing the first (data) dim into chunks of rows."""
    n = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim()), None)
    if n is None:
        raise TypeError(
            "anomaly scores need the data as a tensor argument, e.g. score(x) with x of shape "
            "(batch, features). Try passing x as a torch.Tensor."
        )
    if batch_size is None or batch_size >= n:
        yield args
        return
    for start in range(0, n, batch_size):
        yield tuple(
            a[start : start + batch_size] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a
            for a in args
        )


# -- Pearson residuals --------------------------------------------------------------
def _unwrap_mask(fn) -> torch.Tensor | None:
    """The ``.mask(...)`` of an (Independent of a) masked distribution, or None
    (a family that marginalises its own missing entries, such as
    :class:`~pvae.models.AR1Normal`, keeps the mask as ``obs_mask``)."""
    while True:
        if isinstance(fn, MaskedDistribution):
            return fn._mask
        if getattr(fn, "obs_mask", None) is not None:
            return fn.obs_mask
        if isinstance(fn, Independent):
            fn = fn.base_dist
            continue
        return None


def _observed_site(model_trace, site: str | None) -> str:
    observed = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and s["is_observed"]]
    if site is None:
        if len(observed) != 1:
            raise ValueError(
                f"the model has observed sites {observed}; pearson_residuals needs one. Try site='<name>'."
            )
        return observed[0]
    if site not in observed:
        raise ValueError(f"site={site!r} is not an observed site of the model; its observed sites are {observed}.")
    return site


def _moments(fn, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mean, var = fn.mean, fn.variance
    except NotImplementedError:
        mean = var = None
    if mean is None or not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all())):
        family = fn
        while isinstance(family, (Independent, MaskedDistribution)):
            family = family.base_dist
        raise ValueError(
            f"pearson_residuals needs the mean and variance of p(x | z) at site {name!r}; its "
            f"{type(family).__name__} has none that are finite (e.g. a categorical or heavy-tailed family). "
            "Try a count (poisson, negative_binomial) or bernoulli likelihood, or score='nll'."
        )
    shape = fn.batch_shape + fn.event_shape
    return mean.expand(shape), var.expand(shape)


@program_verb()
def pearson_residuals(
    program: Any,
    *args: Any,
    at: PredictiveAt = "draws",
    num_samples: int = 16,
    site: str | None = None,
    min_variance: float = 1e-6,
    **kwargs: Any,
) -> torch.Tensor:
    """Pearson residuals of every feature under the program's predictive distribution.

    .. math::

        r_{ij} = \\frac{x_{ij} - m_{ij}}{\\sqrt{v_{ij}}}, \\qquad
        \\mathbb E[r_{ij}] = 0,\\ \\mathrm{Var}[r_{ij}] = 1 \\text{ if } x_i \\sim
        \\text{the predictive},

    for Poisson (:math:`v = m`), negative binomial (:math:`v = m + m^2/r`),
    Bernoulli (:math:`v = m(1-m)`) or any family with a mean and a variance.
    The predictive is either

    * ``at="draws"``: the posterior predictive
      :math:`\\int p(x \\mid z)\\, q(z \\mid x_i)\\, dz` over ``num_samples``
      draws :math:`z_k`, with mean and variance by the law of total variance,

      .. math::

          m = \\frac1K \\sum_k \\mu(z_k), \\qquad
          v = \\frac1K \\sum_k \\sigma^2(z_k) + \\frac1K \\sum_k \\big(\\mu(z_k) - m\\big)^2;

    * ``at="mean"``: :math:`p(x \\mid z = \\mathbb E_q[z])`, the plug-in at the
      guide's mean (each latent site's distribution mean; exact for guides
      whose sites do not depend on each other).

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x`` of shape
        ``(batch, features)`` (or ``x, mask``).
    :param str at: ``"draws"`` or ``"mean"``. Default ``"draws"``.
    :param int num_samples: draws of z per datum for ``at="draws"``. Default 16.
    :param str site: the observed site; default the model's only one.
    :param float min_variance: floor on :math:`v` (a Bernoulli mean of 0 or 1
        has variance 0). Default 1e-6.
    :param kwargs: the program's keyword arguments.
    :returns: residuals of the site's shape, ``(batch, *event_shape)``;
        NaN at masked (missing) entries.
    :raises ValueError: for a family without finite mean and variance.
    """
    _check_choice("at", at, _AT)
    _check_count("num_samples", num_samples)
    if not min_variance > 0:
        raise ValueError(f"min_variance must be > 0, got {min_variance!r}.")
    with torch.no_grad():
        if at == "draws":
            slp = site_log_probs(program.model, program.guide, *args, num_particles=num_samples, **kwargs)
            trace, particles = slp.model_trace, num_samples > 1
        else:
            guide_trace = poutine.trace(program.guide).get_trace(*args, **kwargs)
            for node in guide_trace.nodes.values():
                if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node):
                    node["value"] = node["fn"].mean.expand(node["value"].shape)
            trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*args, **kwargs)
            particles = False
        name = _observed_site(trace, site)
        node = trace.nodes[name]
        fn, x = node["fn"], node["value"]
        mean, var = _moments(fn, name)
        if particles:
            # the particle plate sits left of every plate of the program
            m = mean.mean(0)
            var = var.mean(0) + (mean - m).pow(2).mean(0)
            mean = m
        mean, var = mean.expand(x.shape), var.expand(x.shape)
        residuals = (x - mean) / var.clamp(min=min_variance).sqrt()
        mask = _unwrap_mask(fn)
        if mask is not None:
            mask = torch.as_tensor(mask)
            while mask.dim() > x.dim():  # a particle dim
                mask = mask[0]
            mask = mask.expand(x.shape)
            residuals = torch.where(mask, residuals, torch.full_like(residuals, math.nan))
    return residuals


# -- scores --------------------------------------------------------------------------
@program_verb()
def anomaly_scores(
    program: Any,
    *args: Any,
    score: ScoreName = "nll",
    num_particles: int = 16,
    batch_size: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-datum anomaly scores; higher = more anomalous.

    .. math::

        s_\\text{nll}(x) = -\\frac1K \\sum_{k=1}^K \\log p(x \\mid z_k), \\quad
        s_\\text{iwae}(x) = -\\log \\frac1K \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k \\mid x)}, \\quad
        s_\\text{pearson}(x) = \\sum_j r_j(x)^2,

    :math:`z_k \\sim q(z \\mid x)`, :math:`r_j` the Pearson residuals of
    :func:`pearson_residuals` (posterior predictive over K draws; masked
    entries skipped).

    :param program: a pvae program, or anything with ``model`` and ``guide``.
    :param args: the program's positional arguments, e.g. ``x`` of shape
        ``(batch, features)`` (or ``x, mask``).
    :param str score: ``"nll"``, ``"iwae"`` or ``"pearson"``. Default ``"nll"``.
    :param int num_particles: K, draws of z per datum. Default 16.
    :param int batch_size: data per vectorised pass (memory); default all at once.
    :param kwargs: the program's keyword arguments.
    :returns: ``(batch,)`` tensor.
    """
    _check_choice("score", score, SCORES)
    _check_count("num_particles", num_particles)
    _check_count("batch_size", batch_size, allow_none=True)
    parts = []
    with torch.no_grad():
        for chunk in _chunks(args, batch_size):
            if score == "nll":
                slp = site_log_probs(program.model, program.guide, *chunk, num_particles=num_particles, **kwargs)
                parts.append(-slp.log_likelihood.mean(0))
            elif score == "iwae":
                parts.append(-iwae_bound(program.model, program.guide, *chunk, num_particles=num_particles,
                                         **kwargs).value)
            else:
                r = pearson_residuals(program, *chunk, num_samples=num_particles, **kwargs)
                parts.append(r.nan_to_num(0.0).pow(2).flatten(1).sum(-1))
    return torch.cat(parts)


class AnomalyDetector:
    """Anomaly scores of a fitted program, calibrated on held-out normal data.

    Usage::

        detector = AnomalyDetector(vae, score="nll").calibrate(x_holdout)
        detector.p_value(x_new)          # (batch,) conformal p-values
        detector.predict(x_new, fpr=0.05)  # (batch,) bool, false-positive rate <= 5%

    See the module docstring for the scores and the calibration: z-scores
    against the null mean and standard deviation, conformal p-values
    :math:`p(s) = (1 + \\#\\{i : s_i \\ge s\\}) / (n + 1)`, and the threshold

    .. math::

        t_\\alpha = s_{(m)}, \\quad m = n + 1 - \\lfloor \\alpha (n + 1) \\rfloor,
        \\qquad s > t_\\alpha \\iff p(s) \\le \\alpha,

    with :math:`s_{(1)} \\le \\dots \\le s_{(n)}` the sorted null scores: a
    normal datum exchangeable with the calibration data is flagged with
    probability :math:`\\lfloor \\alpha (n + 1) \\rfloor / (n + 1) \\le \\alpha`.

    A NaN score (data with NaN entries, scored by a program run without
    validation) has no rank: :meth:`p_value`, :meth:`p_values_of` and
    :meth:`predict` raise a ``ValueError`` for it rather than decide, as
    :meth:`calibrate` refuses non-finite null scores; :meth:`score` and
    :meth:`zscore` pass it through. Infinite scores rank as usual.

    :param program: a fitted pvae program, or anything with ``model`` and ``guide``.
    :param str score: ``"nll"``, ``"iwae"`` or ``"pearson"``. Default ``"nll"``.
    :param int num_particles: draws of z per datum for the score. Default 16.
    :param int batch_size: data per vectorised pass; default all at once.
    """

    def __init__(
        self,
        program: Any,
        score: ScoreName = "nll",
        num_particles: int = 16,
        batch_size: int | None = None,
    ) -> None:
        _check_choice("score", score, SCORES)
        _check_count("num_particles", num_particles)
        _check_count("batch_size", batch_size, allow_none=True)
        self.program = as_program(program)
        self.score_name = score
        self.num_particles = num_particles
        self.batch_size = batch_size
        self.null_scores: torch.Tensor | None = None

    def __repr__(self) -> str:
        n = None if self.null_scores is None else self.null_scores.numel()
        return (f"AnomalyDetector(score={self.score_name!r}, num_particles={self.num_particles}, "
                f"calibrated on {n} data)")

    # -- scoring and calibration --------------------------------------------------
    def score(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Raw scores of the data, ``(batch,)``; higher = more anomalous.

        :param args: the program's positional arguments, e.g. ``x``.
        """
        return anomaly_scores(self.program, *args, score=self.score_name, num_particles=self.num_particles,
                              batch_size=self.batch_size, **kwargs)

    def calibrate(self, *args: Any, **kwargs: Any) -> "AnomalyDetector":
        """Score held-out *normal* data and keep the scores as the null distribution.

        The data must be normal and not used for training (training data score
        too well, which would make the false-positive rate too high).

        :param args: the program's positional arguments for the holdout, e.g. ``x``.
        :returns: ``self``.
        :raises ValueError: with fewer than 2 data or non-finite scores.
        """
        scores = self.score(*args, **kwargs)
        if scores.numel() < 2:
            raise ValueError(f"calibration needs at least 2 held-out normal data, got {scores.numel()}.")
        bad = ~torch.isfinite(scores)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} calibration scores are not finite (first at index "
                f"{int(bad.nonzero()[0])}). Try checking the data against the model's likelihood."
            )
        self.null_scores = scores.sort().values
        return self

    def _null(self) -> torch.Tensor:
        if self.null_scores is None:
            raise RuntimeError(
                "this AnomalyDetector is not calibrated. Try detector.calibrate(x_holdout) with held-out "
                "normal data first."
            )
        return self.null_scores

    @property
    def num_calibration(self) -> int:
        """n, the number of null scores."""
        return self._null().numel()

    def zscore(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """:math:`(s - \\bar s) / \\mathrm{sd}(s_{1:n})` against the null scores: ``(batch,)``."""
        null = self._null()
        return (self.score(*args, **kwargs) - null.mean()) / null.std()

    @staticmethod
    def _check_scores(scores: torch.Tensor) -> torch.Tensor:
        """Refuse NaN scores: a NaN is neither above nor below a threshold, so it has no p-value."""
        scores = torch.as_tensor(scores)
        bad = torch.isnan(scores)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} of {scores.numel()} scores are NaN (first at index "
                f"{bad.flatten().nonzero()[0].item()}): a NaN score has no p-value and no decision. "
                "Try checking those data for NaN entries (or a program run without validation)."
            )
        return scores

    def p_values_of(self, scores: torch.Tensor) -> torch.Tensor:
        """Conformal p-values of given scores: :math:`(1 + \\#\\{i : s_i \\ge s\\}) / (n + 1)`.

        :raises ValueError: for a NaN score (as :meth:`predict`); :math:`+\\infty`
            gets :math:`1/(n+1)` and is flagged, :math:`-\\infty` gets 1.
        """
        null = self._null()
        n = null.numel()
        scores = self._check_scores(scores)
        # rank in the wider dtype: a float64 score just above a float32 null score must not
        # round onto it (predict compares in full precision, and the two must agree)
        wide = torch.promote_types(null.dtype, scores.dtype) if scores.is_floating_point() else null.dtype
        at_least = n - torch.searchsorted(null.to(wide), scores.to(device=null.device, dtype=wide).contiguous(),
                                          right=False)
        return (1 + at_least).to(null.dtype) / (n + 1)

    def p_value(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Conformal p-values of the data, in :math:`[1/(n+1), 1]`: ``(batch,)``."""
        return self.p_values_of(self.score(*args, **kwargs))

    def threshold(self, fpr: float = 0.05) -> float:
        """Score threshold with false-positive rate at most ``fpr``.

        :math:`t_\\alpha = s_{(m)}`, :math:`m = n + 1 - \\lfloor \\alpha (n + 1) \\rfloor`
        (the empirical :math:`(1 - \\alpha)` quantile, rounded to the
        conservative side); scores above it are flagged.

        :param float fpr: the target false-positive rate :math:`\\alpha`, in (0, 1).
        :raises ValueError: if ``fpr`` is outside (0, 1) or below
            :math:`1 / (n + 1)`, which n calibration scores cannot resolve.
        """
        null = self._null()
        n = null.numel()
        allowed = self._allowed(fpr, n)
        return float(null[n - allowed - 1])

    @staticmethod
    def _allowed(fpr: float, n: int) -> int:
        """:math:`\\lfloor \\alpha (n + 1) \\rfloor - 1`: null scores allowed at or above a flagged score."""
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
            raise ValueError(f"fpr must be a number in (0, 1), got {fpr!r}.")
        allowed = math.floor(fpr * (n + 1) + 1e-9) - 1
        if allowed < 0:
            raise ValueError(
                f"fpr={fpr:g} is below 1/(n+1) = {1 / (n + 1):.3g}: {n} calibration scores cannot "
                f"resolve it. Try at least {math.ceil(1 / fpr) - 1} held-out normal data, or a larger fpr."
            )
        return min(allowed, n - 1)

    def predict(self, *args: Any, fpr: float = 0.05, **kwargs: Any) -> torch.Tensor:
        """Flag anomalies: ``score > threshold(fpr)``, i.e. ``p_value <= fpr``: ``(batch,)`` bool.

        :param args: the program's positional arguments, e.g. ``x``.
        :param float fpr: target false-positive rate. Default 0.05.
        :raises ValueError: for a datum whose score is NaN (as :meth:`p_value`).
        """
        threshold = self.threshold(fpr)
        return self._check_scores(self.score(*args, **kwargs)) > threshold
