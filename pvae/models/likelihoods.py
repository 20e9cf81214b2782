"""Observation families by name, shared by every pvae model.

A :class:`Likelihood` turns a decoder's raw output into a distribution over the
features of ``x`` (batch shape ``(..., input_dim)``, no event dimensions; the
model adds ``.to_event(1)``), owns the family's learned parameters (a Normal's
per-feature scale, a negative binomial's dispersion), and checks that data lie
in the family's support before anything is trained on them.

Choosing a family (seeds 000 and 004): ``bernoulli`` for binary pixels or spike
/ no-spike bins, ``continuous_bernoulli`` for grey values in [0, 1] (Loaiza-Ganem
and Cunningham 2019), ``normal`` for real values such as calcium-imaging
fluorescence, ``laplace`` or ``student_t`` where heavy-tailed noise (salt and
pepper) would make a Gaussian chase outliers, ``ar1_normal`` for time series
whose noise is autocorrelated (fMRI), ``von_mises`` for periodic coordinates
(fractional coordinates of a crystal, angles), ``internal_coordinates`` for
chains (bond lengths, angles, dihedrals), ``poisson`` for spike counts,
``negative_binomial`` for over-dispersed counts (e.g. gene expression),
``zero_inflated_negative_binomial`` for counts with extra zeros (dropouts),
``categorical`` for integer-coded features with known cardinalities.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions.utils import broadcast_all
from torch.nn.functional import binary_cross_entropy_with_logits

from ..inputs import DataError, DataTypeError
from .ar1 import AR1Normal
from .nets import DiagonalNormal, EventWrapped, Independent, positive

LikelihoodName = Literal[
    "bernoulli",
    "continuous_bernoulli",
    "normal",
    "laplace",
    "student_t",
    "ar1_normal",
    "von_mises",
    "internal_coordinates",
    "poisson",
    "negative_binomial",
    "zero_inflated_negative_binomial",
    "categorical",
]

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "LikelihoodName",
    "SupportError",
    "check_mask",
    "make_likelihood",
]

RHO_MAX = 1 - 1e-4  # a learned AR(1) rho stays in (-RHO_MAX, RHO_MAX)


class SupportError(DataError):
    """Data outside the support of the chosen likelihood (a :class:`~pvae.inputs.DataError`)."""


def check_mask(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Check that ``mask`` is None or a bool tensor of ``x``'s shape."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise DataTypeError(
            f"mask must be a bool tensor (True = observed), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}. Try mask=~torch.isnan(x)."
        )
    if mask.shape != x.shape:
        raise DataError(
            f"mask must have the shape of x: expected {tuple(x.shape)}, got {tuple(mask.shape)}."
        )


def _first_index(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


class Likelihood(nn.Module):
    """Base class: decoder output -> distribution over the features of ``x``.

    :param int input_dim: number of features of ``x``.
    """

    name: str = ""
    support_text: str = ""
    hint: str = ""
    fill_value: float = 0.0  # a valid value written over missing entries

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.input_dim = int(input_dim)

    @property
    def output_dim(self) -> int:
        """Raw decoder outputs this family needs."""
        return self.input_dim

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def point(self, d: dist.TorchDistribution) -> torch.Tensor:
        """A point reconstruction: the mean of ``d`` (the mode for categorical)."""
        return d.mean

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(x)

    def check(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Raise a clear error if observed entries of ``x`` are NaN or off-support.

        :param torch.Tensor x: data of shape ``(batch, input_dim)``; entries where
            ``mask`` is False may hold anything, NaN included.
        :param mask: bool tensor of ``x``'s shape, True where observed.
        :raises DataError: on a wrong shape, NaN at an observed entry, or a value
            outside the support (:class:`SupportError`).
        """
        if x.dim() < 1 or x.shape[-1] != self.input_dim:
            raise DataError(
                f"x must have {self.input_dim} features in its last dimension, "
                f"got shape {tuple(x.shape)}."
            )
        check_mask(x, mask)
        if x.is_complex():
            raise DataTypeError(f"x must be real, got a complex tensor ({x.dtype}). Try x.real or x.abs().")
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            x = x.double()  # bool / integer data: torch has no floor or isnan for every dtype
        observed = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
        nan = torch.isnan(x) & observed
        if nan.any():
            raise DataError(
                f"x has {int(nan.sum())} NaN entries at observed positions (first at "
                f"{_first_index(nan)}). Try mask=~torch.isnan(x) to mark them missing."
            )
        bad = observed & ~self._in_support(x)
        if bad.any():
            idx = _first_index(bad)
            raise SupportError(
                f"likelihood {self.name!r} needs x in {self.support_text}; found "
                f"{int(bad.sum())} values outside it, e.g. x{list(idx)} = {x[idx].item():g}."
                + (f" Try {self.hint}." if self.hint else "")
            )


class _BernoulliFeatures(Independent):
    """Independent Bernoulli features, summed before the sign flip.

    The same density as ``Bernoulli(logits).to_event(n)``:
    :math:`\\log p(x) = -\\sum_d \\mathrm{BCE}(\\ell_d, x_d)`. torch's
    ``Bernoulli.log_prob`` negates the full ``(..., D)`` cross-entropy before
    :class:`~torch.distributions.Independent` sums it; summing first negates a
    tensor D times smaller, one full pass over the features fewer (a tenth of
    an MNIST IWAE evaluation).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        bce = binary_cross_entropy_with_logits(logits, value, reduction="none")
        n = self.reinterpreted_batch_ndims
        return bce.flatten(-n).sum(-1).neg() if n else bce.neg()


class _BernoulliLogits(EventWrapped, dist.Bernoulli):
    """``dist.Bernoulli`` whose :meth:`to_event` gives :class:`_BernoulliFeatures`."""

    event_class = _BernoulliFeatures


class _Bernoulli(Likelihood):
    name = "bernoulli"
    support_text = "{0, 1}"
    hint = "likelihood='continuous_bernoulli' for values in [0, 1], or binarise x"

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return _BernoulliLogits(logits=raw)

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        return (x == 0) | (x == 1)


class _ContinuousBernoulliLogits(dist.ContinuousBernoulli):
    """``dist.ContinuousBernoulli`` whose normaliser, mean and inverse CDF are computed
    from the logits :math:`\\ell` rather than from ``probs = sigmoid(logits)``.

    With :math:`p = \\sigma(\\ell)`, :math:`1 - 2p = -\\tanh(\\ell / 2)`, so the
    normaliser of :math:`p^x (1 - p)^{1 - x}` on [0, 1] (Loaiza-Ganem and
    Cunningham 2019) and the mean are

    .. math::

        \\log C(\\ell) = \\log \\frac{\\ell}{\\tanh(\\ell / 2)}
            = \\log|\\ell| - \\log\\big(-\\mathrm{expm1}(-|\\ell|)\\big) + \\log\\big(1 + e^{-|\\ell|}\\big),
        \\qquad \\mathbb E[x] = -\\frac{1}{\\mathrm{expm1}(-\\ell)} - \\frac1\\ell,

    with their series :math:`\\log 2 + \\ell^2/12 - 7 \\ell^4/1440` and
    :math:`1/2 + \\ell/12 - \\ell^3/720` near 0. torch computes both from the
    probabilities, which saturate in float32 beyond :math:`|\\ell| \\approx 15`:
    its density integrated to 0.80 at :math:`\\ell = 20` and 0.32 at 50, and its
    mean stopped at 0.937. The inverse CDF,
    :math:`x = \\mathrm{log1p}(u\\,\\mathrm{expm1}(\\ell)) / \\ell`, is written as
    :math:`1 + \\mathrm{log1p}((1 - u)\\,\\mathrm{expm1}(-\\ell)) / \\ell` for
    :math:`\\ell > 0`, so that neither overflows.
    """

    _LOG_NORM_SERIES = 1e-3  # |logit| below which the series are used (their next terms are ~1e-13 there)
    _MEAN_SERIES = 0.3  # ... for the mean, whose exact form cancels near 0 (series error 8e-8 at 0.3)
    _ICDF_SERIES = 1e-4

    def _cont_bern_log_norm(self) -> torch.Tensor:
        a = self.logits.abs()
        small = a < self._LOG_NORM_SERIES
        safe = torch.where(small, torch.ones_like(a), a)
        exact = safe.log() - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
        sq = self.logits.square()
        return torch.where(small, math.log(2.0) + sq / 12 - 7 * sq.square() / 1440, exact)

    @property
    def mean(self) -> torch.Tensor:
        logit = self.logits
        small = logit.abs() < self._MEAN_SERIES
        safe = torch.where(small, torch.ones_like(logit), logit)
        exact = -1 / torch.expm1(-safe) - 1 / safe
        return torch.where(small, 0.5 + logit / 12 - logit.pow(3) / 720, exact)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        logit = self.logits
        small = logit.abs() < self._ICDF_SERIES
        safe = torch.where(small, torch.ones_like(logit), logit)
        positive = 1 + torch.log1p((1 - value) * torch.expm1(-safe)) / safe
        negative = torch.log1p(value * torch.expm1(safe.clamp(max=0.0))) / safe
        exact = torch.where(safe > 0, positive, negative)
        return torch.where(small, value + logit * value * (1 - value) / 2, exact)


class _ContinuousBernoulli(Likelihood):
    name = "continuous_bernoulli"
    support_text = "[0, 1]"
    hint = "rescaling x to [0, 1]"

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return _ContinuousBernoulliLogits(logits=raw)

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 0) & (x <= 1)


class _LocScale(Likelihood):
    """Location-scale families: the decoder gives the location; the scale is a
    fixed number or a learned parameter, one per feature (or ``scale_width`` of them)."""

    support_text = "the real line (finite values)"

    def __init__(self, input_dim: int, scale: float | Literal["learned"] = "learned",
                 scale_width: int | None = None) -> None:
        super().__init__(input_dim)
        if scale == "learned":
            self.raw_scale = nn.Parameter(torch.zeros(input_dim if scale_width is None else scale_width))
            self.fixed_scale = None
        elif isinstance(scale, (int, float)) and scale > 0:
            self.raw_scale = None
            self.fixed_scale = float(scale)
        else:
            raise ValueError(f"scale must be 'learned' or a positive number, got {scale!r}.")

    def scale(self) -> torch.Tensor | float:
        return positive(self.raw_scale) if self.raw_scale is not None else self.fixed_scale


class _Normal(_LocScale):
    name = "normal"

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return DiagonalNormal(raw, self.scale())


class _Laplace(_LocScale):
    name = "laplace"

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(raw, self.scale())


class _StudentT(_LocScale):
    name = "student_t"

    def __init__(
        self,
        input_dim: int,
        scale: float | Literal["learned"] = "learned",
        df: float | Literal["learned"] = "learned",
    ) -> None:
        super().__init__(input_dim, scale)
        if df == "learned":
            # softplus(raw) + 1 starts at df = 4 and keeps a finite mean (df > 1)
            self.raw_df = nn.Parameter(torch.full((input_dim,), 2.94))
            self.fixed_df = None
        elif isinstance(df, (int, float)) and df > 0:
            self.raw_df, self.fixed_df = None, float(df)
        else:
            raise ValueError(f"df must be 'learned' or a positive number, got {df!r}.")

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        df = positive(self.raw_df, 1.0) if self.raw_df is not None else self.fixed_df
        return dist.StudentT(df, raw, self.scale())

    def point(self, d: dist.TorchDistribution) -> torch.Tensor:
        return d.loc.expand(d.batch_shape)


class _AR1Normal(_LocScale):
    """A time series (or a ``(regions, length)`` block, region by region) with
    stationary AR(1) Gaussian noise around the decoder's output
    (:class:`~pvae.models.AR1Normal`: exact log-density by whitening, missing
    time points marginalised, reparameterised draws).

    :param int length: time points per region; ``input_dim`` must be a multiple
        of it (regions = input_dim / length). Default ``input_dim`` (one series).
    :param rho: ``"learned"`` (through a tanh, starting at 0) or a number in (-1, 1).
    :param scale: the marginal standard deviation, ``"learned"`` or a positive number.
    :param bool per_region: one rho and one scale per region instead of one each. Default False.
    """

    name = "ar1_normal"

    def __init__(
        self,
        input_dim: int,
        length: int | None = None,
        rho: float | Literal["learned"] = "learned",
        scale: float | Literal["learned"] = "learned",
        per_region: bool = False,
    ) -> None:
        length = input_dim if length is None else length
        if int(length) != length or length < 1 or input_dim % int(length):
            raise ValueError(
                f"length must be a positive integer dividing input_dim={input_dim} (time points per "
                f"region), got {length!r}."
            )
        width = input_dim // int(length) if per_region else 1
        super().__init__(input_dim, scale, scale_width=width)
        self.length = int(length)
        if rho == "learned":
            self.raw_rho, self.fixed_rho = nn.Parameter(torch.zeros(width)), None
        elif isinstance(rho, (int, float)) and -1 < rho < 1:
            self.raw_rho, self.fixed_rho = None, float(rho)
        else:
            raise ValueError(f"rho must be 'learned' or a number in (-1, 1), got {rho!r}.")

    def rho(self) -> torch.Tensor | float:
        """:math:`\\rho = (1 - 10^{-4}) \\tanh(\\text{raw})`, one or one per region.

        The factor keeps a learned rho off +-1, where float32's tanh rounds to 1 by
        raw = 9 and the innovation variance :math:`\\sigma^2 (1 - \\rho^2)` would be 0
        (a NaN log-density and NaN parameters after one step): a series whose
        residual is constant in time drives rho there."""
        return RHO_MAX * torch.tanh(self.raw_rho) if self.raw_rho is not None else self.fixed_rho

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return AR1Normal(raw, self.rho(), self.scale(), self.length)


class _VonMises(Likelihood):
    """Periodic coordinates: fractional coordinates in [0, 1), angles in [0, 2pi), phases.

    Each feature lives on a circle of circumference ``period``; with
    :math:`\\theta = 2\\pi x / \\text{period}`,

    .. math::

        p(x) = \\frac{2\\pi}{\\text{period}}
            \\frac{e^{\\kappa \\cos(\\theta - \\mu)}}{2\\pi I_0(\\kappa)},

    so 0.99 and 0.01 are neighbours (a squared error calls them 0.98 apart).
    The decoder gives two outputs per feature, read as a point :math:`(c, s)`
    in the plane whose angle is the location, :math:`\\mu = \\operatorname{atan2}(s, c)`:
    no seam at :math:`\\pm\\pi` for the network to jump. The concentration
    :math:`\\kappa` is learned per feature (exp link, starting at 1: Adam then
    moves it by relative steps, and tight coordinates need :math:`\\kappa` in
    the thousands). Point
    reconstructions and draws are wrapped into ``[0, period)``.

    :param float period: circumference in the data's units. Default 1
        (fractional coordinates); ``2 * math.pi`` for angles in radians.
    """

    name = "von_mises"
    hint = "rescaling x into [0, period) (e.g. x % 1 for fractional coordinates), or likelihood='normal'"

    def __init__(self, input_dim: int, period: float = 1.0) -> None:
        super().__init__(input_dim)
        if not (isinstance(period, (int, float)) and math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive number, got {period!r}.")
        self.period = float(period)
        self.support_text = f"[0, {self.period:g})"
        self.raw_concentration = nn.Parameter(torch.zeros(input_dim))  # exp -> 1

    @property
    def output_dim(self) -> int:
        return 2 * self.input_dim

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        c, s = raw.split(self.input_dim, dim=-1)
        return _PeriodicVonMises(torch.atan2(s, c), self.raw_concentration.clamp(max=12.0).exp(), self.period)

    def point(self, d: dist.TorchDistribution) -> torch.Tensor:
        return d.location_on_period()

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 0) & (x < self.period)


class _PeriodicVonMises(dist.VonMises):
    """A von Mises on a circle of circumference ``period``: values in data units."""

    def __init__(self, loc: torch.Tensor, concentration: torch.Tensor, period: float, validate_args=None) -> None:
        self.period = period
        super().__init__(loc, concentration, validate_args=False)

    @property
    def support(self):
        return dist.constraints.real

    def _angle(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2 * math.pi / self.period)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(self._angle(value)) + math.log(2 * math.pi / self.period)

    def location_on_period(self) -> torch.Tensor:
        """The location in data units, in ``[0, period)``."""
        return torch.remainder(self.loc, 2 * math.pi) * (self.period / (2 * math.pi))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return torch.remainder(super().sample(sample_shape), 2 * math.pi) * (self.period / (2 * math.pi))

    @property
    def mean(self) -> torch.Tensor:
        return self.location_on_period()

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _PeriodicVonMises(self.loc.expand(batch_shape), self.concentration.expand(batch_shape), self.period)


class _Concatenated(dist.TorchDistribution):
    """Independent distributions over consecutive blocks of the last dimension."""

    arg_constraints: dict = {}
    support = dist.constraints.real

    def __init__(self, parts: Sequence[dist.TorchDistribution]) -> None:
        self.parts = list(parts)
        self.sizes = [p.batch_shape[-1] for p in self.parts]
        batch = torch.broadcast_shapes(*(p.batch_shape[:-1] for p in self.parts))
        super().__init__(torch.Size((*batch, sum(self.sizes))), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.log_prob(v) for p, v in zip(self.parts, value.split(self.sizes, -1))], -1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return torch.cat([p.sample(sample_shape) for p in self.parts], -1)

    @property
    def mean(self) -> torch.Tensor:
        return torch.cat([p.mean for p in self.parts], -1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _Concatenated([p.expand((*batch_shape[:-1], n)) for p, n in zip(self.parts, self.sizes)])


class _BondAngle(dist.VonMises):
    """A von Mises folded onto [0, pi] by :math:`|\\cdot|`, for a bond angle.

    If :math:`\\theta \\sim \\mathrm{vM}(\\mu, \\kappa)` on :math:`[-\\pi, \\pi]`,
    :math:`a = |\\theta|` has the density :math:`\\mathrm{vM}(a) + \\mathrm{vM}(-a)` on
    :math:`[0, \\pi]`, which integrates to one there (the unfolded density alone
    does not). ``mean`` is the folded location :math:`|\\mu|`, the point
    reconstruction: the mode for the concentrated angles of real chains, not the
    arithmetic mean of the draws (that has no closed form)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(super().log_prob(value), super().log_prob(-value))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return super().sample(sample_shape).abs()

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.abs()

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _BondAngle(self.loc.expand(batch_shape), self.concentration.expand(batch_shape))


class _InternalCoordinates(Likelihood):
    """A chain of ``atoms`` atoms in internal coordinates: features are the
    ``atoms - 1`` bond lengths, then the ``atoms - 2`` bond angles (radians, in
    [0, pi]), then the ``atoms - 3`` dihedrals (radians, in [-pi, pi]), as
    :func:`pvae.models.internal_coordinates` gives them (concatenated).

    Bond lengths are log-normal (location from the decoder, a learned scale
    per bond); angles von Mises folded onto [0, pi] (the density of
    :math:`|\\theta|`), dihedrals von Mises (locations from (cos, sin)
    outputs, learned concentrations); scale and concentrations through exp
    links, since real spreads (0.02 Å, concentrations of 10^3) lie orders of
    magnitude from any start. A chain decoded this way has bond lengths
    and angles near the data's by construction, whatever its Cartesian shape:
    rebuild it with :func:`pvae.models.cartesian_from_internal`.

    :param int atoms: atoms per chain (>= 4); ``input_dim`` must be ``3 * atoms - 6``.
    """

    name = "internal_coordinates"
    support_text = "bonds > 0, angles in [0, pi], dihedrals in [-pi, pi]"
    fill_value = 1.0  # inside every block's support (a bond length of 0 is not)
    hint = "features from pvae.models.internal_coordinates(xyz), concatenated"

    def __init__(self, input_dim: int, atoms: int | None = None) -> None:
        super().__init__(input_dim)
        atoms = (input_dim + 6) // 3 if atoms is None else atoms
        if int(atoms) != atoms or atoms < 4 or 3 * atoms - 6 != input_dim:
            raise ValueError(
                f"likelihood 'internal_coordinates' needs input_dim = 3 * atoms - 6 with atoms >= 4 "
                f"(bonds, angles, dihedrals); got input_dim={input_dim}, atoms={atoms!r}."
            )
        self.atoms = int(atoms)
        self.sizes = (self.atoms - 1, self.atoms - 2, self.atoms - 3)
        # log-scale parameters (exp links): the data's spreads are orders of magnitude from
        # any start (bond sd ~0.02 A, concentrations ~10^3), which Adam reaches in relative steps
        self.raw_bond_scale = nn.Parameter(torch.full((self.sizes[0],), math.log(0.1)))
        self.raw_concentration = nn.Parameter(torch.zeros(self.sizes[1] + self.sizes[2]))

    @property
    def output_dim(self) -> int:
        return self.sizes[0] + 2 * (self.sizes[1] + self.sizes[2])

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        nb, na, nd = self.sizes
        bond_loc, cos, sin = raw.split([nb, na + nd, na + nd], dim=-1)
        loc = torch.atan2(sin, cos)
        conc = self.raw_concentration.clamp(max=12.0).exp().expand_as(loc)
        return _Concatenated([dist.LogNormal(bond_loc, self.raw_bond_scale.clamp(-12.0, 4.0).exp()),
                              _BondAngle(loc[..., :na], conc[..., :na]), dist.VonMises(loc[..., na:], conc[..., na:])])

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        b, a, d = x.split(list(self.sizes), -1)
        return torch.cat([(b > 0) & torch.isfinite(b), (a >= 0) & (a <= math.pi), (d >= -math.pi) & (d <= math.pi)], -1)


def _is_count(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0) & (x == torch.floor(x)) & torch.isfinite(x)


class _Poisson(Likelihood):
    name = "poisson"
    support_text = "the non-negative integers"
    hint = "likelihood='normal' for real-valued data"

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        return dist.Poisson(positive(raw))

    _in_support = staticmethod(_is_count)


class _NegativeBinomial(Likelihood):
    """Negative binomial with a learned dispersion (``total_count`` :math:`r`).

    The decoder's output is read as the logits of the success probability
    (``parameterization="logits"``, mean :math:`r e^{\\ell}`) or as the log of
    the mean (``"log_mean"``, scVI's parameterisation: logits
    :math:`\\log\\mu - \\log r`, so the mean is :math:`\\mu` whatever the
    dispersion and the variance :math:`\\mu + \\mu^2 / r`). The dispersion is
    one per feature, or one per feature and group (``dispersion_groups`` rows,
    e.g. gene-batch dispersion: :meth:`forward` then takes each datum's group).

    The dispersion's link is softplus for ``"logits"`` and exp for
    ``"log_mean"`` (mean and dispersion both on the log scale, as scVI's
    ``px_r``): Adam then moves :math:`r` by relative steps, and a gene whose
    counts are nearly Poisson (:math:`r` in the hundreds) gets there in
    hundreds of steps, not in the tens of thousands a linear-scale link
    needs. On simulated counts (6000 cells, 1000 genes, 1400 steps) a
    dispersion stuck near 1 cost 50 nats of ELBO per cell and most of the
    cell-type structure of the latent space.
    """

    name = "negative_binomial"
    support_text = "the non-negative integers"
    hint = "likelihood='normal' for real-valued data"
    _in_support = staticmethod(_is_count)

    def __init__(
        self,
        input_dim: int,
        parameterization: Literal["logits", "log_mean"] = "logits",
        dispersion_groups: int = 1,
    ) -> None:
        super().__init__(input_dim)
        if parameterization not in ("logits", "log_mean"):
            raise ValueError(f"parameterization must be 'logits' or 'log_mean', got {parameterization!r}.")
        if int(dispersion_groups) != dispersion_groups or dispersion_groups < 1:
            raise ValueError(f"dispersion_groups must be a positive integer, got {dispersion_groups!r}.")
        self.parameterization = parameterization
        shape = (input_dim,) if dispersion_groups == 1 else (int(dispersion_groups), input_dim)
        self.raw_total_count = nn.Parameter(torch.zeros(shape))

    def total_count(self, group: torch.Tensor | None = None) -> torch.Tensor:
        """The dispersion :math:`r`: ``(input_dim,)``, or ``(batch, input_dim)``
        for each datum's ``group`` (integer codes) when there are several groups."""
        raw = self.raw_total_count
        r = raw.exp() if self.parameterization == "log_mean" else positive(raw)
        if r.dim() == 1:
            return r
        if group is None:
            raise ValueError(
                f"this likelihood has {r.shape[0]} dispersion groups; pass each datum's group "
                "(integer codes of shape (batch,))."
            )
        return r[group]

    def _logits(self, raw: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return raw - r.log() if self.parameterization == "log_mean" else raw

    def forward(self, raw: torch.Tensor, group: torch.Tensor | None = None) -> dist.TorchDistribution:
        r = self.total_count(group)
        return dist.NegativeBinomial(r, logits=self._logits(raw, r))


class _ZeroInflatedNegativeBinomial(_NegativeBinomial):
    """Zero-inflated negative binomial: with probability :math:`\\pi` an extra
    zero (a dropout), otherwise a negative binomial draw,

    .. math::

        p(0) = \\pi + (1 - \\pi)\\, \\mathrm{NB}(0; \\mu, r), \\qquad
        p(x) = (1 - \\pi)\\, \\mathrm{NB}(x; \\mu, r) \\ (x > 0),

    mean :math:`(1-\\pi)\\mu`. The decoder gives ``2 * input_dim`` outputs:
    the negative binomial's (as :class:`_NegativeBinomial` reads them), then the
    logits of :math:`\\pi` (Pyro's ``ZeroInflatedNegativeBinomial``, whose
    log-density works in logits throughout). Lopez et al. 2018 (scVI).
    """

    name = "zero_inflated_negative_binomial"

    @property
    def output_dim(self) -> int:
        return 2 * self.input_dim

    def forward(self, raw: torch.Tensor, group: torch.Tensor | None = None) -> dist.TorchDistribution:
        nb_raw, gate_logits = raw.split(self.input_dim, dim=-1)
        r = self.total_count(group)
        return dist.ZeroInflatedNegativeBinomial(r, logits=self._logits(nb_raw, r), gate_logits=gate_logits)


class _Categorical(Likelihood):
    """Integer-coded features, feature ``j`` taking values ``0..cardinalities[j]-1``.

    The decoder gives ``sum(cardinalities)`` logits; they are laid out in a
    ``(..., input_dim, max_cardinality)`` tensor with impossible categories
    padded by a large negative logit. When every feature has the same
    cardinality (the positions of a sequence alignment) nothing is padded: the
    logits are a view of the decoder's output.
    """

    name = "categorical"
    hint = "integer-coding each feature as 0..cardinality-1"

    def __init__(self, input_dim: int, cardinalities: Sequence[int] | None = None) -> None:
        super().__init__(input_dim)
        if cardinalities is None or len(cardinalities) != input_dim or min(cardinalities) < 2:
            raise ValueError(
                f"likelihood 'categorical' needs cardinalities: a list of {input_dim} "
                f"integers >= 2 (one per feature), got {cardinalities!r}."
            )
        cards = torch.as_tensor(list(cardinalities), dtype=torch.long)
        width = int(cards.max())
        self._uniform = bool((cards == width).all())
        self.support_text = (
            f"integers 0..cardinality-1 (cardinality {width} for every feature)" if self._uniform
            else f"integers 0..cardinality-1 (cardinalities {list(cardinalities)})"
        )
        valid = torch.arange(width).expand(input_dim, width) < cards[:, None]
        self.register_buffer("cardinalities", cards, persistent=False)
        self.register_buffer("_slot", valid.flatten().nonzero().squeeze(-1), persistent=False)
        self._width = width

    @property
    def output_dim(self) -> int:
        return int(self.cardinalities.sum())

    def forward(self, raw: torch.Tensor) -> dist.TorchDistribution:
        if not self._uniform:
            flat = raw.new_full((*raw.shape[:-1], self.input_dim * self._width), -1e9)
            raw = flat.index_copy(-1, self._slot, raw)
        return dist.Categorical(logits=raw.unflatten(-1, (self.input_dim, self._width)))

    def point(self, d: dist.TorchDistribution) -> torch.Tensor:
        return d.probs.argmax(-1).to(torch.get_default_dtype())

    def _in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _is_count(x) & (x < self.cardinalities.to(x.dtype))


LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {
    cls.name: cls
    for cls in (
        _Bernoulli,
        _ContinuousBernoulli,
        _Normal,
        _Laplace,
        _StudentT,
        _AR1Normal,
        _VonMises,
        _InternalCoordinates,
        _Poisson,
        _NegativeBinomial,
        _ZeroInflatedNegativeBinomial,
        _Categorical,
    )
}


def make_likelihood(name: LikelihoodName | Likelihood, input_dim: int, **kwargs) -> Likelihood:
    """Build the observation family ``name`` for ``input_dim`` features.

    :param str name: one of ``LIKELIHOODS`` (bernoulli, continuous_bernoulli,
        normal, laplace, student_t, ar1_normal, von_mises, internal_coordinates,
        poisson, negative_binomial,
        zero_inflated_negative_binomial, categorical), or
        a ready :class:`Likelihood`, returned as is.
    :param int input_dim: features of ``x``.
    :param kwargs: family options: ``scale`` ("learned" or a number) for normal,
        laplace and student_t; ``df`` for student_t; ``length``, ``rho`` and
        ``per_region`` for ar1_normal; ``period`` for von_mises; ``atoms`` for
        internal_coordinates;
        ``parameterization``
        (``"logits"`` or ``"log_mean"``) and ``dispersion_groups`` for the
        negative binomials; ``cardinalities`` for categorical.
    """
    if isinstance(name, Likelihood):
        return name
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {name!r}.")
    try:
        return LIKELIHOODS[name](input_dim, **kwargs)
    except TypeError as err:
        raise TypeError(f"likelihood {name!r}: {err}") from None
