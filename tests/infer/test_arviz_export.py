"""ArviZ export and PSIS k-hat, checked on the linear-Gaussian oracle.

With W of orthogonal columns the exact posterior is diagonal, so the oracle's
own diagonal guide at ``init_guide_from_posterior(f)`` is exact for f = 1,
over-dispersed for f > 1 (bounded weights: k-hat < 0.5) and under-dispersed
for f < 1. For a Gaussian target and a Gaussian proposal with f times its
scale the weights have a Pareto tail with shape k = 1 - f^2 (per dimension),
so f = 0.3 gives k ~ 0.9 > 0.7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pvae
from pvae.data import load_digits
from pvae.infer import PsisDiagnostics, psis_diagnostics, to_inference_data
from pvae.models import LinearGaussian, ModelGuidePair

from .subsampling import subsampling_pair

az = pytest.importorskip("arviz")


def _oracle(noise_scale: float = 0.7) -> LinearGaussian:
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 2, generator=g))
    return LinearGaussian(6, 2, weight=q * torch.tensor([2.0, 1.0]), loc=torch.randn(6, generator=g),
                          noise_scale=noise_scale)


def test_groups_dims_and_shapes_follow_the_numpyro_converter():
    x = load_digits(binarize=True).x[:30]
    vae = pvae.VAE(64, latent_dim=3, hidden_dims=(16,))
    result = pvae.fit(vae, x, num_epochs=2, batch_size=15, progress=False, seed=0)
    idata = pvae.to_inference_data(vae, x, num_samples=7, history=result)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "sample_stats",
                                   "observed_data", "training_history"}
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "obs_id", "z_dim_0") and z.shape == (1, 7, 30, 3)
    pred = idata.posterior_predictive["x"]
    assert pred.dims == ("chain", "draw", "obs_id", "x_dim_0") and pred.shape == (1, 7, 30, 64)
    assert set(np.unique(pred.values)) <= {0.0, 1.0}  # Bernoulli draws
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "obs_id") and ll.shape == (1, 7, 30)
    assert np.all(ll.values <= 0)  # a Bernoulli log-likelihood
    obs = idata.observed_data["x"]
    assert obs.dims == ("obs_id", "x_dim_0") and np.array_equal(obs.values, x.numpy())
    assert list(idata.posterior["obs_id"].values) == list(range(30))
    assert idata.sample_stats["log_weight"].shape == (1, 7, 30) and idata.sample_stats["lp"].shape == (1, 7)
    history = idata["training_history"]
    assert history["elbo"].dims == ("epoch",) and list(history["epoch"].values) == [1, 2]
    assert history["elbo"].values.tolist() == pytest.approx([h["elbo"] for h in result.history])
    assert idata.posterior.attrs["inference_library"] == "pyro"


def test_log_likelihood_is_log_p_x_given_the_exported_draws():
    oracle = _oracle()
    x = oracle.sample(12)
    idata = to_inference_data(ModelGuidePair(oracle.model, oracle.guide), x, num_samples=5)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (draw, obs, k)
    expected = oracle.likelihood(z).log_prob(x).numpy()
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
@pytest.mark.filterwarnings("ignore:For one or more samples the posterior variance:UserWarning")
def test_loo_runs_and_recovers_the_log_evidence_of_a_weakly_informative_model():
    # sigma = 3: the posterior is close to the prior, the PSIS-LOO ratios
    # 1/p(x_i | z) are light-tailed, and elpd_loo_i = log p(x_i) exactly
    # (a local latent returns to its prior when x_i is left out).
    oracle = _oracle(noise_scale=3.0)
    x = oracle.sample(50)
    idata = to_inference_data(ModelGuidePair(oracle.model, oracle.exact_posterior_guide), x, num_samples=1000)
    loo = az.loo(idata, pointwise=True)
    exact = oracle.log_evidence(x).sum().item()
    assert math.isfinite(loo.elpd_loo)
    # PSIS-LOO estimates elpd_i = -log E_q[r], r = 1 / p(x_i | z), by its sample mean
    # over S draws: delta-method Monte Carlo error se_i = sd(r) / (mean(r) sqrt(S)),
    # independent over data, so the total's error is sqrt(sum se_i^2); allow 4 of it
    # plus the log's Jensen bias, at most sum se_i^2 / 2 (smoothing only lowers the
    # variance of these light-tailed ratios).
    log_lik = idata.log_likelihood["x"].values[0]  # (S, 50)
    r = np.exp(-(log_lik - log_lik.min(0)))
    se2 = (r.var(0, ddof=1) / (r.mean(0) ** 2 * r.shape[0])).sum()
    tol = 4 * math.sqrt(se2) + se2 / 2
    assert abs(loo.elpd_loo - exact) < tol, (loo.elpd_loo, exact, tol)
    assert np.mean(loo.pareto_k.values < 0.7) > 0.8
    assert math.isfinite(az.waic(idata).elpd_waic)


def test_psis_khat_is_small_for_an_exact_and_an_overdispersed_guide():
    oracle = _oracle()
    x = oracle.sample(30)
    exact = psis_diagnostics(oracle.model, oracle.exact_posterior_guide, x, num_particles=500)
    assert isinstance(exact, PsisDiagnostics) and exact.khat.shape == (30,)
    # exact guide: equal weights, no tail to fit; k-hat is -inf by the
    # constant-weights rule, and every draw counts (ESS = K)
    assert bool((exact.khat == -math.inf).all()), exact.khat
    assert exact.reliable.all()
    torch.testing.assert_close(exact.ess, torch.full((30,), 500.0), atol=0.5, rtol=0)
    torch.testing.assert_close(exact.log_evidence, oracle.log_evidence(x), atol=1e-4, rtol=1e-5)
    # nearly exact (scale 1.05): the weights differ by far more than rounding, so
    # ArviZ fits the tail (finite k-hat), which is light (bounded weights: k < 0.5)
    oracle.init_guide_from_posterior(1.05)
    near = psis_diagnostics(oracle.model, oracle.guide, x, num_particles=500)
    assert torch.isfinite(near.khat).all() and bool((near.khat < 0.5).all()), near.khat

    oracle.init_guide_from_posterior(1.5)
    wide = psis_diagnostics(oracle.model, oracle.guide, x, num_particles=500, chunk_size=200)
    assert torch.isfinite(wide.khat).all() and bool((wide.khat < 0.5).all()), wide.khat
    assert wide.threshold == pytest.approx(min(1 - 1 / math.log10(500), 0.7))
    # bounded weights: the IWAE estimate is within a few of its standard errors
    assert torch.allclose(wide.log_evidence, oracle.log_evidence(x), atol=0.1)


def test_psis_khat_flags_an_underdispersed_guide():
    oracle = _oracle()
    x = oracle.sample(30)
    oracle.init_guide_from_posterior(0.3)  # Pareto shape ~ 1 - 0.09 = 0.91
    narrow = psis_diagnostics(oracle.model, oracle.guide, x, num_particles=500)
    assert narrow.khat.median() > 0.7, narrow.khat
    assert narrow.summary()["fraction_unreliable"] > 0.5


def test_bad_arguments():
    oracle = _oracle()
    x = oracle.sample(5)
    with pytest.raises(TypeError, match="^data must be an array .*Try"):
        to_inference_data(oracle, "x.csv")
    with pytest.raises(ValueError, match="num_samples"):
        to_inference_data(oracle, x, num_samples=0)
    with pytest.raises(ValueError, match="num_particles"):
        psis_diagnostics(oracle.model, oracle.guide, x, num_particles=5)
    with pytest.raises(TypeError, match="history"):
        to_inference_data(oracle, x, num_samples=2, history=3)


def test_psis_chunks_share_a_random_subsample():
    # audit finding 1: chunks of particles re-run the pair; with a randomly
    # subsampling plate they must replay the first chunk's indices. Exact guide:
    # every log-weight is log p(x_i) (datum i has the value i), so the estimate is
    # exactly some log p(x_i) and the weights are constant (k-hat -inf)
    model, guide, x, log_p = subsampling_pair(exact=True)
    psis = psis_diagnostics(model, guide, x, num_particles=20, chunk_size=5)
    assert ((psis.log_evidence[:, None] - log_p).abs().min(1).values < 1e-5).all(), psis.log_evidence
    assert bool((psis.khat == -math.inf).all()), psis.khat
