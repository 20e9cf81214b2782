"""Refutations (placebo, random common cause, data subsets) on a hand-written program and on CEVAE."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import pvae
from pvae.causal import CEVAE, RefutationResult, SiteError, ate, refute


class Adjusted(PyroModule):
    """y ~ N(tau t + x beta + c, sigma), t ~ Bernoulli(sigmoid(x g)): regression adjustment as a
    Pyro program (no latent); its ATE query is tau, through the generic do-queries."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.propensity = nn.Linear(d, 1)
        self.outcome = nn.Linear(d + 1, 1)
        self.raw_scale = nn.Parameter(torch.zeros(()))

    def model(self, x, t=None, y=None):
        with pyro.plate("data", x.shape[0]):
            t = pyro.sample("t", dist.Bernoulli(logits=self.propensity(x).squeeze(-1)), obs=t)
            mean = self.outcome(torch.cat([x, t.expand(x.shape[:-1]).unsqueeze(-1)], -1)).squeeze(-1)
            return pyro.sample("y", dist.Normal(mean, nn.functional.softplus(self.raw_scale) + 1e-3), obs=y)

    def guide(self, x, t=None, y=None):
        pass


def _data(n=400, tau=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    t = torch.bernoulli(torch.sigmoid(1.5 * x[:, 0]), generator=g)
    y = tau * t + 2.0 * x[:, 0] - x[:, 1] + 0.5 * torch.randn(n, generator=g)
    return x, t, y


def _program_ate(x, t, y):
    program = Adjusted(x.shape[1])
    pvae.fit(program, (x, t, y), num_epochs=400, batch_size=len(x), learning_rate=0.05, progress=False,
             diagnostics_every=None)
    return ate(program, x, num_samples=1).mean


def test_refuters_on_a_hand_written_program_with_a_real_effect():
    x, t, y = _data()
    naive = float(y[t == 1].mean() - y[t == 0].mean())
    original = float(_program_ate(x, t, y))
    assert abs(original - 2.0) < 0.15 and abs(naive - 2.0) > 1.0, (original, naive)  # adjustment works
    placebo = refute(_program_ate, x, t, y, "placebo", num_simulations=6, original=original)
    assert isinstance(placebo, RefutationResult) and placebo.expected == 0.0 and len(placebo.estimates) == 6
    # a permuted treatment causes nothing: the new effect is near 0 and its interval covers 0
    assert abs(placebo.new_effect) < 0.2 and placebo.lower <= 0 <= placebo.upper and placebo.passed, placebo
    common = refute(_program_ate, x, t, y, "random_common_cause", num_simulations=6, original=original)
    # an unrelated covariate leaves the estimate within its standard error (0.5 / sqrt(n) scale, ~0.05)
    assert abs(common.new_effect - original) < 0.05 and common.passed, common
    subset = refute(_program_ate, x, t, y, "data_subset", num_simulations=6, original=original)
    assert abs(subset.new_effect - original) < 0.15 and subset.passed, subset
    assert subset.to_dict()["refuter"] == "data_subset"


def test_a_biased_estimator_fails_the_placebo_refuter():
    x, t, y = _data()

    def naive(x, t, y):  # the difference of arm means: confounded, and it finds "effects" anywhere x acts
        return y[t == 1].mean() - y[t == 0].mean() + 3.0

    res = refute(naive, x, t, y, "placebo", num_simulations=8)
    assert not res.passed and res.p_value < 0.01 and not (res.lower <= 0 <= res.upper), res


def test_refute_runs_on_cevae():
    x, t, y = _data(200)

    def cevae_ate(x, t, y):
        model = CEVAE(x.shape[1], outcome_dist="normal", latent_dim=2, hidden_dim=8, num_layers=1)
        model.fit(x, t, y, num_epochs=5, batch_size=100)
        return model.ate(x, num_samples=10)

    res = refute(cevae_ate, x, t, y, "random_common_cause", num_simulations=2)
    assert len(res.estimates) == 2 and torch.isfinite(torch.tensor(res.estimates)).all()


def test_refute_rejects_bad_options_with_clear_errors():
    x, t, y = _data(20)
    with pytest.raises(ValueError, match=r"refuter must be one of \['placebo', 'random_common_cause', 'data_subset'\]"):
        refute(_program_ate, x, t, y, "bootstrap")
    with pytest.raises(ValueError, match="num_simulations must be an integer >= 2"):
        refute(_program_ate, x, t, y, num_simulations=1)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        refute(_program_ate, x, t, y, alpha=1.5)
    with pytest.raises(ValueError, match=r"subset_fraction must be in \(0, 1\)"):
        refute(_program_ate, x, t, y, "data_subset", subset_fraction=1.0)
    with pytest.raises(ValueError, match=r"x must be \(n, d\) and t, y \(n,\)"):
        refute(_program_ate, x, t[:5], y)
    with pytest.raises(TypeError, match="must return a number"):
        refute(lambda x, t, y: "big", x, t, y)
    with pytest.raises(TypeError, match="callable"):
        refute(3.0, x, t, y)


def test_a_refuter_on_a_program_without_the_named_treatment_site_says_so():
    """The estimator's query names the missing site and the program's sites; refute stops
    at the first fit (the original), before any refit."""
    x, t, y = _data(40)
    calls = []

    def dose_ate(x, t, y):
        calls.append(1)
        program = Adjusted(x.shape[1])
        return ate(program, x, treatment="dose", num_samples=1).mean

    with pytest.raises(SiteError, match=r"treatment site 'dose' .* sample sites are \['t', 'y'\]"):
        refute(dose_ate, x, t, y, "placebo", num_simulations=3)
    assert len(calls) == 1


def test_refuters_against_the_original_hold_their_level_for_a_noisy_sound_estimator():
    """An estimator whose every fit is the truth plus noise (sd 0.1) and which ignores an
    added random covariate is sound: the original and the refits are exchangeable, so
    ``random_common_cause`` must reject at about alpha = 0.05. Over 400 refutations with
    3 refits the rejection rate must lie within 0.05 +- 3.5 binomial sds (0.011): [0.012,
    0.088]. Treating the original as fixed (DoWhy's test, and this module's before)
    rejected 0.15 of them."""
    x, t, y = _data(20)

    def noisy(x, t, y):
        return 2.0 + 0.1 * float(torch.randn(()))

    results = [refute(noisy, x, t, y, "random_common_cause", num_simulations=3, seed=10 * r) for r in range(400)]
    rejected = sum(not r.passed for r in results)
    assert 0.012 <= rejected / len(results) <= 0.088, rejected
    # the interval is the test's acceptance region
    assert sum(r.lower <= r.original <= r.upper for r in results) == len(results) - rejected
