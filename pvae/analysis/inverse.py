"""Inverse problems with a VAE as the prior: recover x from y = M x + noise.

Many measurements are indirect: a few random projections (compressed sensing),
a blurred or subsampled image, a mixed signal. With fewer measurements than
unknowns (:math:`m < d`) the problem is ill-posed, and a prior on :math:`x`
decides the answer. A fitted VAE is such a prior, and the search can run in
its low-dimensional latent space [1, 3]:

.. math::

    z \\sim \\mathcal N(0, I_k), \\qquad x \\mid z \\sim p_\\theta(x \\mid z), \\qquad
    y \\mid x \\sim \\mathcal N(M x, \\sigma_y^2 I_m).

* :func:`linear_gaussian_posterior_mean`: with a linear-Gaussian decoder
  :math:`x = W z + \\mu + \\varepsilon`, :math:`\\varepsilon \\sim \\mathcal N(0, \\sigma_x^2 I)`
  (probabilistic PCA), :math:`(x, y)` are jointly Gaussian and
  :math:`p(x \\mid y)` is closed form [2, 3].
* :func:`solve_inverse`: for any decoder, MAP or SVI over :math:`z` per
  measurement, as a Pyro program, and :math:`\\mathbb E[x \\mid y]` from the
  fitted latent.

References

1. A. Bora, A. Jalal, E. Price, A. G. Dimakis. Compressed Sensing using
   Generative Models. ICML 2017.
2. C. M. Bishop. Pattern Recognition and Machine Learning. Springer 2006,
   section 2.3.3 (Bayes' theorem for Gaussian variables).
3. Seed 004: a VAE decoder as a generative prior for :math:`y = M x + \\varepsilon`,
   with the closed-form posterior mean in the linear-Gaussian case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..inputs import as_data
from ..models.base import DATA_PLATE, LATENT_SITE

__all__ = [
    "GaussianPosterior",
    "InverseSolution",
    "linear_gaussian_posterior_mean",
    "solve_inverse",
]

MEASUREMENT_SITE = "y"
_DECAY = 0.01  # the SVI learning rate falls a hundredfold over the run


# -- results -----------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianPosterior:
    """The Gaussian :math:`p(x \\mid y)` of a linear-Gaussian inverse problem.

    :ivar torch.Tensor mean: :math:`\\mathbb E[x \\mid y]`, ``(..., d)``, one row per measurement.
    :ivar torch.Tensor covariance: :math:`\\mathrm{Cov}[x \\mid y]`, ``(d, d)``
        (the same for every measurement).
    """

    mean: torch.Tensor
    covariance: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "covariance": self.covariance.tolist()}


@dataclass(frozen=True)
class InverseSolution:
    """The answer of :func:`solve_inverse` for a batch of measurements.

    :ivar torch.Tensor x_mean: the estimate of :math:`\\mathbb E[x \\mid y]`,
        ``(batch, d)``: for a Gaussian decoder including the part of the
        decoder noise that ``y`` reveals (see :func:`solve_inverse`).
    :ivar torch.Tensor decoded: the decoder mean at the latent estimate,
        :math:`f(\\hat z)` (map) or :math:`\\mathbb E_q[f(z)]` (svi), ``(batch, d)``:
        the estimate restricted to the decoder's manifold.
    :ivar torch.Tensor z_loc: the MAP latent, or the mean of :math:`q(z)`, ``(batch, k)``.
    :ivar z_scale: the standard deviations of :math:`q(z)`, ``(batch, k)``, or None (map).
    :ivar torch.Tensor log_density: per measurement, :math:`\\log p(y, \\hat z)`
        at the MAP (map), or a Monte Carlo ELBO, a lower bound on
        :math:`\\log p(y)` (svi); higher is better. ``(batch,)``.
    :ivar str method: ``"map"`` or ``"svi"``.
    """

    x_mean: torch.Tensor
    decoded: torch.Tensor
    z_loc: torch.Tensor
    z_scale: torch.Tensor | None
    log_density: torch.Tensor
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "x_mean": self.x_mean.tolist(),
            "decoded": self.decoded.tolist(),
            "z_loc": self.z_loc.tolist(),
            "z_scale": None if self.z_scale is None else self.z_scale.tolist(),
            "log_density": self.log_density.tolist(),
            "method": self.method,
        }


# -- input checks --------------------------------------------------------------------
def _as(t: Any, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    return as_data(t, name, dtype=dtype)


def _noise(value: Any, name: str, size: int, dtype: torch.dtype) -> torch.Tensor:
    """A positive scalar or a ``(size,)`` vector of standard deviations, as ``(size,)``."""
    t = _as(value, name, dtype)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, size)):
        raise ValueError(f"{name} must be a positive number or a ({size},) tensor, got shape {tuple(t.shape)}.")
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be positive and finite, got {value!r}. Try a small positive value such as 1e-3.")
    return t.expand(size)


def _measurements(M: Any, y: Any, d: int | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    M = _as(M, "M")
    if M.dim() != 2 or (d is not None and M.shape[1] != d):
        want = f"(m, {d})" if d is not None else "(m, d)"
        raise ValueError(f"M must be a measurement matrix of shape {want}, got {tuple(M.shape)}.")
    y = _as(y, "y", M.dtype)
    single = y.dim() == 1
    if single:
        y = y.unsqueeze(0)
    if y.dim() != 2 or y.shape[-1] != M.shape[0]:
        raise ValueError(
            f"y must hold measurements of shape (batch, {M.shape[0]}) or ({M.shape[0]},) for M of shape "
            f"{tuple(M.shape)}, got {tuple(y.shape)}."
        )
    return M, y, single


# -- closed form -----------------------------------------------------------------------
def linear_gaussian_posterior_mean(
    W: torch.Tensor,
    mu: torch.Tensor,
    sigma_x: float | torch.Tensor,
    M: torch.Tensor,
    sigma_y: float | torch.Tensor,
    y: torch.Tensor,
) -> GaussianPosterior:
    """:math:`p(x \\mid y)` in closed form for a linear-Gaussian prior [2, 3].

    With :math:`x = W z + \\mu + \\varepsilon_x`, :math:`z \\sim \\mathcal N(0, I_k)`,
    :math:`\\varepsilon_x \\sim \\mathcal N(0, \\mathrm{diag}\\,\\sigma_x^2)` and
    :math:`y = M x + \\varepsilon_y`, :math:`\\varepsilon_y \\sim \\mathcal N(0, \\mathrm{diag}\\,\\sigma_y^2)`,

    .. math::

        \\Sigma = W W^\\top + \\mathrm{diag}\\,\\sigma_x^2, \\qquad
        S = M \\Sigma M^\\top + \\mathrm{diag}\\,\\sigma_y^2, \\qquad
        K = \\Sigma M^\\top S^{-1},

        \\mathbb E[x \\mid y] = \\mu + K (y - M\\mu), \\qquad
        \\mathrm{Cov}[x \\mid y] = \\Sigma - K M \\Sigma.

    Computed with a Cholesky factor of :math:`S` (``m x m``), vectorised over
    measurements.

    :param torch.Tensor W: the decoder's weight, ``(d, k)``.
    :param torch.Tensor mu: the decoder's offset, ``(d,)``.
    :param sigma_x: the decoder's noise standard deviation, a number or ``(d,)``.
    :param torch.Tensor M: the measurement matrix, ``(m, d)``.
    :param sigma_y: the measurement noise standard deviation, a number or ``(m,)``.
    :param torch.Tensor y: measurements, ``(m,)`` or ``(batch, m)``.
    :returns: a :class:`GaussianPosterior`; ``mean`` has the batch shape of ``y``.
    """
    W = _as(W, "W")
    if W.dim() != 2:
        raise ValueError(f"W must have shape (d, k), got {tuple(W.shape)}.")
    d = W.shape[0]
    mu = _as(mu, "mu", W.dtype)
    if mu.dim() == 0:
        mu = mu.expand(d)
    if mu.shape != (d,):
        raise ValueError(f"mu must have shape ({d},) for W of shape {tuple(W.shape)}, got {tuple(mu.shape)}.")
    M, y2, single = _measurements(M, y, d)
    M, y2 = M.to(W.dtype), y2.to(W.dtype)
    sx = _noise(sigma_x, "sigma_x", d, W.dtype)
    sy = _noise(sigma_y, "sigma_y", M.shape[0], W.dtype)
    sigma = W @ W.T + torch.diag(sx**2)
    s = M @ sigma @ M.T + torch.diag(sy**2)
    chol = torch.linalg.cholesky(s)
    gain_t = torch.cholesky_solve(M @ sigma, chol)  # K^T = S^{-1} M Sigma, (m, d)
    mean = mu + (y2 - mu @ M.T) @ gain_t
    cov = sigma - sigma @ M.T @ gain_t
    cov = 0.5 * (cov + cov.T)
    return GaussianPosterior(mean[0] if single else mean, cov)


# -- the latent-space solver ---------------------------------------------------------
def _decoder(program_or_decoder: Any) -> Callable[[torch.Tensor], Any]:
    decode = getattr(program_or_decoder, "decode", None)
    if callable(decode):
        return decode
    if callable(getattr(program_or_decoder, "model", None)) and callable(getattr(program_or_decoder, "guide", None)):
        raise TypeError(
            f"{type(program_or_decoder).__name__} is a program without decode(z): solve_inverse needs "
            "p(x | z) as a function of z. Try passing that function, e.g. "
            "solve_inverse(lg.likelihood, ..., latent_dim=lg.latent_dim) for a LinearGaussian."
        )
    if not callable(program_or_decoder):
        raise TypeError(
            "program_or_decoder must be an object with decode(z) -> distribution (such as pvae.VAE) or a "
            f"function z -> distribution, got {type(program_or_decoder).__name__}."
        )
    return program_or_decoder


def _find_latent_dim(obj: Any, latent_dim: int | None) -> int:
    if latent_dim is None:
        latent_dim = getattr(obj, "latent_dim", None)
        if latent_dim is None:
            latent_dim = getattr(getattr(obj, "__self__", None), "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(
            f"latent_dim must be a positive integer, got {latent_dim!r} (the decoder has no latent_dim "
            "attribute). Try solve_inverse(..., latent_dim=k)."
        )
    return latent_dim


class _Measurement:
    """y | z for one decoder: the Gaussian marginal over x where the decoder is
    Normal, the decoder mean pushed through M otherwise."""

    def __init__(self, decode: Callable, M: torch.Tensor, sy: torch.Tensor, include_decoder_noise: bool) -> None:
        self.decode, self.M, self.sy, self.noise = decode, M, sy, include_decoder_noise

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder mean ``(..., d)`` and its Normal scale ``(..., d)`` (or None)."""
        px = self.decode(z)
        if not isinstance(px, torch.distributions.Distribution):
            raise TypeError(
                f"the decoder must return a distribution over x, got {type(px).__name__}. Try returning "
                "dist.Normal(loc, scale).to_event(1)."
            )
        base = px.base_dist if isinstance(px, torch.distributions.Independent) else px
        if self.noise and isinstance(base, torch.distributions.Normal):
            loc, scale = torch.broadcast_tensors(base.loc, base.scale)
            return loc, scale
        return px.mean, None

    def _covariance(self, scale: torch.Tensor) -> torch.Tensor:
        """``M diag(s^2) M^T + diag(sigma_y^2)``: one ``(m, m)`` if ``s`` is shared, else per datum."""
        if all(st == 0 for st in scale.stride()[:-1]):  # a per-feature scale broadcast over the batch
            scale = scale.reshape(-1, scale.shape[-1])[0]
        cov = (self.M * scale.pow(2).unsqueeze(-2)) @ self.M.T
        return cov + torch.diag_embed(self.sy.pow(2))

    def distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        mean, scale = self.parts(z)
        loc = mean @ self.M.T
        if scale is None:
            return dist.Normal(loc, self.sy.expand(loc.shape)).to_event(1)
        return dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(self._covariance(scale)))

    def posterior_x(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[x | z, y], f(z))`` for latent draws ``(..., batch, k)``."""
        mean, scale = self.parts(z)
        if scale is None:
            return mean, mean
        cov = self._covariance(scale)
        resid = (y - mean @ self.M.T).unsqueeze(-1)
        solved = torch.cholesky_solve(resid, torch.linalg.cholesky(cov)).squeeze(-1)  # C^{-1}(y - M f)
        return mean + scale.pow(2) * (solved @ self.M), mean


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def solve_inverse(
    program_or_decoder: Any,
    M: torch.Tensor,
    y: torch.Tensor,
    sigma_y: float | torch.Tensor,
    method: Literal["map", "svi"] = "map",
    num_steps: int | None = None,
    num_particles: int = 8,
    num_samples: int = 256,
    learning_rate: float | None = None,
    latent_dim: int | None = None,
    init: torch.Tensor | None = None,
    include_decoder_noise: bool = True,
) -> InverseSolution:
    """Recover ``x`` from ``y = M x + noise`` with a VAE decoder as the prior [1, 3].

    The search runs over the latent :math:`z` of each measurement in the Pyro
    program

    .. math::

        z \\sim \\mathcal N(0, I_k), \\qquad
        y \\mid z \\sim \\mathcal N\\big(M f(z),\\ M \\Sigma_x(z) M^\\top + \\mathrm{diag}\\,\\sigma_y^2\\big),

    where :math:`f(z)` and :math:`\\Sigma_x(z) = \\mathrm{diag}\\, s(z)^2` are the mean
    and covariance of a Normal decoder (``x`` integrated out exactly). For any
    other family (Bernoulli, continuous Bernoulli, Poisson, ...) ``y`` is
    modelled from the decoder *mean* alone, :math:`y \\mid z \\sim \\mathcal N(M f(z),
    \\mathrm{diag}\\,\\sigma_y^2)`, i.e. ``sigma_y`` must absorb the decoder's own
    noise (as in Bora et al. [1]); ``include_decoder_noise=False`` does the
    same for a Normal decoder.

    * ``method="map"``: :math:`\\hat z = \\arg\\max_z \\log p(y \\mid z) + \\log p(z)`,
      by L-BFGS on Pyro's ``Trace_ELBO`` loss with a ``Delta`` guide.
    * ``method="svi"``: a Gaussian :math:`q(z) = \\mathcal N(m, \\mathrm{diag}\\, s^2)`
      per measurement fitted by ``TraceMeanField_ELBO`` (analytic KL to the
      prior, vectorised particles) and Adam, starting from the MAP.

    The estimate of :math:`\\mathbb E[x \\mid y]` averages :math:`\\mathbb E[x \\mid z, y]`
    over :math:`q` (``num_samples`` antithetic draws :math:`m \\pm s\\epsilon`, exact
    for a linear decoder; at :math:`\\hat z` for MAP). For a
    Normal decoder ``y`` also informs the decoder noise, so

    .. math::

        \\mathbb E[x \\mid z, y] = f(z) + \\Sigma_x M^\\top
            \\big(M \\Sigma_x M^\\top + \\mathrm{diag}\\,\\sigma_y^2\\big)^{-1} (y - M f(z)),

    and :math:`f(z)` otherwise. For a linear-Gaussian decoder :math:`p(z \\mid y)`
    is Gaussian, its mode is its mean, and this is linear in :math:`z`, so the
    MAP answer equals :func:`linear_gaussian_posterior_mean` up to the
    optimiser's tolerance. Nonlinear decoders can have several local optima;
    pass ``init`` (e.g. the encoder mean of a least-squares reconstruction).

    Parameters live in local tensors, never in Pyro's param store. Everything
    is vectorised over the batch of measurements.

    :param program_or_decoder: an object with ``decode(z) -> distribution``
        (such as :class:`pvae.VAE`), or a function ``z -> p(x | z)`` such as
        ``LinearGaussian(...).likelihood``; batch shape ``z.shape[:-1]``, event ``(d,)``.
    :param torch.Tensor M: the measurement matrix, ``(m, d)``.
    :param torch.Tensor y: measurements, ``(batch, m)`` or ``(m,)``.
    :param sigma_y: measurement noise standard deviation, a number or ``(m,)``.
    :param str method: ``"map"`` or ``"svi"``. Default ``"map"``.
    :param int num_steps: optimiser iterations. Default 200 (map), 1000 (svi).
    :param int num_particles: particles per step of the SVI loss (vectorised). Default 8.
    :param int num_samples: draws from :math:`q` for the SVI estimates (rounded up to
        an even number: antithetic pairs). Default 256.
    :param float learning_rate: default 1 for L-BFGS (map), 0.05 for Adam (svi),
        decayed a hundredfold over the run (svi).
    :param int latent_dim: ``k``; default the decoder's (or its owner's) ``latent_dim``.
    :param torch.Tensor init: starting latent ``(batch, k)``. Default: 0, the prior
        mean (map); the MAP solution from 0 (svi: the mean of :math:`q` starts there).
    :param bool include_decoder_noise: integrate out a Normal decoder's noise. Default True.
    :returns: an :class:`InverseSolution` (rows squeezed away if ``y`` was ``(m,)``).
    """
    if method not in ("map", "svi"):
        raise ValueError(f"method must be one of ['map', 'svi'], got {method!r}.")
    decode = _decoder(program_or_decoder)
    k = _find_latent_dim(program_or_decoder, latent_dim)
    M, y, single = _measurements(M, y, None)
    batch, m = y.shape
    sy = _noise(sigma_y, "sigma_y", m, M.dtype)
    steps = _check_positive_int("num_steps", (200 if method == "map" else 1000) if num_steps is None else num_steps)
    num_particles = _check_positive_int("num_particles", num_particles)
    num_samples = _check_positive_int("num_samples", num_samples)
    lr = (1.0 if method == "map" else 0.05) if learning_rate is None else float(learning_rate)
    if not lr > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    meas = _Measurement(decode, M, sy, bool(include_decoder_noise))
    with torch.no_grad():
        probe = meas.parts(torch.zeros(k, dtype=M.dtype))[0]
    if probe.shape[-1:] != M.shape[1:]:
        raise ValueError(
            f"M must have one column per feature of x: the decoder gives {probe.shape[-1]} features, M has "
            f"shape {tuple(M.shape)}."
        )
    start = torch.zeros(batch, k, dtype=M.dtype) if init is None else _as(init, "init", M.dtype)
    if start.shape != (batch, k):
        raise ValueError(f"init must have shape ({batch}, {k}) (batch, latent_dim), got {tuple(start.shape)}.")

    prior_loc, prior_scale = torch.zeros(k, dtype=M.dtype), torch.ones(k, dtype=M.dtype)

    def model(y_obs: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, batch, dim=-1):
            z = pyro.sample(LATENT_SITE, dist.Normal(prior_loc, prior_scale).to_event(1))
            pyro.sample(MEASUREMENT_SITE, meas.distribution(z), obs=y_obs)

    prior = dist.Normal(prior_loc, prior_scale).to_event(1)
    if method == "map" or init is None:
        map_lr = lr if method == "map" else 1.0
        map_steps = steps if method == "map" else 200
        z_map = _map_latent(model, y, start, map_lr, map_steps)
    if method == "map":
        z_loc = z_map
        with torch.no_grad():
            log_density = meas.distribution(z_loc).log_prob(y) + prior.log_prob(z_loc)
            x_mean, decoded = meas.posterior_x(z_loc, y)
        z_scale = None
    else:
        loc = (z_map if init is None else start).clone().requires_grad_(True)
        raw_scale = torch.full((batch, k), math.log(math.expm1(1.0)), dtype=M.dtype, requires_grad=True)

        def q() -> dist.TorchDistribution:
            return dist.Normal(loc, torch.nn.functional.softplus(raw_scale) + 1e-5).to_event(1)

        def guide(y_obs: torch.Tensor) -> None:
            with pyro.plate(DATA_PLATE, batch, dim=-1):
                pyro.sample(LATENT_SITE, q())

        elbo = TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        opt = torch.optim.Adam([loc, raw_scale], lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _DECAY ** (step / steps))
        with pyro.validation_enabled(False):
            _validate_once(model, guide, y)
            for _ in range(steps):
                loss = elbo.differentiable_loss(model, guide, y)
                # gradients for q's parameters only: the decoder's .grad stays untouched
                loc.grad, raw_scale.grad = torch.autograd.grad(loss, [loc, raw_scale])
                opt.step()
                sched.step()
        with torch.no_grad():
            qz = q()
            eps = torch.randn((num_samples + 1) // 2, batch, k, dtype=M.dtype)
            eps = torch.cat([eps, -eps])  # antithetic pairs: exact for a linear decoder
            z = qz.base_dist.loc + qz.base_dist.scale * eps  # (num_samples, batch, k)
            log_density = (
                meas.distribution(z).log_prob(y) + prior.log_prob(z) - qz.log_prob(z)
            ).mean(0)
            x_all, dec_all = meas.posterior_x(z, y)
            x_mean, decoded = x_all.mean(0), dec_all.mean(0)
            z_loc, z_scale = loc.detach(), qz.base_dist.scale.detach()
    if single:
        x_mean, decoded, z_loc, log_density = x_mean[0], decoded[0], z_loc[0], log_density[0]
        z_scale = None if z_scale is None else z_scale[0]
    return InverseSolution(x_mean, decoded, z_loc, z_scale, log_density, method)


def _map_latent(model: Callable, y: torch.Tensor, start: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """argmax_z log p(y, z) by L-BFGS on Trace_ELBO with a Delta guide (= -log p(y, z))."""
    loc = start.clone().requires_grad_(True)
    batch = start.shape[0]

    def guide(y_obs: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, batch, dim=-1):
            pyro.sample(LATENT_SITE, dist.Delta(loc).to_event(1))

    loss_fn = Trace_ELBO(num_particles=1, max_plate_nesting=1).differentiable_loss
    opt = torch.optim.LBFGS([loc], lr=lr, max_iter=steps, history_size=20, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        loss = loss_fn(model, guide, y)
        # the decoder's .grad stays untouched; L-BFGS views the gradient flat
        loc.grad = torch.autograd.grad(loss, [loc])[0].contiguous()
        return loss.detach()

    with pyro.validation_enabled(False):  # checked once here, not on every line-search step
        _validate_once(model, guide, y)
        opt.step(closure)
    return loc.detach()


def _validate_once(model: Callable, guide: Callable, y: torch.Tensor) -> None:
    """Run the pair once with Pyro's validation on: shapes and supports are checked here."""
    with pyro.validation_enabled(True), torch.no_grad():
        Trace_ELBO(num_particles=1, max_plate_nesting=1).differentiable_loss(model, guide, y)
