"""Gaussian noise that is autocorrelated in time: the AR(1) process of fMRI.

A block of ``regions`` time series of length ``T`` (features laid out region
by region, ``(..., regions * T)``) is a mean plus stationary AR(1) noise,

.. math::

    x_{rt} = \\mu_{rt} + e_{rt}, \\qquad
    e_{r1} \\sim \\mathcal N(0, \\sigma_r^2), \\qquad
    e_{rt} = \\rho_r e_{r,t-1} + \\sigma_r \\sqrt{1 - \\rho_r^2}\\, \\eta_{rt},\\ \\eta \\sim \\mathcal N(0, 1),

so :math:`\\mathrm{Cov}(e_{rs}, e_{rt}) = \\sigma_r^2 \\rho_r^{|s - t|}` (a Toeplitz
covariance) with the same marginal variance :math:`\\sigma_r^2` at every time
point. The log-density is exact in :math:`O(T)` by whitening, the chain rule
of the Markov process,

.. math::

    \\log p(x) = \\sum_r \\Big[\\log \\mathcal N(e_{r1}; 0, \\sigma_r^2)
        + \\sum_{t \\ge 2} \\log \\mathcal N\\big(e_{rt}; \\rho_r e_{r,t-1}, \\sigma_r^2 (1 - \\rho_r^2)\\big)\\Big],

and :meth:`AR1Normal.log_prob` returns the terms per time point, so that
``.to_event(1)`` sums them to the joint density.

Missing time points (``.mask(mask)``) are marginalised, not dropped: by the
Markov property the observed points form a chain whose step over a gap of
:math:`k` points is :math:`e_t \\mid e_s \\sim \\mathcal N(\\rho^k e_s, \\sigma^2 (1 - \\rho^{2k}))`,
so each observed point is scored given the last observed one before it (the
first observed point by the stationary :math:`\\mathcal N(0, \\sigma^2)`).
Dropping the missing terms of the unmasked chain would instead score
:math:`e_t` given a value that was never seen.

References

1. K. J. Worsley, K. J. Friston et al. A general statistical analysis for fMRI
   data. NeuroImage 15, 2002 (AR(1) noise in the GLM of fMRI).
2. J. D. Hamilton. Time Series Analysis. Princeton, 1994, ch. 5 (the exact
   AR(1) likelihood and its prediction-error decomposition).
3. Seed 004: a VAE likelihood that matches AR(1) noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

__all__ = ["AR1Normal"]


class AR1Normal(TorchDistribution):
    """Stationary AR(1) Gaussian noise around ``loc``, per region, along the last ``length`` points.

    :param torch.Tensor loc: ``(..., regions * length)`` means :math:`\\mu`.
    :param rho: :math:`\\rho \\in (-1, 1)`, a number, ``(regions,)`` or
        broadcastable to ``(..., regions)``.
    :param scale: the marginal standard deviation :math:`\\sigma > 0`, shaped as ``rho``.
    :param int length: time points :math:`T` per region.
    :param obs_mask: bool ``(..., regions * length)``, True where observed (see :meth:`mask`).
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: torch.Tensor, rho, scale, length: int, obs_mask: torch.Tensor | None = None,
                 validate_args=None) -> None:
        if loc.shape[-1] % length:
            raise ValueError(f"the last dimension of loc ({loc.shape[-1]}) is not a multiple of length={length}.")
        self.loc, self.length = loc, int(length)
        self.regions = loc.shape[-1] // self.length
        self.rho = torch.as_tensor(rho, dtype=loc.dtype, device=loc.device)
        self.scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        self.obs_mask = obs_mask
        super().__init__(loc.shape, torch.Size(), validate_args=validate_args)

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.regions, self.length))

    def _per_region(self, value: torch.Tensor) -> torch.Tensor:
        """``rho`` or ``scale`` as ``(..., regions, 1)``."""
        value = value if value.dim() else value.expand(self.regions)
        return value.unsqueeze(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        scale = self._per_region(self.scale).expand(*self.loc.shape[:-1], self.regions, self.length)
        return scale.pow(2).flatten(-2)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        mask = None if self.obs_mask is None else self.obs_mask.expand(batch_shape)
        return AR1Normal(self.loc.expand(batch_shape), self.rho, self.scale, self.length, mask,
                         validate_args=False)

    def mask(self, mask):
        """Mark time points missing (False) in ``mask`` and marginalise them exactly.

        A Python bool keeps Pyro's meaning (``False`` switches the whole log-density off).
        """
        if isinstance(mask, bool):
            return super().mask(mask)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.loc.device).expand(self.batch_shape)
        if self.obs_mask is not None:
            mask = mask & self.obs_mask
        return AR1Normal(self.loc, self.rho, self.scale, self.length, mask, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per-time-point terms of the exact log-density, ``(..., regions * length)``; they
        sum to :math:`\\log p(x)` (0 at missing points)."""
        if self._validate_args:
            self._validate_sample(value)
        rho, scale = self._per_region(self.rho), self._per_region(self.scale)
        e = self._blocks(value - self.loc)
        if self.obs_mask is None:
            # scan t given scan t-1; the first scan has rho^0 -> 0: the stationary term
            prev = F.pad(e[..., :-1], (1, 0))
            rho_k = F.pad(rho.expand_as(e)[..., 1:], (1, 0))
            return self._normal(e, rho_k * prev, scale.pow(2) * (1 - rho_k.pow(2))).flatten(-2)
        m = self._blocks(self.obs_mask).expand(e.shape)
        e = torch.where(m, e, torch.zeros_like(e))  # never compute with a missing value (it may be NaN)
        t = torch.arange(self.length, device=e.device)
        last = torch.where(m, t, torch.full_like(t, -1)).cummax(dim=-1).values  # last observed index <= t
        prev_idx = torch.cat([torch.full_like(last[..., :1], -1), last[..., :-1]], dim=-1)
        has_prev = prev_idx >= 0
        gap = (t - prev_idx).to(e.dtype)
        rho_k = torch.where(has_prev, rho.expand_as(e).pow(gap), torch.zeros_like(e))
        prev = e.gather(-1, prev_idx.clamp(min=0))
        terms = self._normal(e, rho_k * prev, scale.pow(2) * (1 - rho_k.pow(2)))
        return torch.where(m, terms, torch.zeros_like(terms)).flatten(-2)

    @staticmethod
    def _normal(e: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return -0.5 * (math.log(2 * math.pi) + var.log() + (e - mean).pow(2) / var)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Reparameterised draws: :math:`e = L \\eta` with the lower-triangular
        :math:`L_{ts} = \\sigma \\rho^{t-s} c_s` (:math:`c_1 = 1`, :math:`c_s = \\sqrt{1-\\rho^2}`)."""
        shape = self._extended_shape(sample_shape)
        eta = self._blocks(torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device))
        rho, scale = self._per_region(self.rho), self._per_region(self.scale)  # (..., R, 1)
        t = torch.arange(self.length, device=self.loc.device, dtype=self.loc.dtype)
        lag = t[:, None] - t[None, :]  # (T, T)
        lower = lag >= 0
        powers = torch.where(lower, rho.unsqueeze(-1).pow(lag.clamp(min=0)), torch.zeros((), dtype=rho.dtype))
        c = torch.cat([torch.ones_like(rho), (1 - rho.pow(2)).sqrt().expand(*rho.shape[:-1], self.length - 1)], -1)
        filt = scale.unsqueeze(-1) * powers * c.unsqueeze(-2)  # (..., R, T, T)
        e = (filt @ eta.unsqueeze(-1)).squeeze(-1)
        return self.loc + e.flatten(-2)
