"""The AR(1) likelihood against the Gaussian it must equal, in float64.

Reference: a stationary AR(1) with marginal sd sigma and coefficient rho is the
zero-mean Gaussian with Toeplitz covariance sigma^2 rho^|i-j|; the marginal of
the observed points is the Gaussian on the observed sub-matrix. Tolerance 1e-5
(the whitening is exact; float64 differences are ~1e-10 even at rho = -0.995).
"""

from __future__ import annotations

import math

import pytest
import torch

import pvae
from pvae.inputs import DataError
from pvae.models import VAE, make_likelihood
from pvae.models.ar1 import AR1Normal

F64 = torch.float64


def _toeplitz_log_prob(loc, x, rho, sigma, keep=None):
    t = torch.arange(x.shape[-1])
    if keep is not None:
        t, loc, x = t[keep], loc[keep], x[keep]
    if len(t) == 0:
        return torch.zeros((), dtype=F64)
    cov = sigma**2 * torch.as_tensor(rho, dtype=F64) ** (t[:, None] - t[None, :]).abs().to(F64)
    return torch.distributions.MultivariateNormal(loc, cov).log_prob(x)


CASES = [(1, 0.5), (2, 0.0), (7, 0.3), (16, -0.6), (30, 0.95), (12, 0.999), (10, -0.995)]


@pytest.mark.parametrize("length,rho", CASES)
def test_log_density_equals_the_toeplitz_gaussian_with_and_without_a_mask(length, rho):
    g = torch.Generator().manual_seed(length)
    regions, batch = 2, 4
    rhos, sigmas = torch.tensor([rho, rho / 2], dtype=F64), torch.tensor([0.7, 1.6], dtype=F64)
    loc = torch.randn(batch, regions * length, generator=g, dtype=F64)
    x = loc + torch.randn(batch, regions * length, generator=g, dtype=F64)
    mask = torch.rand(batch, regions * length, generator=g) < 0.6
    d = AR1Normal(loc, rhos, sigmas, length)
    got = d.log_prob(x).sum(-1)
    got_masked = d.mask(mask).log_prob(torch.where(mask, x, torch.nan)).sum(-1)  # NaN where missing is fine
    for b in range(batch):
        want = want_masked = 0.0
        for r in range(regions):
            cols = slice(r * length, (r + 1) * length)
            want += _toeplitz_log_prob(loc[b, cols], x[b, cols], rhos[r], sigmas[r])
            want_masked += _toeplitz_log_prob(loc[b, cols], x[b, cols], rhos[r], sigmas[r], mask[b, cols])
        assert abs(got[b].item() - float(want)) < 1e-5
        assert abs(got_masked[b].item() - float(want_masked)) < 1e-5
    assert torch.isfinite(got_masked).all()


def test_rho_zero_is_the_independent_normal():
    loc, x = torch.randn(3, 12, dtype=F64), torch.randn(3, 12, dtype=F64)
    got = AR1Normal(loc, 0.0, 0.8, 6).log_prob(x)
    want = torch.distributions.Normal(loc, 0.8).log_prob(x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_dropping_missing_terms_would_be_wrong_and_marginalising_is_not():
    """Missing x_2 of a 3-point chain: the exact marginal scores x_3 given x_1 over a
    gap of 2, which differs from the full chain's terms with x_2's term removed."""
    loc, x = torch.zeros(1, 3, dtype=F64), torch.tensor([[1.0, 5.0, 0.5]], dtype=F64)
    mask = torch.tensor([[True, False, True]])
    d = AR1Normal(loc, 0.8, 1.0, 3)
    exact = d.mask(mask).log_prob(x).sum()
    dropped = (d.log_prob(x) * mask).sum()
    assert abs(exact.item() - _toeplitz_log_prob(loc[0], x[0], 0.8, 1.0, mask[0]).item()) < 1e-10
    assert abs(exact.item() - dropped.item()) > 1.0


def test_draws_have_the_stationary_variance_and_autocorrelation_and_carry_gradients():
    rho = torch.tensor(0.7, requires_grad=True)
    d = AR1Normal(torch.zeros(1, 40), rho, 1.5, 40)
    draws = d.rsample((20000,))[:, 0]
    assert draws.var(0).mean().item() == pytest.approx(2.25, rel=0.03)
    for k in (1, 3):
        acf = (draws[:, k:] * draws[:, :-k]).mean().item() / 2.25
        assert acf == pytest.approx(0.7**k, abs=0.02)
    draws[:, 1:].pow(2).mean().backward()
    assert rho.grad is not None and torch.isfinite(rho.grad)


def test_maximum_likelihood_recovers_rho_and_sigma():
    torch.manual_seed(0)
    data = AR1Normal(torch.zeros(400, 3 * 50), torch.tensor([0.6, -0.3, 0.9]), torch.tensor([0.5, 1.0, 2.0]),
                     50).sample()
    lik = make_likelihood("ar1_normal", 150, length=50, per_region=True)
    opt = torch.optim.Adam(lik.parameters(), lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        (-lik(torch.zeros(400, 150)).log_prob(data).sum(-1).mean()).backward()
        opt.step()
    torch.testing.assert_close(lik.rho().detach(), torch.tensor([0.6, -0.3, 0.9]), atol=0.02, rtol=0)
    torch.testing.assert_close(lik.scale().detach(), torch.tensor([0.5, 1.0, 2.0]), atol=0.0, rtol=0.05)


def test_a_learned_rho_stays_off_one_where_the_variance_would_vanish():
    lik = make_likelihood("ar1_normal", 20)
    with torch.no_grad():
        lik.raw_rho.fill_(12.0)  # float32's tanh is exactly 1 from raw = 9
    assert torch.tanh(lik.raw_rho).item() == 1.0 and abs(lik.rho().item()) < 1
    x = 0.5 * torch.randn(64, 1) + torch.zeros(64, 20)  # residuals constant in time drive rho to 1
    lp = lik(torch.zeros(64, 20)).log_prob(x).sum(-1).mean()
    lp.backward()
    assert torch.isfinite(lp) and all(torch.isfinite(p.grad).all() for p in lik.parameters())


def test_support_checks_and_options():
    lik = make_likelihood("ar1_normal", 10, length=5)
    with pytest.raises(DataError, match="NaN"):
        lik.check(torch.tensor([[0.0] * 9 + [math.nan]]))
    lik.check(torch.tensor([[0.0] * 9 + [math.nan]]), torch.tensor([[True] * 9 + [False]]))
    with pytest.raises(DataError, match="10 features"):
        lik.check(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="length must be"):
        make_likelihood("ar1_normal", 10, length=3)
    with pytest.raises(ValueError, match="rho must be"):
        make_likelihood("ar1_normal", 10, rho=1.0)
    fixed = make_likelihood("ar1_normal", 10, length=5, rho=0.5, scale=2.0)
    assert not list(fixed.parameters())
    assert fixed(torch.zeros(1, 10)).variance.eq(4.0).all()


def test_a_vae_with_ar1_noise_trains_with_missing_time_points():
    x = AR1Normal(torch.zeros(64, 20), 0.8, 1.0, 20).sample()
    mask = torch.rand(64, 20) < 0.8
    vae = VAE(20, latent_dim=2, hidden_dims=(16,), likelihood="ar1_normal")
    fit = pvae.fit(vae, (torch.where(mask, x, torch.nan), mask), num_epochs=2, batch_size=32, seed=0,
                   progress=False, diagnostics_every=None)
    assert math.isfinite(fit.history[-1]["loss"])


def test_pearson_residuals_of_an_ar1_program_are_nan_where_scans_are_missing():
    from pvae.analysis import pearson_residuals

    x = AR1Normal(torch.zeros(16, 10), 0.5, 1.0, 10).sample()
    mask = torch.ones(16, 10, dtype=torch.bool)
    mask[:, 3] = False
    vae = VAE(10, latent_dim=2, hidden_dims=(8,), likelihood="ar1_normal")
    r = pearson_residuals(vae, torch.where(mask, x, torch.nan), mask, num_samples=4)
    assert torch.isnan(r[:, 3]).all() and torch.isfinite(r[mask]).all()
