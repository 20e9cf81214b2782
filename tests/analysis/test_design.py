"""pvae.analysis.design: the latent property predictor and gradient-ascent design, on programs with known maximisers."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as tdist

from pvae.analysis import LatentDesignResult, fit_latent_predictor, latent_optimize
from pvae.inputs import DataError


class IdentityProgram(torch.nn.Module):
    """A Gaussian-latent program whose encoder mean is x and whose decoder mode is z."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return x, torch.ones_like(x)

    def decode(self, z):
        return tdist.Normal(z, 1.0)


A = torch.tensor([3.0, -4.0])  # |a| = 5


def quadratic(z):
    return -(z - A).pow(2).sum(-1)


@pytest.mark.parametrize("prior_weight", [0.0, 1.0, 4.0])
def test_latent_optimize_finds_the_penalised_maximiser(prior_weight):
    # J(z) = -|z - a|^2 - (lambda / 2) |z|^2 has its maximum at z* = 2a / (2 + lambda)
    result = latent_optimize(IdentityProgram(), quadratic, num_starts=16, steps=1500, learning_rate=0.02,
                             prior_weight=prior_weight, seed=1)
    expected = 2 * A / (2 + prior_weight)
    torch.testing.assert_close(result.final_z, expected.expand(16, 2), atol=1e-2, rtol=0)
    assert len(result.candidates) == 16 and result.accepted.all()
    best, score = result.top(1)[0]
    torch.testing.assert_close(best, expected, atol=1e-2, rtol=0)  # ranked by the predictor without an oracle
    assert score == pytest.approx(quadratic(expected).item(), abs=1e-3)


def test_trust_region_stops_on_the_sphere_towards_the_maximiser():
    radius = 2.0  # inside |a| = 5: the constrained maximiser is a r / |a|
    result = latent_optimize(IdentityProgram(), quadratic, num_starts=8, steps=1500, learning_rate=0.02,
                             prior_weight=0.0, radius=radius)
    torch.testing.assert_close(result.final_z, (A * radius / 5).expand(8, 2), atol=1e-2, rtol=0)
    assert (result.z.norm(dim=-1) <= radius + 1e-6).all()


def test_oracle_accept_record_and_summary():
    starts = torch.tensor([[0.0, 0.0], [10.0, 10.0], [3.0, -4.0]])
    calls = []

    def oracle(item):
        calls.append(item)
        return float(-(item - A).abs().sum())

    result = latent_optimize(IdentityProgram(), quadratic, starts=starts, steps=4, learning_rate=0.1,
                             prior_weight=0.0, record_every=2, oracle=oracle,
                             accept=lambda item: bool(item[0] < 5), decode=lambda z: list(z.round(decimals=1)))
    assert isinstance(result, LatentDesignResult)
    assert len(result.candidates) == 6 and result.z.shape == (6, 2)  # step 2 and the end, 3 starts each
    assert not result.accepted[[1, 4]].any() and result.accepted.sum() == 4
    assert len(calls) == 4  # the oracle scores accepted candidates only
    assert np.isnan(result.scores[~result.accepted]).all()
    top = result.top(3)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    summary = result.summary(top_mean=2)
    assert summary["top1"] == top[0][1] and summary["mean_top2"] == pytest.approx((top[0][1] + top[1][1]) / 2)
    assert summary["num_candidates"] == 6 and summary["num_accepted"] == 4
    assert math.isnan(result.summary(top_mean=50)["mean_top50"])


def test_distinct_candidates_are_counted_once():
    result = latent_optimize(IdentityProgram(), quadratic, num_starts=5, steps=0, decode=lambda z: ["same"] * len(z),
                             oracle=lambda item: 1.0)
    assert result.top(3) == [("same", 1.0)] and result.summary()["num_distinct_accepted"] == 1


def test_latent_optimize_errors():
    program = IdentityProgram()
    with pytest.raises(ValueError, match="num_starts"):
        latent_optimize(program, quadratic, num_starts=0)
    with pytest.raises(ValueError, match="radius"):
        latent_optimize(program, quadratic, radius=0.0)
    with pytest.raises(ValueError, match="prior_weight"):
        latent_optimize(program, quadratic, prior_weight=-1.0)
    with pytest.raises(ValueError, match="starts must be"):
        latent_optimize(program, quadratic, starts=torch.zeros(3))
    with pytest.raises(ValueError, match="decode returned"):
        latent_optimize(program, quadratic, num_starts=3, steps=1, decode=lambda z: ["x"])


def test_fit_latent_predictor_recovers_a_smooth_property():
    torch.manual_seed(0)
    x = torch.randn(2000, 2)
    y = (x[:, 0] - 0.5 * x[:, 1] ** 2).numpy() * 10 + 100  # off scale: the predictor standardises
    y[:50] = np.nan  # e.g. invalid molecules: dropped
    predictor = fit_latent_predictor(IdentityProgram(), x, y, num_epochs=40, seed=0)
    assert predictor.r2 > 0.97
    probe = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(predictor(probe).detach(), torch.tensor([100.0, 105.0]), atol=2.0, rtol=0)
    with pytest.raises(DataError, match="one per row"):
        fit_latent_predictor(IdentityProgram(), x, y[:10])
    with pytest.raises(DataError, match="two finite"):
        fit_latent_predictor(IdentityProgram(), x[:3], [np.nan, np.nan, 1.0])


def test_fit_latent_predictor_leaves_the_callers_rng_stream_alone():
    """It used to call torch.manual_seed(seed): the draws after it were the same whatever the caller seeded."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 2, generator=g)
    y = x[:, 0] - x[:, 1] ** 2
    draws, fits = [], []
    for user_seed in (1, 2, 1):
        torch.manual_seed(user_seed)
        state = torch.random.get_rng_state()
        fits.append(fit_latent_predictor(IdentityProgram(), x, y, hidden_dims=(8,), num_epochs=2, seed=5))
        assert torch.equal(torch.random.get_rng_state(), state)  # untouched, not just different
        draws.append(torch.randn(3))
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    # the fit depends on seed only, and its initial weights are those of torch.manual_seed(seed)
    for a, b in zip(fits[0].state_dict().values(), fits[1].state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(5)
    init = type(fits[0])(2, (8,))
    again = fit_latent_predictor(IdentityProgram(), x, y, hidden_dims=(8,), num_epochs=0, seed=5)
    for name, value in init.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[name], value), name
