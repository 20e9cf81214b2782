"""Collapse diagnostics against cases with known answers.

* A VAE whose encoder head gives a constant mean (and unit scale) on some
  dimensions: those dimensions have activity exactly 0 and KL exactly 0, the
  others are made clearly active, so the active-unit count is known.
* A guide equal to the prior: q(z | x_j) is the same density for every j, so
  the minibatch mutual-information estimator is exactly 0.
* The linear-Gaussian oracle with its exact posterior guide: the mutual
  information of a Gaussian channel is 1/2 log det(I + W^T W / sigma^2).
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.data import load_digits
from pvae.infer import (
    CollapseReport,
    PosteriorCollapseWarning,
    active_units,
    collapse_diagnostics,
    collapse_summary,
    elbo_terms,
    kl_per_dim,
    latent_activity,
    mutual_information,
)
from pvae.models import LinearGaussian, ModelGuidePair

LIVE, DEAD = 3, 3


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits(binarize=True).x[:400]


def _raw_for_unit_scale() -> float:
    """The NormalHead's raw scale giving softplus(raw) + MIN_SCALE = 1."""
    from pvae.models.nets import MIN_SCALE

    return math.log(math.expm1(1.0 - MIN_SCALE))


def _vae_with_dead_dims(live: int = LIVE, dead: int = DEAD) -> pvae.VAE:
    """Encoder head: the last ``dead`` dims output loc 0 and scale 1 whatever x
    is (q = prior on them); the first ``live`` dims have amplified weights."""
    torch.manual_seed(1)
    vae = pvae.VAE(64, latent_dim=live + dead, hidden_dims=(32,))
    linear = vae.encoder_head.linear  # rows: [loc (D), raw scale (D)]
    dim = live + dead
    with torch.no_grad():
        linear.weight[:live] *= 20.0
        for d in range(live, dim):
            linear.weight[d].zero_()
            linear.bias[d] = 0.0
            linear.weight[dim + d].zero_()
            linear.bias[dim + d] = _raw_for_unit_scale()
    return vae


def _prior_guide_vae() -> pvae.VAE:
    """Every dim dead: q(z | x) = N(0, I) = p(z), a fully collapsed posterior."""
    return _vae_with_dead_dims(live=0, dead=4)


def test_active_units_count_exactly_the_live_dimensions(digits):
    vae = _vae_with_dead_dims()
    activity = latent_activity(vae, digits)
    assert activity.shape == (LIVE + DEAD,)
    assert torch.all(activity[LIVE:] == 0), activity
    assert torch.all(activity[:LIVE] > 0.1), activity  # well above Burda's 0.01
    assert active_units(vae, digits) == LIVE
    # the threshold is what decides: above every live activity, nothing is active
    assert active_units(vae, digits, threshold=float(activity.max()) + 1) == 0


def test_active_units_follow_the_encoder_mean_not_samples(digits):
    # with the dead dims' scale at 1, samples vary; their means do not
    vae = _vae_with_dead_dims()
    report = collapse_diagnostics(vae, digits, num_particles=8)
    assert report.active_units == LIVE and report.active.tolist() == [True] * LIVE + [False] * DEAD


def test_kl_per_dim_sums_to_kl_and_is_zero_on_dead_dims(digits):
    vae = _vae_with_dead_dims()
    per_dim = kl_per_dim(vae, digits)
    total = elbo_terms(vae.model, vae.guide, digits).kl.mean()
    assert per_dim.shape == (LIVE + DEAD,)
    assert per_dim.sum().item() == pytest.approx(total.item(), rel=1e-5)
    assert torch.allclose(per_dim[LIVE:], torch.zeros(DEAD), atol=1e-6), per_dim
    assert torch.all(per_dim[:LIVE] > 0.1), per_dim
    report = collapse_diagnostics(vae, digits)
    assert report.kl_per_dim.sum().item() == pytest.approx(report.kl, rel=1e-5)


def test_mutual_information_of_a_guide_equal_to_the_prior_is_zero(digits):
    vae = _prior_guide_vae()
    mi = mutual_information(vae, digits, num_particles=4)
    # every log q(z_i | x_j) is the same number for all j: the estimate is 0 up to rounding
    assert abs(mi) < 1e-6, mi


def test_mutual_information_of_the_linear_gaussian_matches_the_closed_form():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 2, generator=g))
    oracle = LinearGaussian(6, 2, weight=q * torch.tensor([2.0, 1.0]), noise_scale=0.7)
    x = oracle.sample(1000)
    exact = 0.5 * torch.logdet(torch.eye(2) + oracle.weight.T @ oracle.weight / oracle.noise_scale**2).item()
    estimate = mutual_information(ModelGuidePair(oracle.model, oracle.exact_posterior_guide), x, num_particles=4)
    # InfoNCE-type estimator: biased low by about e^I / B (~0.005 here); spread
    # over draws of x ~0.015 (measured over seeds). Tolerances: 0.1 below, 0.05 above.
    assert exact - 0.1 < estimate < exact + 0.05, (estimate, exact)
    assert estimate <= math.log(len(x))


def test_mutual_information_rejects_a_hierarchical_guide():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.5 * x, 1.0))
            pyro.sample("z2", dist.Normal(z1, 0.5))

    with pytest.raises(NotImplementedError, match="z2"):
        mutual_information(ModelGuidePair(model, guide), torch.randn(50))


def test_mutual_information_of_an_autoguide_reads_its_auxiliary_draws():
    # AutoNormal draws u ~ N(loc_i, s) and puts a Delta at z = exp(u); before, the Deltas were
    # compared across data (each datum's own always won) and the estimate sat at log B.
    # I(x; z) = I(x; u) for the bijection: the same draws of the explicit LogNormal guide give
    # the same estimate, to rounding
    from pyro.infer.autoguide import AutoNormal

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.log(), 0.5), obs=x)

    def explicit(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.LogNormal(0.8 * x, 0.3))

    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    guide = AutoNormal(model)
    guide(x)
    params = dict(guide.named_parameters())
    with torch.no_grad():
        params["locs.z_unconstrained"].copy_(0.8 * x)
        params["scales.z_unconstrained"].fill_(math.log(math.expm1(0.3)))  # softplus^-1(0.3)
    for k in (1, 4):
        pyro.set_rng_seed(0)
        auto = mutual_information(model, guide, x, num_particles=k)
        pyro.set_rng_seed(0)
        reference = mutual_information(model, explicit, x, num_particles=k)
        assert auto == pytest.approx(reference, abs=1e-5) and auto < math.log(50) - 1


def test_collapse_warning_fires_on_a_collapsed_posterior(digits):
    vae = _prior_guide_vae()
    with pytest.warns(PosteriorCollapseWarning, match="collapsed") as caught:
        report = collapse_diagnostics(vae, digits)
    assert caught[0].filename == __file__  # stacklevel=2 points at the caller
    assert isinstance(report, CollapseReport)
    assert report.collapsed and report.active_units == 0 and report.kl < 1e-6
    d = report.to_dict()
    assert d["collapsed"] is True and len(d["activity"]) == 4 and d["num_data"] == len(digits)


def test_no_collapse_warning_on_a_healthy_model(digits):
    vae = _vae_with_dead_dims()  # partial collapse: reported, not warned about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = collapse_diagnostics(vae, digits)
    assert not report.collapsed and report.active_units == LIVE
    assert 0.1 < report.mutual_information <= report.mutual_information_max == pytest.approx(math.log(len(digits)))


def test_collapse_summary_is_three_floats_and_never_warns(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = collapse_summary(_prior_guide_vae(), digits)
    assert set(summary) == {"active_units", "kl", "mutual_information"}
    assert all(isinstance(v, float) for v in summary.values())
    assert summary["active_units"] == 0.0


def test_bad_arguments_name_themselves(digits):
    vae = _vae_with_dead_dims()
    with pytest.raises(ValueError, match="threshold"):
        active_units(vae, digits, threshold=-1)
    with pytest.raises(ValueError, match="num_particles"):
        mutual_information(vae, digits, num_particles=0)
    with pytest.raises(ValueError, match="at least 2 data points"):
        latent_activity(vae, digits[:1])
