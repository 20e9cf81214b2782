"""Property-based tests (hypothesis) of pvae's mathematics against independent truth.

The hand-picked cases of tests/models/test_likelihoods.py, tests/models/test_ar1.py
and tests/infer/test_bounds.py pin a few parameter values each; here hypothesis
draws the parameters, shapes, masks and data, and every answer is compared with
a reference that shares no code with pvae or torch.distributions:

* **likelihood families** (every name in :data:`pvae.models.LIKELIHOODS`): the
  log-density equals ``scipy.stats`` / ``scipy.special`` / closed forms in NumPy,
  at random decoder outputs, learned parameters (set to random raw values and
  read through the documented links) and batch shapes; through a VAE's model a
  mask of all True is no mask, and masked-out entries do not change the
  log-density or receive a gradient, whatever they hold (NaN, inf, off-support);
  :meth:`Likelihood.check` refuses exactly the observed values off the support.
* **AR(1) noise**: the log-density is the Gaussian with Toeplitz covariance
  :math:`\\sigma^2 \\rho^{|i-j|}` (the marginal of the observed points under a
  mask), per region and per datum; ``rsample`` draws have that covariance, lag-1
  autocorrelation :math:`\\rho` included.
* **bounds** on a conjugate linear-Gaussian program written as a plain Pyro
  model/guide pair: with the exact posterior as guide every bound is the
  closed-form :math:`\\log p(x)` with zero spread; with a wrong guide the ELBO's
  terms, its analytic and Monte Carlo KL, and :math:`\\mathrm{ELBO} \\le
  \\mathbb E[\\mathrm{IWAE}_K] \\le \\log p(x)` hold against closed forms.

Everything runs in float64, so that tolerances (stated where used) are set by
the references' own accuracy and by Monte Carlo standard errors computed in
closed form, never by float32 rounding; Monte Carlo parts use fixed seeds. The
one float32 test integrates the continuous Bernoulli's density at logits up to
100, where torch's normaliser (from saturating probabilities) had integrated to
0.32 (pvae now computes it from the logits).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pyro import poutine
from scipy import integrate, special, stats
from torch import nn

from pvae.infer import elbo, elbo_terms, iwae_bound, log_evidence
from pvae.inputs import DataError
from pvae.models import LIKELIHOODS, VAE, make_likelihood
from pvae.models.ar1 import AR1Normal
from pvae.models.likelihoods import SupportError

F64 = torch.float64
# The autouse conftest fixture (param store, seeds) runs once per test, not per
# example; every example that draws random numbers seeds them itself.
_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
PER_FAMILY = settings(max_examples=25, suppress_health_check=_QUIET)  # x 12 families
FEW = settings(max_examples=30, suppress_health_check=_QUIET)
MONTE_CARLO = settings(max_examples=12, suppress_health_check=_QUIET)

# pvae's documented links (pvae.models.nets.positive, likelihoods.RHO_MAX, the clamps
# of the von Mises concentrations and the bond-length log-scales)
MIN_SCALE = 1e-4
RHO_MAX = 1 - 1e-4

# Tolerances of float64 pvae values against float64 references. Log-densities here
# reach 1e10 in magnitude (a bond-length scale of e^-12 far from its location), so a
# relative part; 1e-9 is ~10^6 float64 roundings, far below any modelling mistake (a
# wrong link, normaliser or parametrisation moves log-densities by >= 1e-3).
RTOL, ATOL = 1e-9, 1e-9
# torch's VonMises evaluates log I0(kappa) by the polynomial approximations of
# Abramowitz & Stegun 9.8.1-2 (relative error < 1.9e-7 in I0), scipy's i0e is exact
# to float64: the von Mises families agree to ~2e-7 nats, never better.
VON_MISES_ATOL = 1e-6
# Monte Carlo checks: 6 standard errors (two-sided normal tail 2e-9 per check, so
# ~1e-5 over every check of a run), with standard errors computed in closed form.
Z = 6.0


def _floats(lo: float, hi: float, **kw) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


def _array(draw, shape, elements, dtype=np.float64) -> np.ndarray:
    return draw(hnp.arrays(dtype, tuple(shape), elements=elements))


def _softplus(a):
    return np.logaddexp(0.0, a)


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _close(got, want, atol=ATOL, rtol=RTOL, what=""):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    ok = np.abs(got - want) <= atol + rtol * np.abs(want)
    assert ok.all(), f"{what}: max |diff| {np.max(np.abs(got - want))}\ngot  {got}\nwant {want}"


def _within(got, want, sd, what=""):
    """|got - want| <= Z sd, plus float64 rounding (a guide with zero spread has sd = 0)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = np.abs(got - want)
    assert (err <= Z * sd + ATOL * (1 + np.abs(want))).all(), (what, err, sd)


# ================================================================ likelihood families
@dataclass
class Case:
    """One random instance of a likelihood family, with its independent reference."""

    name: str
    kwargs: dict
    input_dim: int
    raw: np.ndarray  # (*batch, output_dim) decoder outputs
    x: np.ndarray  # (*batch, input_dim), inside the support
    params: dict = field(default_factory=dict)  # raw parameter name -> value to load
    forward_kwargs: dict = field(default_factory=dict)  # e.g. group=
    feature_of_raw: np.ndarray | None = None  # (output_dim,) the feature each output belongs to
    # elementwise reference (raw, x) -> (*batch, input_dim); None for AR(1)
    elementwise: Callable | None = None
    # joint reference (raw, x, mask) -> (*batch,): log p of the observed entries
    joint: Callable | None = None
    atol: float = ATOL
    in_support: Callable | None = None  # numpy x (any dtype) -> bool, elementwise truth

    def reference(self, raw, x, mask=None):
        mask = np.ones(x.shape, dtype=bool) if mask is None else mask
        if self.joint is not None:
            return self.joint(raw, x, mask)
        return np.where(mask, self.elementwise(raw, x), 0.0).sum(-1)

    def build(self, lik=None):
        lik = make_likelihood(self.name, self.input_dim, **self.kwargs).double() if lik is None else lik
        with torch.no_grad():
            for name, value in self.params.items():
                getattr(lik, name).copy_(_t(value))
        return lik


def _const(x: np.ndarray, c: float):
    """``c`` in the data's floating dtype: pvae compares data with Python floats, which
    torch rounds to the tensor's dtype (float32(pi) is a valid float32 angle)."""
    return np.asarray(c, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def _finite(x):
    return np.isfinite(x)


def _count(x):
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (x >= 0) & (x == np.floor(x))


def _scale_and_params(draw, width: int, name="raw_scale"):
    """A fixed scale (kwargs) or a learned one (random raw values, softplus link)."""
    if draw(st.booleans()):
        s = draw(_floats(0.05, 10.0))
        return {"scale": s}, {}, lambda: s
    raw = _array(draw, (width,), _floats(-6.0, 6.0))
    return {}, {name: raw}, lambda: _softplus(raw) + MIN_SCALE


def _bernoulli(draw, batch):
    d = draw(st.integers(1, 5))
    raw = _array(draw, (*batch, d), _floats(-40.0, 40.0))
    x = _array(draw, (*batch, d), st.sampled_from([0.0, 1.0]))
    # log p = x l - log(1 + e^l)
    return Case("bernoulli", {}, d, raw, x, elementwise=lambda r, x: x * r - _softplus(r),
                in_support=lambda x: (x == 0) | (x == 1))


def _continuous_bernoulli(draw, batch):
    d = draw(st.integers(1, 5))
    # |logits| up to 100: torch's own normaliser (from saturating probs) was off beyond ~15
    raw = _array(draw, (*batch, d), _floats(-100.0, 100.0))
    x = _array(draw, (*batch, d), _floats(0.0, 1.0))

    def ref(r, x):
        # Loaiza-Ganem & Cunningham 2019: log p = x log lam + (1 - x) log(1 - lam) + log C,
        # C = 2 artanh(1 - 2 lam) / (1 - 2 lam); with lam = sigmoid(l), 1 - 2 lam = -tanh(l/2)
        # and artanh of it is -l/2, so C = l / tanh(l/2) (-> 2 + l^2/6 - l^4/360 at l = 0)
        small = np.abs(r) < 1e-3  # the series' error there is O(l^6) < 1e-18
        tiny, safe = np.where(small, r, 0.0), np.where(small, 1.0, r)
        log_c = np.where(small, np.log(2 + tiny**2 / 6 - tiny**4 / 360), np.log(safe / np.tanh(safe / 2)))
        return x * special.log_expit(r) + (1 - x) * special.log_expit(-r) + log_c

    return Case("continuous_bernoulli", {}, d, raw, x, elementwise=ref,
                in_support=lambda x: (x >= 0) & (x <= 1))


def _loc_scale(name, logpdf):
    def gen(draw, batch):
        d = draw(st.integers(1, 5))
        kwargs, params, scale = _scale_and_params(draw, d)
        raw = _array(draw, (*batch, d), _floats(-50.0, 50.0))
        x = _array(draw, (*batch, d), _floats(-50.0, 50.0))
        return Case(name, kwargs, d, raw, x, params, elementwise=lambda r, x: logpdf(x, r, scale()),
                    in_support=_finite)

    return gen


def _laplace_logpdf(x, loc, scale):
    # -|x - loc| / b - log 2b (not scipy.stats.laplace.logpdf: it takes the log of the
    # pdf, which underflows past |x - loc| / b ~ 708 and is off by 1e-2 nats at 740)
    return -np.abs(x - loc) / scale - np.log(2 * scale)


def _student_t(draw, batch):
    d = draw(st.integers(1, 5))
    kwargs, params, scale = _scale_and_params(draw, d)
    if draw(st.booleans()):
        nu = draw(_floats(0.3, 60.0))
        kwargs["df"] = nu
        df = lambda: nu  # noqa: E731
    else:
        raw_df = _array(draw, (d,), _floats(-6.0, 6.0))
        params["raw_df"] = raw_df
        df = lambda: _softplus(raw_df) + 1.0  # noqa: E731  positive(raw, 1.0): df > 1
    raw = _array(draw, (*batch, d), _floats(-50.0, 50.0))
    x = _array(draw, (*batch, d), _floats(-50.0, 50.0))
    return Case("student_t", kwargs, d, raw, x, params,
                elementwise=lambda r, x: stats.t.logpdf(x, df(), loc=r, scale=scale()), in_support=_finite)


def _toeplitz(rho: float, sigma: float, t: np.ndarray) -> np.ndarray:
    return sigma**2 * rho ** np.abs(t[:, None] - t[None, :]).astype(np.float64)


def _ar1_joint(length: int, rho: np.ndarray, sigma: np.ndarray):
    """Reference log-density of AR(1) blocks: per row and region, the Gaussian with
    covariance sigma_r^2 rho_r^|i-j| on the observed time points (its marginal).
    ``rho``, ``sigma``: broadcastable to ``(*batch, regions)``."""

    def joint(loc, x, mask):
        batch, regions = x.shape[:-1], x.shape[-1] // length
        rho_b = np.broadcast_to(rho, (*batch, regions))
        sigma_b = np.broadcast_to(sigma, (*batch, regions))
        out = np.zeros(batch)
        t = np.arange(length)
        for idx in np.ndindex(*batch):
            for r in range(regions):
                cols = slice(r * length, (r + 1) * length)
                keep = mask[idx][cols]
                if keep.any():
                    cov = _toeplitz(rho_b[idx][r], sigma_b[idx][r], t[keep])
                    out[idx] += stats.multivariate_normal(loc[idx][cols][keep], cov).logpdf(x[idx][cols][keep])
        return out

    return joint


def _ar1(draw, batch):
    length, regions = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    per_region = draw(st.booleans())
    width = regions if per_region else 1
    kwargs, params = {"length": length, "per_region": per_region}, {}
    if draw(st.booleans()):
        rho_value = draw(_floats(-0.99, 0.99))
        kwargs["rho"], rho = rho_value, np.full(regions, rho_value)
    else:
        raw_rho = _array(draw, (width,), _floats(-3.0, 3.0))
        params["raw_rho"], rho = raw_rho, np.broadcast_to(RHO_MAX * np.tanh(raw_rho), (regions,))
    skw, sparams, scale = _scale_and_params(draw, width)
    kwargs.update(skw)
    params.update(sparams)
    sigma = np.broadcast_to(scale(), (regions,))
    d = length * regions
    raw = _array(draw, (*batch, d), _floats(-10.0, 10.0))
    x = _array(draw, (*batch, d), _floats(-10.0, 10.0))
    return Case("ar1_normal", kwargs, d, raw, x, params, joint=_ar1_joint(length, rho, sigma), in_support=_finite)


def _log_von_mises(theta, mu, kappa):
    """log vM(theta; mu, kappa) on [-pi, pi) (scipy's exponentially scaled i0e: exact)."""
    return kappa * (np.cos(theta - mu) - 1) - np.log(2 * np.pi * special.i0e(kappa))


def _off_origin(cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Decoder outputs (cos, sin) read as a point whose angle is the location, kept
    1e-3 from the origin: there the angle is undefined (atan2's convention gives 0) and
    its gradient, ~1/radius, overflows (noticed, left alone: see the report)."""
    cos = np.where(np.hypot(cos, sin) < 1e-3, 1.0, cos)
    return np.concatenate([cos, sin], -1)


def _von_mises(draw, batch):
    d = draw(st.integers(1, 4))
    period = draw(st.one_of(st.sampled_from([1.0, 2 * math.pi]), _floats(0.1, 100.0)))
    raw = _off_origin(_array(draw, (*batch, d), _floats(-10.0, 10.0)), _array(draw, (*batch, d), _floats(-10.0, 10.0)))
    raw_conc = _array(draw, (d,), _floats(-5.0, 14.0))  # past the clamp at 12
    x = _array(draw, (*batch, d), _floats(0.0, period, exclude_max=True))

    def ref(r, x):
        # density in data units: vM(2 pi x / period; atan2(s, c), exp(min(raw, 12))) * 2 pi / period
        mu = np.arctan2(r[..., d:], r[..., :d])
        kappa = np.exp(np.minimum(raw_conc, 12.0))
        return _log_von_mises(2 * np.pi * x / period, mu, kappa) + np.log(2 * np.pi / period)

    return Case("von_mises", {"period": period}, d, raw, x, {"raw_concentration": raw_conc},
                feature_of_raw=np.concatenate([np.arange(d), np.arange(d)]), elementwise=ref,
                atol=VON_MISES_ATOL,
                in_support=lambda x: (x >= 0) & (x < _const(x, period)))


def _internal_coordinates(draw, batch):
    atoms = draw(st.integers(4, 6))
    nb, na, nd = atoms - 1, atoms - 2, atoms - 3
    d = nb + na + nd
    angles = [_array(draw, (*batch, na + nd), _floats(-5.0, 5.0)) for _ in range(2)]
    raw = np.concatenate([_array(draw, (*batch, nb), _floats(-3.0, 3.0)), _off_origin(*angles)], -1)
    raw_bond_scale = _array(draw, (nb,), _floats(-14.0, 6.0))  # past both clamps, -12 and 4
    raw_conc = _array(draw, (na + nd,), _floats(-5.0, 14.0))
    x = np.concatenate([_array(draw, (*batch, nb), _floats(1e-3, 20.0)),
                        _array(draw, (*batch, na), _floats(0.0, math.pi)),
                        _array(draw, (*batch, nd), _floats(-math.pi, math.pi))], -1)

    def ref(r, x):
        # bonds: log-normal(loc, exp(clamp(raw, -12, 4))); angles: |theta| of a von Mises,
        # density vM(a) + vM(-a) on [0, pi]; dihedrals: von Mises; locations atan2(sin, cos)
        mu = np.arctan2(r[..., nb + na + nd:], r[..., nb:nb + na + nd])
        kappa = np.exp(np.minimum(raw_conc, 12.0))
        sigma = np.exp(np.clip(raw_bond_scale, -12.0, 4.0))
        bonds = stats.lognorm.logpdf(x[..., :nb], s=sigma, scale=np.exp(r[..., :nb]))
        a, dih = x[..., nb:nb + na], x[..., nb + na:]
        angles = np.logaddexp(_log_von_mises(a, mu[..., :na], kappa[:na]), _log_von_mises(-a, mu[..., :na], kappa[:na]))
        dihedrals = _log_von_mises(dih, mu[..., na:], kappa[na:])
        return np.concatenate([bonds, angles, dihedrals], -1)

    def support(x):
        b, a, dh = x[..., :nb], x[..., nb:nb + na], x[..., nb + na:]
        pi = _const(x, math.pi)
        return np.concatenate([np.isfinite(b) & (b > 0), (a >= 0) & (a <= pi), (dh >= -pi) & (dh <= pi)], -1)

    angle_outputs = nb + np.arange(na + nd)
    return Case("internal_coordinates", {"atoms": atoms}, d, raw, x,
                {"raw_bond_scale": raw_bond_scale, "raw_concentration": raw_conc},
                feature_of_raw=np.concatenate([np.arange(nb), angle_outputs, angle_outputs]),
                elementwise=ref, atol=VON_MISES_ATOL, in_support=support)


def _poisson(draw, batch):
    d = draw(st.integers(1, 5))
    raw = _array(draw, (*batch, d), _floats(-30.0, 30.0))
    x = _array(draw, (*batch, d), st.integers(0, 300).map(float))
    # rate = softplus(raw) + 1e-4
    return Case("poisson", {}, d, raw, x,
                elementwise=lambda r, x: stats.poisson.logpmf(x, _softplus(r) + MIN_SCALE), in_support=_count)


def _nb_setup(draw, batch, name, groups_allowed):
    d = draw(st.integers(1, 4))
    parameterization = draw(st.sampled_from(["logits", "log_mean"]))
    groups = draw(st.integers(1, 3)) if groups_allowed else 1
    kwargs = {"parameterization": parameterization, "dispersion_groups": groups}
    raw_tc = _array(draw, (d,) if groups == 1 else (groups, d), _floats(-5.0, 8.0))
    forward_kwargs, group = {}, None
    if groups > 1:
        group = _array(draw, batch[-1:], st.integers(0, groups - 1), dtype=np.int64)
        forward_kwargs["group"] = torch.as_tensor(group)

    def nb_logpmf(nb_raw, x):
        # logits: r = softplus(raw_r) + 1e-4, success probability sigmoid(raw) (torch counts
        # successes before r failures; scipy counts failures before n successes, so its
        # p is 1 - sigmoid(raw)); log_mean: r = exp(raw_r), mean exp(raw), p = r / (r + mean)
        r = _softplus(raw_tc) + MIN_SCALE if parameterization == "logits" else np.exp(raw_tc)
        if group is not None:
            r = r[group]
        if parameterization == "logits":
            return stats.nbinom.logpmf(x, r, special.expit(-nb_raw))
        return stats.nbinom.logpmf(x, r, r / (r + np.exp(nb_raw)))

    return d, kwargs, {"raw_total_count": raw_tc}, forward_kwargs, nb_logpmf


def _negative_binomial(draw, batch, groups_allowed=True):
    d, kwargs, params, fkw, nb_logpmf = _nb_setup(draw, batch, "negative_binomial", groups_allowed)
    raw = _array(draw, (*batch, d), _floats(-8.0, 8.0))
    x = _array(draw, (*batch, d), st.integers(0, 500).map(float))
    return Case("negative_binomial", kwargs, d, raw, x, params, fkw, elementwise=nb_logpmf, in_support=_count)


def _zinb(draw, batch, groups_allowed=True):
    d, kwargs, params, fkw, nb_logpmf = _nb_setup(draw, batch, "zero_inflated_negative_binomial", groups_allowed)
    raw = np.concatenate([_array(draw, (*batch, d), _floats(-8.0, 8.0)),
                          _array(draw, (*batch, d), _floats(-15.0, 15.0))], -1)
    x = _array(draw, (*batch, d), st.integers(0, 500).map(float))

    def ref(r, x):
        # p(0) = pi + (1 - pi) NB(0), p(x) = (1 - pi) NB(x) for x > 0, pi = sigmoid(gate logits)
        nb, gate = nb_logpmf(r[..., :d], x), r[..., d:]
        keep = special.log_expit(-gate) + nb
        return np.where(x == 0, np.logaddexp(special.log_expit(gate), keep), keep)

    return Case("zero_inflated_negative_binomial", kwargs, d, raw, x, params, fkw,
                feature_of_raw=np.concatenate([np.arange(d), np.arange(d)]), elementwise=ref, in_support=_count)


def _categorical(draw, batch):
    d = draw(st.integers(1, 4))
    if draw(st.booleans()):
        cards = [draw(st.integers(2, 6))] * d  # the unpadded view path
    else:
        cards = draw(st.lists(st.integers(2, 6), min_size=d, max_size=d))
    raw = _array(draw, (*batch, sum(cards)), _floats(-30.0, 30.0))
    x = np.stack([_array(draw, batch, st.integers(0, c - 1).map(float)) for c in cards], -1)
    starts = np.cumsum([0] + cards)

    def ref(r, x):
        # feature j's logits are raw[starts[j]:starts[j+1]]
        out = []
        for j, c in enumerate(cards):
            logp = special.log_softmax(r[..., starts[j]:starts[j + 1]], axis=-1)
            out.append(np.take_along_axis(logp, x[..., j:j + 1].astype(np.int64), -1)[..., 0])
        return np.stack(out, -1)

    def support(x):
        return _count(x) & (x < np.asarray(cards, dtype=np.float64))

    return Case("categorical", {"cardinalities": cards}, d, raw, x,
                feature_of_raw=np.repeat(np.arange(d), cards), elementwise=ref, in_support=support)


FAMILIES: dict[str, Callable] = {
    "bernoulli": _bernoulli,
    "continuous_bernoulli": _continuous_bernoulli,
    "normal": _loc_scale("normal", lambda x, loc, scale: stats.norm.logpdf(x, loc=loc, scale=scale)),
    "laplace": _loc_scale("laplace", _laplace_logpdf),
    "student_t": _student_t,
    "ar1_normal": _ar1,
    "von_mises": _von_mises,
    "internal_coordinates": _internal_coordinates,
    "poisson": _poisson,
    "negative_binomial": _negative_binomial,
    "zero_inflated_negative_binomial": _zinb,
    "categorical": _categorical,
}

batch_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple)


def test_every_likelihood_family_has_a_reference():
    """A new family must get a reference here (this fails until it does)."""
    assert sorted(FAMILIES) == sorted(LIKELIHOODS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@PER_FAMILY
@given(data=st.data())
def test_log_density_equals_an_independent_reference(family, data):
    batch = data.draw(batch_shapes, label="batch")
    case = FAMILIES[family](data.draw, batch)
    lik = case.build()
    d = lik(_t(case.raw), **case.forward_kwargs)
    assert d.batch_shape == (*batch, case.input_dim) and d.event_shape == ()
    got = d.log_prob(_t(case.x)).detach().numpy()
    if case.elementwise is not None:  # each feature's own density
        _close(got, case.elementwise(case.raw, case.x), atol=case.atol, what=family)
    _close(got.sum(-1), case.reference(case.raw, case.x), atol=case.atol * case.input_dim, what=family)


@settings(max_examples=20, suppress_health_check=_QUIET)
@example(raw=20.0)
@example(raw=0.0)
@example(raw=-100.0)
@given(raw=_floats(-100.0, 100.0))
def test_continuous_bernoulli_integrates_to_one_at_any_logit_in_float32(raw):
    """The density of x in [0, 1] at one decoder output, as models train (float32),
    integrated by Simpson's rule on 200,001 points: the integrand is exp of a linear
    function of x with slope |logit| <= 100, whose relative quadrature error at step 5e-6
    is < 1e-9; float32 log-densities add ~1e-6. Tolerance 1e-3, for the integral and for
    the mean (the point reconstruction) against the same quadrature. Before the fix: 0.80 at
    logit 20, 0.32 at 50, and a mean stuck at 0.937."""
    lik = make_likelihood("continuous_bernoulli", 1)
    grid = np.linspace(0.0, 1.0, 200_001)
    d = lik(torch.full((grid.size, 1), raw))
    density = np.exp(d.log_prob(torch.as_tensor(grid, dtype=torch.float32)[:, None]).detach().double().numpy()[:, 0])
    total = integrate.simpson(density, x=grid)
    assert abs(total - 1) < 1e-3, (raw, total)
    mean = integrate.simpson(grid * density, x=grid) / total
    assert abs(float(lik.point(d)[0, 0]) - mean) < 1e-3, (raw, float(lik.point(d)[0, 0]), mean)


class _Decoder(nn.Module):
    """A decoder that outputs given raw values whatever the latent."""

    def __init__(self, raw: torch.Tensor) -> None:
        super().__init__()
        self.raw = raw

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.raw


GARBAGE = [math.nan, math.inf, -math.inf, -1.5, 0.5, 3.25, -7.0, 1e300]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@PER_FAMILY
@given(data=st.data())
def test_masked_entries_never_matter_and_a_full_mask_is_no_mask(family, data):
    """Through a VAE's model (fill, ``.mask``, ``.to_event``): with the decoder's output
    fixed, the observation site's log-density is the reference over observed entries,
    whatever the missing entries hold; masked-out outputs get exactly zero gradient,
    and no gradient is NaN."""
    n = data.draw(st.integers(1, 4), label="n")
    kw = {"groups_allowed": False} if family.endswith("negative_binomial") else {}  # a VAE passes no group
    case = FAMILIES[family](data.draw, (n,), **kw)
    vae = VAE(case.input_dim, latent_dim=1, hidden_dims=(2,), likelihood=case.name,
              likelihood_kwargs=case.kwargs).double()
    case.build(vae.likelihood)
    raw = _t(case.raw).requires_grad_(True)
    vae.decoder = _Decoder(raw)
    model = poutine.condition(vae.model, data={"z": torch.zeros(n, 1, dtype=F64)})

    def log_p(x, mask=None):
        trace = poutine.trace(model).get_trace(x, mask)
        site = trace.nodes["x"]
        return site["fn"].log_prob(site["value"])

    x = _t(case.x)
    full = log_p(x).detach().numpy()
    _close(full, case.reference(case.raw, case.x), atol=case.atol * case.input_dim, what="no mask")
    all_true = log_p(x, torch.ones(x.shape, dtype=torch.bool)).detach().numpy()
    # the same density; AR(1)'s masked path computes it by another route (rho^gap), to rounding
    _close(all_true, full, atol=1e-12, rtol=1e-12, what="all-True mask")

    mask = data.draw(hnp.arrays(np.bool_, x.shape), label="mask")
    garbage = data.draw(hnp.arrays(np.float64, x.shape, elements=st.sampled_from(GARBAGE)), label="garbage")
    lp = log_p(_t(np.where(mask, case.x, garbage)), torch.as_tensor(mask))
    _close(lp.detach().numpy(), case.reference(case.raw, case.x, mask), atol=case.atol * case.input_dim,
           what="masked")
    lp.sum().backward()
    grad = raw.grad.numpy()
    assert np.isfinite(grad).all(), grad
    feature = np.arange(case.input_dim) if case.feature_of_raw is None else case.feature_of_raw
    missing_outputs = ~mask[:, feature]  # (n, output_dim): outputs of missing features
    assert (grad[missing_outputs] == 0).all(), grad
    for name, p in vae.likelihood.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


SPECIAL = [math.nan, math.inf, -math.inf, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0,
           math.pi, -math.pi, 3.2, 7.0, 1e-300, 1e300, -1e300]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@PER_FAMILY
@given(data=st.data())
def test_support_check_refuses_exactly_the_observed_values_off_the_support(family, data):
    case = FAMILIES[family](data.draw, (data.draw(st.integers(1, 4), label="n"),))
    lik = case.build()
    dtype = data.draw(st.sampled_from([np.float64, np.float32, np.int64]), label="dtype")
    if dtype is np.int64:
        corrupt = hnp.arrays(np.int64, case.x.shape, elements=st.integers(-3, 8))
        x = np.where(data.draw(hnp.arrays(np.bool_, case.x.shape)), np.floor(case.x), data.draw(corrupt))
        x = x.astype(np.int64)
    else:
        corrupt = hnp.arrays(np.float64, case.x.shape,
                             elements=st.one_of(st.sampled_from(SPECIAL), st.floats(width=64)))
        keep = data.draw(hnp.arrays(np.bool_, case.x.shape), label="keep")
        with np.errstate(over="ignore"):  # 1e300 -> inf in float32: a value like any other
            x = np.where(keep, case.x, data.draw(corrupt, label="corrupt")).astype(dtype)
    mask = data.draw(st.none() | hnp.arrays(np.bool_, x.shape), label="mask")
    observed = np.ones(x.shape, dtype=bool) if mask is None else mask
    with np.errstate(invalid="ignore"):
        off = observed & ~case.in_support(x) & ~np.isnan(x.astype(np.float64))
    nan = observed & np.isnan(x.astype(np.float64))
    try:
        lik.check(torch.as_tensor(x), None if mask is None else torch.as_tensor(mask))
    except SupportError as err:
        assert not nan.any() and off.any(), (str(err), x, mask)
        message = str(err)
        assert repr(case.name) in message, message
        where = re.search(r"x\[([\d, ]+)\] = ", message)
        assert where is not None, message
        idx = tuple(int(i) for i in where.group(1).split(","))
        assert off[idx], (message, x, mask)  # the value it shows is observed and off-support
        return
    except DataError as err:
        assert nan.any(), (str(err), x, mask)  # NaN at an observed entry: not a SupportError
        assert "NaN" in str(err) and "mask" in str(err)
        return
    assert not nan.any() and not off.any(), ("accepted", x, mask)


# ================================================================ AR(1) noise
@FEW
@given(data=st.data())
def test_ar1_log_density_is_the_toeplitz_gaussian_of_the_observed_points(data):
    draw = data.draw
    length, regions = draw(st.integers(1, 8), label="T"), draw(st.integers(1, 3), label="R")
    batch = draw(st.lists(st.integers(1, 3), max_size=2).map(tuple), label="batch")
    # rho and sigma: a scalar, one per region, or one per datum and region
    shapes = [(), (regions,)] + ([(*batch, regions)] if batch else [])
    rho = _array(draw, draw(st.sampled_from(shapes), label="rho shape"), _floats(-0.99, 0.99))
    sigma = _array(draw, draw(st.sampled_from(shapes), label="sigma shape"), _floats(0.05, 5.0))
    d = length * regions
    loc = _array(draw, (*batch, d), _floats(-10.0, 10.0))
    x = _array(draw, (*batch, d), _floats(-10.0, 10.0))
    mask = draw(hnp.arrays(np.bool_, (*batch, d)), label="mask")
    garbage = draw(hnp.arrays(np.float64, (*batch, d), elements=st.sampled_from(GARBAGE)), label="garbage")
    ar1 = AR1Normal(_t(loc), _t(rho), _t(sigma), length)
    reference = _ar1_joint(length, np.expand_dims(rho, -1) if rho.ndim == 0 else rho,
                           np.expand_dims(sigma, -1) if sigma.ndim == 0 else sigma)
    # Tolerance: scipy's Cholesky of Toeplitz matrices with condition number up to
    # (1 + rho) / (1 - rho) ~ 200 against pvae's whitening; both float64, ~1e-12 apart
    full = ar1.log_prob(_t(x)).numpy()
    _close(full.sum(-1), reference(loc, x, np.ones(x.shape, dtype=bool)), atol=1e-9 * d, what="unmasked")
    # a mask of all True is no mask, term by term
    _close(ar1.mask(torch.ones(x.shape, dtype=torch.bool)).log_prob(_t(x)).numpy(), full, atol=1e-12,
           rtol=1e-12, what="all-True mask")
    # missing points are marginalised, whatever they hold (NaN, inf, ...)
    terms = ar1.mask(torch.as_tensor(mask)).log_prob(_t(np.where(mask, x, garbage))).numpy()
    assert (terms[~mask] == 0).all() and np.isfinite(terms).all(), terms
    _close(terms.sum(-1), reference(loc, x, mask), atol=1e-9 * d, what="masked")


@MONTE_CARLO
@given(data=st.data())
def test_ar1_draws_have_the_toeplitz_covariance_and_lag1_autocorrelation_rho(data):
    draw = data.draw
    length, regions = draw(st.integers(2, 8), label="T"), draw(st.integers(1, 3), label="R")
    rho = _array(draw, (regions,), _floats(-0.95, 0.95))
    sigma = _array(draw, (regions,), _floats(0.2, 3.0))
    loc = _array(draw, (length * regions,), _floats(-5.0, 5.0))
    n = 20_000
    torch.manual_seed(0)
    e = (AR1Normal(_t(loc), _t(rho), _t(sigma), length).rsample((n,)) - _t(loc)).numpy()
    t = np.arange(length)
    cov = np.zeros((regions * length,) * 2)
    for r in range(regions):
        cols = slice(r * length, (r + 1) * length)
        cov[cols, cols] = _toeplitz(rho[r], sigma[r], t)
    var = np.diag(cov)
    # the mean is loc: se sqrt(var / n)
    assert (np.abs(e.mean(0)) <= Z * np.sqrt(var / n)).all(), e.mean(0)
    # every entry of the covariance (zero across regions), the mean known: for a zero-mean
    # Gaussian pair Var(e_i e_j) = S_ii S_jj + S_ij^2 (Isserlis)
    emp = e.T @ e / n
    se = np.sqrt((np.outer(var, var) + cov**2) / n)
    bad = np.abs(emp - cov) > Z * se
    assert not bad.any(), (np.argwhere(bad)[:5], emp[bad][:5], cov[bad][:5], rho, sigma)
    # the stated lag-1 autocorrelation, pooled over time: each product e_t e_{t+1} / sigma^2
    # has variance 1 + rho^2, and a mean of correlated terms has at most the variance of one
    blocks = e.reshape(n, regions, length)
    lag1 = (blocks[..., 1:] * blocks[..., :-1]).mean((0, 2)) / sigma**2
    assert (np.abs(lag1 - rho) <= Z * np.sqrt((1 + rho**2) / n)).all(), (lag1, rho)


# ================================================================ bounds on a conjugate program
@dataclass
class LinearGaussian:
    """z ~ N(0, I_k), x | z ~ N(W z + b, s^2 I_d), with every exact answer in NumPy."""

    w: np.ndarray
    b: np.ndarray
    s: float
    x: np.ndarray

    @property
    def k(self) -> int:
        return self.w.shape[1]

    @property
    def d(self) -> int:
        return self.w.shape[0]

    def log_evidence(self, x=None) -> np.ndarray:
        x = self.x if x is None else x
        marginal = stats.multivariate_normal(self.b, self.w @ self.w.T + self.s**2 * np.eye(self.d))
        return np.atleast_1d(marginal.logpdf(x))

    def posterior_cov(self) -> np.ndarray:
        return np.linalg.inv(np.eye(self.k) + self.w.T @ self.w / self.s**2)

    def posterior_gain(self) -> np.ndarray:
        """``(d, k)``: the posterior mean is ``(x - b) @ gain``."""
        return self.w @ self.posterior_cov() / self.s**2

    def posterior_mean(self, x=None) -> np.ndarray:
        return ((self.x if x is None else x) - self.b) @ self.posterior_gain()

    def model(self):
        w, b, s, k = _t(self.w), _t(self.b), self.s, self.k

        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(k, dtype=F64), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ w.T + b, s).to_event(1), obs=x)

        return model

    def exact_guide(self):
        gain, b = _t(self.posterior_gain()), _t(self.b)
        tril = _t(np.linalg.cholesky(self.posterior_cov()))

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.MultivariateNormal((x - b) @ gain, scale_tril=tril))

        return guide

    def shifted_guide(self, delta: np.ndarray, c: float):
        """q(z | x) = N(mu + L delta, c^2 S), the posterior N(mu, S = L L') moved and widened."""
        gain, b = _t(self.posterior_gain()), _t(self.b)
        tril = np.linalg.cholesky(self.posterior_cov())
        offset, tril_q = _t(tril @ delta), _t(c * tril)

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.MultivariateNormal((x - b) @ gain + offset, scale_tril=tril_q))

        return guide

    def diagonal_guide(self, shift: np.ndarray, sd: np.ndarray):
        """q(z | x) = N(posterior mean + shift, diag(sd^2))."""
        gain, b, shift_t, sd_t = _t(self.posterior_gain()), _t(self.b), _t(shift), _t(sd)

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal((x - b) @ gain + shift_t, sd_t).to_event(1))

        return guide


@st.composite
def linear_gaussians(draw) -> LinearGaussian:
    k, d, n = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return LinearGaussian(
        w=_array(draw, (d, k), _floats(-2.0, 2.0)),
        b=_array(draw, (d,), _floats(-3.0, 3.0)),
        s=draw(_floats(0.2, 2.0)),
        x=_array(draw, (n, d), _floats(-6.0, 6.0)),
    )


def _quadratic_variance(g: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Var of c + g.eps + eps' M eps for eps ~ N(0, I): |g|^2 + 2 tr(M^2) (per row of g)."""
    return (g**2).sum(-1) + 2 * (m**2).sum()


@dataclass
class DiagonalGuideTruth:
    """Closed forms for the diagonal guide N(m_i, diag(sd^2)) of :class:`LinearGaussian`."""

    kl_per_dim: np.ndarray  # (n, k)
    reconstruction: np.ndarray  # (n,)
    var_kl_per_dim: np.ndarray  # (n, k): per-particle variance of log q - log p per coordinate
    var_kl: np.ndarray  # (n,)
    var_reconstruction: np.ndarray
    var_log_weight: np.ndarray

    @property
    def kl(self):
        return self.kl_per_dim.sum(-1)

    @property
    def elbo(self):
        return self.reconstruction - self.kl


def _diagonal_truth(lg: LinearGaussian, shift: np.ndarray, sd: np.ndarray) -> DiagonalGuideTruth:
    m = lg.posterior_mean() + shift  # (n, k)
    # KL(N(m, sd^2) || N(0, 1)) per coordinate
    kl_per_dim = 0.5 * (sd**2 + m**2 - 1 - 2 * np.log(sd))
    # E_q log N(x; W z + b, s^2 I) with z = m + sd * eps: residual r0 - A eps, A = W diag(sd)
    a = lg.w * sd
    r0 = lg.x - lg.b - m @ lg.w.T
    rec = -0.5 * lg.d * np.log(2 * np.pi * lg.s**2) - ((r0**2).sum(-1) + (a**2).sum()) / (2 * lg.s**2)
    # per-particle quantities are quadratics c + g.eps + eps' M eps:
    g_rec, m_rec = r0 @ a / lg.s**2, -a.T @ a / (2 * lg.s**2)  # log p(x | z)
    g_kl, m_kl = m * sd, np.diag((sd**2 - 1) / 2)  # log q(z) - log p(z)
    var_kl_per_dim = (m * sd) ** 2 + (sd**2 - 1) ** 2 / 2
    return DiagonalGuideTruth(
        kl_per_dim=kl_per_dim,
        reconstruction=rec,
        var_kl_per_dim=var_kl_per_dim,
        var_kl=_quadratic_variance(g_kl, m_kl),
        var_reconstruction=_quadratic_variance(g_rec, m_rec),
        var_log_weight=_quadratic_variance(g_rec - g_kl, m_rec - m_kl),
    )


@st.composite
def diagonal_guides(draw, lg: LinearGaussian):
    """A wrong but over-dispersed guide: per-coordinate sd >= the posterior's largest
    sd (so D >= S and the importance weights have finite variance), mean shifted by up
    to one such sd per coordinate."""
    top = math.sqrt(np.linalg.eigvalsh(lg.posterior_cov()).max())
    sd = top * _array(draw, (lg.k,), _floats(1.0, 2.0))
    shift = top * _array(draw, (lg.k,), _floats(-1.0, 1.0))
    return shift, sd


@FEW
@given(lg=linear_gaussians(), num_particles=st.integers(1, 40), chunk=st.none() | st.integers(1, 16),
       seed=st.integers(0, 2**16))
def test_exact_posterior_guide_makes_every_bound_the_closed_form_evidence(lg, num_particles, chunk, seed):
    """log w = log p(x, z) - log p(z | x) = log p(x) at every z: each estimator returns
    it with zero spread, for any K and chunking. Tolerance 1e-9 relative: float64
    cancellation in log p(x, z) - log q(z), terms of tens of nats."""
    model, guide, x, k = lg.model(), lg.exact_guide(), _t(lg.x), num_particles
    exact = lg.log_evidence()
    tol = dict(atol=1e-9, rtol=1e-9)
    pyro.set_rng_seed(seed)
    value = elbo(model, guide, x, num_particles=k).detach().numpy()
    _close(value, exact, what="elbo", **tol)
    pyro.set_rng_seed(seed)
    terms = elbo_terms(model, guide, x, num_particles=k, kl="monte_carlo")
    # the split of the same particles adds back up to elbo()'s value
    _close((terms.reconstruction - terms.kl).detach().numpy(), value, what="elbo_terms", **tol)
    bound = iwae_bound(model, guide, x, num_particles=k, chunk_size=chunk)
    _close(bound.value.numpy(), exact, what="iwae", **tol)
    evidence = log_evidence(model, guide, x, num_particles=k, chunk_size=chunk)
    _close(evidence.log_evidence.value.numpy(), exact, what="log_evidence", **tol)
    _close(evidence.elbo.value.numpy(), exact, what="log_evidence.elbo", **tol)
    _close(evidence.variational_gap.numpy(), np.zeros_like(exact), what="gap", **tol)
    if k > 1:  # zero spread: rounding only (the IWAE stderr is a sqrt of rounding, ~1e-8)
        assert (terms.elbo_stderr.detach().numpy() < 1e-9).all(), terms.elbo_stderr
        assert (bound.stderr.numpy() < 1e-6).all(), bound.stderr
        assert (evidence.elbo.stderr.numpy() < 1e-9).all(), evidence.elbo.stderr


@FEW
@given(data=st.data())
def test_elbo_terms_of_a_wrong_guide_match_their_closed_forms(data):
    """Analytic KL = closed form; Monte Carlo KL, reconstruction, ELBO and per-dim KL =
    closed forms within 6 standard errors computed in closed form (never the library's)."""
    lg = data.draw(linear_gaussians(), label="model")
    shift, sd = data.draw(diagonal_guides(lg), label="guide")
    truth = _diagonal_truth(lg, shift, sd)
    assert (truth.elbo <= lg.log_evidence() + 1e-9).all()  # the references themselves are consistent
    model, guide, x, k = lg.model(), lg.diagonal_guide(shift, sd), _t(lg.x), 2000
    seed = data.draw(st.integers(0, 2**16), label="seed")

    pyro.set_rng_seed(seed)
    analytic = elbo_terms(model, guide, x, num_particles=k, kl="auto")
    assert analytic.kl_method == "analytic"
    # KL(N(m, sd^2) || N(0, I)) by torch's registry: closed form to rounding
    _close(analytic.kl.detach().numpy(), truth.kl, atol=1e-10, rtol=1e-10, what="analytic kl")
    _close(analytic.kl_per_dim.detach().numpy(), truth.kl_per_dim, atol=1e-10, rtol=1e-10, what="kl_per_dim")
    assert (analytic.kl_stderr.detach().numpy() <= 1e-12).all()
    _within(analytic.reconstruction.detach().numpy(), truth.reconstruction, np.sqrt(truth.var_reconstruction / k),
            "analytic-KL reconstruction")

    pyro.set_rng_seed(seed)
    mc = elbo_terms(model, guide, x, num_particles=k, kl="monte_carlo")
    assert mc.kl_method == "monte_carlo"
    checks = {
        "kl": (mc.kl, truth.kl, truth.var_kl),
        "reconstruction": (mc.reconstruction, truth.reconstruction, truth.var_reconstruction),
        "elbo": (mc.elbo, truth.elbo, truth.var_log_weight),
        "kl_per_dim": (mc.kl_per_dim, truth.kl_per_dim, truth.var_kl_per_dim),
    }
    for what, (got, want, var) in checks.items():
        _within(got.detach().numpy(), want, np.sqrt(var / k), what)
    # the per-dim Monte Carlo KL is a split of the total, particle by particle
    _close(mc.kl_per_dim.sum(-1).detach().numpy(), mc.kl.detach().numpy(), atol=1e-10, rtol=1e-10)
    pyro.set_rng_seed(seed)
    _close(elbo(model, guide, x, num_particles=k).detach().numpy(), mc.elbo.detach().numpy(),
           atol=1e-10, rtol=1e-10, what="elbo() and elbo_terms() of the same particles")


@MONTE_CARLO
@given(lg=linear_gaussians(), shift=st.lists(_floats(-1.0, 1.0), min_size=3, max_size=3),
       c=_floats(1.0, 1.5), k=st.integers(2, 32), seed=st.integers(0, 2**16))
def test_iwae_lies_between_the_elbo_and_the_evidence_and_converges_to_it(lg, shift, c, k, seed):
    """A wrong guide q = N(mu + L delta, c^2 S) around the posterior N(mu, S = L L'):
    ELBO <= E[IWAE_K] <= log p(x), E estimated over repeated rows (6 standard errors of
    the repeat mean); and IWAE at K = 4000 within its delta-method spread of log p(x).

    In the posterior's whitened coordinates everything is closed form:
    KL(q || p(z | x)) = (k (c^2 - 1 - 2 log c) + |delta|^2) / 2, so ELBO = log p(x) - KL;
    log w - log p(x) = -|delta + c eps|^2 / 2 + |eps|^2 / 2 + k log c has variance
    c^2 |delta|^2 + k (1 - c^2)^2 / 2; and E_q[(w / p(x))^2] = c^k (2 - 1/c^2)^(-k/2)
    exp(|delta|^2 / (2 c^2 - 1)), finite for c >= 1 (at most e^3 c^k here)."""
    delta = np.asarray(shift[: lg.k])
    exact = lg.log_evidence()
    kl = 0.5 * (lg.k * (c**2 - 1 - 2 * math.log(c)) + delta @ delta)
    elbo_exact = exact - kl
    var_log_weight = c**2 * (delta @ delta) + lg.k * (1 - c**2) ** 2 / 2
    v = math.expm1(lg.k * math.log(c) - lg.k / 2 * math.log(2 - c**-2) + (delta @ delta) / (2 * c**2 - 1))
    model, guide = lg.model(), lg.shifted_guide(delta, c)
    repeats = 400
    pyro.set_rng_seed(seed)
    rows = _t(np.repeat(lg.x, repeats, axis=0))
    values = iwae_bound(model, guide, rows, num_particles=k).value.numpy().reshape(-1, repeats)
    mean, se = values.mean(1), values.std(1, ddof=1) / math.sqrt(repeats)
    slack = Z * se + ATOL * (1 + np.abs(exact))  # rounding: a guide near the posterior has se ~ 0
    assert (mean >= elbo_exact - slack).all(), (mean, elbo_exact, se)
    assert (mean <= exact + slack).all(), (mean, exact, se)
    # K = 4000: with v = Var(w / p(x)), IWAE_K ~ log p(x) - v / 2K, spread sqrt(v / K)
    big = 4000
    evidence = log_evidence(model, guide, _t(lg.x), num_particles=big, chunk_size=1000)
    _within(evidence.log_evidence.value.numpy() + v / (2 * big), exact, math.sqrt(v / big), "log_evidence")
    # the ELBO of the same particles: their mean log-weight
    _within(evidence.elbo.value.numpy(), elbo_exact, math.sqrt(var_log_weight / big), "log_evidence.elbo")
