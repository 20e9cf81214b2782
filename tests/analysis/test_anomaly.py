"""Calibrated anomaly scores, checked where the answer is known.

* Score: the linear-Gaussian oracle with its exact posterior guide makes every
  importance weight equal p(x), so ``score="iwae"`` with one particle is the
  exact -log p(x), a continuous score with a known null distribution.
* Calibration: conformal p-values of fresh normal data are uniform on
  {1/(n+1), ..., 1}, and the threshold at a target false-positive rate alpha
  flags a fresh normal datum with probability floor(alpha (n+1)) / (n+1).
* Pearson residuals: a Poisson VAE whose decoder ignores z has a known rate
  per feature; data drawn from it give residuals with mean 0 and variance 1.
"""

from __future__ import annotations

import math

import pytest
import pyro
import torch
from scipy import stats

import pvae
from pvae.analysis import AnomalyDetector, anomaly_scores, pearson_residuals
from pvae.models import LinearGaussian, ModelGuidePair
from pvae.infer.traces import site_log_probs
from pvae.models.nets import MIN_SCALE, positive

N_CAL, N_TEST, FPR = 2000, 5000, 0.05


def _oracle() -> LinearGaussian:
    g = torch.Generator().manual_seed(5)
    return LinearGaussian(6, 2, weight=torch.randn(6, 2, generator=g), loc=torch.randn(6, generator=g),
                          noise_scale=0.7)


@pytest.fixture(scope="module")
def calibrated() -> tuple[LinearGaussian, AnomalyDetector]:
    torch.manual_seed(11)
    oracle = _oracle()
    program = ModelGuidePair(oracle.model, oracle.exact_posterior_guide)
    detector = AnomalyDetector(program, score="iwae", num_particles=1).calibrate(oracle.sample(N_CAL))
    return oracle, detector


def test_iwae_score_of_an_exact_guide_is_minus_log_evidence(calibrated):
    oracle, detector = calibrated
    x = oracle.sample(100)
    torch.testing.assert_close(detector.score(x), -oracle.log_evidence(x), atol=1e-4, rtol=1e-5)


def test_false_positive_rate_on_fresh_normal_data_hits_the_target(calibrated):
    oracle, detector = calibrated
    flagged = detector.predict(oracle.sample(N_TEST), fpr=FPR).double().mean().item()
    # Conformal: E[FPR] = floor(alpha (n+1)) / (n+1) = 100/2001. Spread: the
    # calibration set's true FPR varies with variance ~ alpha(1-alpha)/n_cal,
    # the test proportion adds alpha(1-alpha)/n_test; 3 sigma of both.
    expected = math.floor(FPR * (N_CAL + 1)) / (N_CAL + 1)
    sigma = math.sqrt(FPR * (1 - FPR) * (1 / N_CAL + 1 / N_TEST))
    assert abs(flagged - expected) < 3 * sigma, (flagged, expected, sigma)


def test_p_values_of_fresh_normal_data_are_uniform(calibrated):
    oracle, detector = calibrated
    p = detector.p_value(oracle.sample(N_TEST))
    assert p.min() >= 1 / (N_CAL + 1) and p.max() <= 1
    statistic = stats.kstest(p.numpy(), "uniform").statistic
    # The p-values share one calibration set, so their KS distance to the
    # uniform behaves like a two-sample KS statistic (n_cal, n_test), not a
    # one-sample one. Critical value at alpha = 0.001: c = sqrt(-ln(alpha/2)/2) = 1.95.
    critical = 1.95 * math.sqrt((N_CAL + N_TEST) / (N_CAL * N_TEST))
    assert statistic < critical, (statistic, critical)


def test_threshold_and_p_values_make_the_same_decisions(calibrated):
    oracle, detector = calibrated
    scores = detector.score(oracle.sample(1000))
    null = detector.null_scores
    # include the calibration scores themselves: ties are where off-by-ones show
    scores = torch.cat([scores, null[-150:]])
    for fpr in (0.01, 0.05, 0.2):
        by_threshold = scores > detector.threshold(fpr)
        by_p_value = detector.p_values_of(scores) <= fpr
        assert torch.equal(by_threshold, by_p_value), fpr
    # the threshold is the conservative empirical (1 - alpha) quantile of the
    # null scores: floor(alpha (n+1)) - 1 = 99 of the 2000 lie above it
    assert int((null > detector.threshold(FPR)).sum()) == math.floor(FPR * (N_CAL + 1)) - 1


def test_shifted_data_are_flagged(calibrated):
    oracle, detector = calibrated
    anomalies = oracle.sample(500) + 4.0
    assert detector.predict(anomalies, fpr=FPR).double().mean() > 0.95
    assert detector.zscore(anomalies).median() > 3
    normal = detector.zscore(oracle.sample(N_TEST))
    assert abs(normal.mean()) < 0.1 and abs(normal.std() - 1) < 0.1


def test_detector_errors_say_what_to_do(calibrated):
    oracle, detector = calibrated
    with pytest.raises(ValueError, match="Try at least"):
        detector.threshold(1e-4)
    with pytest.raises(ValueError, match=r"fpr must be a number in \(0, 1\)"):
        detector.threshold(1.5)
    with pytest.raises(ValueError, match="score must be one of"):
        AnomalyDetector(detector.program, score="mse")
    with pytest.raises(RuntimeError, match="calibrate"):
        AnomalyDetector(detector.program).p_value(oracle.sample(3))


def _poisson_vae(rate_logits: torch.Tensor) -> pvae.VAE:
    """A Poisson VAE whose decoder ignores z: rate softplus(b) per feature."""
    vae = pvae.VAE(len(rate_logits), latent_dim=2, hidden_dims=(8,), likelihood="poisson")
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
        vae.decoder[-1].bias.copy_(rate_logits)
    return vae


@pytest.mark.parametrize("at", ["draws", "mean"])
def test_pearson_residuals_of_a_poisson_model_are_standardised(at):
    logits = torch.tensor([-1.0, 0.0, 1.0, 2.0, 4.0])
    vae = _poisson_vae(logits)
    rate = positive(logits)
    n = 4000
    x = torch.distributions.Poisson(rate).sample((n,))
    r = pearson_residuals(vae, x, at=at)
    assert r.shape == x.shape
    # mean: se 1/sqrt(n); variance: se sqrt((2 + 1/rate)/n) (Poisson excess kurtosis 1/rate); 4 se
    assert torch.all(r.mean(0).abs() < 4 / math.sqrt(n)), r.mean(0)
    assert torch.all((r.var(0) - 1).abs() < 4 * ((2 + 1 / rate) / n).sqrt()), r.var(0)
    # a doubled rate in the data shows as positive residuals
    r_off = pearson_residuals(vae, torch.distributions.Poisson(2 * rate).sample((n,)), at=at)
    assert torch.all(r_off.mean(0) > 0.3)


def _poisson_vae_on_z() -> pvae.VAE:
    """A Poisson VAE whose rate does depend on z: no hidden layers, so the rate is
    positive(W z + b) with W, b set here; the encoder head outputs loc 0 and scale 1 whatever
    x is, so q(z | x) = N(0, I)."""
    vae = pvae.VAE(5, latent_dim=2, hidden_dims=(), likelihood="poisson")
    with torch.no_grad():
        head = vae.encoder_head.linear  # rows: [loc (2), raw scale (2)]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0] + [math.log(math.expm1(1.0 - MIN_SCALE))] * 2))
        vae.decoder[-1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5], [2.0, 0.0]]))
        vae.decoder[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.5, 2.0, -1.0]))
    return vae


def test_pearson_residuals_at_draws_add_the_between_draw_variance():
    """With K draws z_k of the guide, m = mean_k rate_k and v = mean_k rate_k (Poisson: the
    variance is the rate) + mean_k (rate_k - m)^2 (law of total variance, biased 1/K). The
    draws are those of the same seeded trace; the rates and moments are recomputed here in
    float64 from W and b, so the agreement is float32 rounding (rtol 1e-5)."""
    vae = _poisson_vae_on_z()
    w, b = vae.decoder[-1].weight.detach().double(), vae.decoder[-1].bias.detach().double()
    x = torch.tensor([[0.0, 3.0, 1.0, 9.0, 0.0], [2.0, 1.0, 5.0, 4.0, 1.0], [1.0, 0.0, 0.0, 12.0, 6.0]])
    k = 16
    torch.testing.assert_close(vae.encode(x), (torch.zeros(3, 2), torch.ones(3, 2)))
    pyro.set_rng_seed(7)
    r = pearson_residuals(vae, x, num_samples=k)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        z = site_log_probs(vae.model, vae.guide, x, num_particles=k).guide_trace.nodes["z"]["value"].double()
    assert z.shape == (k, 3, 2)
    rate = torch.nn.functional.softplus(z @ w.T + b) + MIN_SCALE  # (K, n, 5)
    m = rate.mean(0)
    within, between = rate.mean(0), ((rate - m) ** 2).mean(0)
    # the between-draw term is not negligible here (measured 0.14 to 1.4 of the within-draw
    # term): without it every residual moves by a factor > sqrt(1.1), far outside the tolerance
    assert torch.all(between / within > 0.1), between / within
    expected = (x.double() - m) / (within + between).sqrt()
    torch.testing.assert_close(r.double(), expected, rtol=1e-5, atol=1e-6)


def test_pearson_residuals_mask_missing_entries_and_other_families():
    vae = _poisson_vae(torch.zeros(4))
    x = torch.poisson(torch.ones(50, 4))
    mask = torch.rand(50, 4) > 0.3
    r = pearson_residuals(vae, x, mask)
    assert torch.equal(torch.isnan(r), ~mask)
    scores = anomaly_scores(vae, x, mask, score="pearson")
    torch.testing.assert_close(scores, r.nan_to_num(0).pow(2).sum(-1))
    for likelihood in ("bernoulli", "negative_binomial"):
        model = pvae.VAE(4, latent_dim=2, hidden_dims=(8,), likelihood=likelihood)
        assert torch.isfinite(pearson_residuals(model, (x > 1).float())).all()
    # Bernoulli at the guide's mean: v = m (1 - m), m = sigmoid(decoder(encoder loc)), by hand
    torch.manual_seed(3)
    model = pvae.VAE(4, latent_dim=2, hidden_dims=(8,), likelihood="bernoulli")
    xb = (x > 1).float()
    with torch.no_grad():
        m = torch.sigmoid(model.decoder(model.encode(xb)[0]))
    torch.testing.assert_close(pearson_residuals(model, xb, at="mean"), (xb - m) / (m * (1 - m)).sqrt())
    categorical = pvae.VAE(4, latent_dim=2, hidden_dims=(8,), likelihood="categorical",
                           likelihood_kwargs={"cardinalities": [3] * 4})
    with pytest.raises(ValueError, match="Categorical.*Try"):
        pearson_residuals(categorical, (x > 1).float())


def test_nll_score_of_a_vae_in_chunks_matches_one_pass():
    vae = _poisson_vae(torch.zeros(4))
    x = torch.poisson(torch.ones(30, 4))
    # the decoder ignores z, so -E_q log p(x|z) is deterministic
    torch.testing.assert_close(anomaly_scores(vae, x, batch_size=7), anomaly_scores(vae, x))
    expected = -torch.distributions.Poisson(positive(torch.zeros(4))).log_prob(x).sum(-1)
    torch.testing.assert_close(anomaly_scores(vae, x, score="nll"), expected)


def test_nan_scores_are_refused_alike_by_p_values_and_predict(calibrated, monkeypatch):
    """A NaN score used to get the smallest p-value (flagged) while ``score > threshold`` said
    not flagged; both now refuse it, and infinite scores still get matching decisions."""
    oracle, detector = calibrated
    for method in (detector.p_values_of, lambda s: s > detector.threshold(FPR)):
        method(torch.tensor([1e9, 0.0]))  # fine without a NaN
    with pytest.raises(ValueError, match="1 of 2 scores are NaN.*index 0"):
        detector.p_values_of(torch.tensor([math.nan, 1e9]))
    x = oracle.sample(3)
    x[1, 0] = math.nan
    with pyro.validation_enabled(False):  # a program run without validation scores NaN data as NaN
        assert torch.isnan(detector.score(x)).tolist() == [False, True, False]
        with pytest.raises(ValueError, match="1 of 3 scores are NaN.*index 1"):
            detector.p_value(x)
        with pytest.raises(ValueError, match="1 of 3 scores are NaN.*index 1"):
            detector.predict(x, fpr=FPR)
    monkeypatch.setattr(detector, "score", lambda *args, **kwargs: torch.tensor([math.inf, -math.inf, 0.0]))
    flags = detector.predict(x, fpr=FPR)
    assert flags.tolist() == [True, False, False]
    assert torch.equal(flags, detector.p_value(x) <= FPR)
