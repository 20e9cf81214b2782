"""do-queries on hand-written Pyro programs with exactly known effects."""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.causal import EffectEstimate, SiteError, ate, ate_error, cate, ite, potential_outcomes, sqrt_pehe
from pvae.models import ModelGuidePair


# A structural model y = t * (1 + x) + z + noise with a latent z: the ITE is 1 + x
# whatever the posterior over z, so every estimate must equal it exactly.
def linear_model(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        t = pyro.sample("t", dist.Bernoulli(logits=z), obs=t)
        return pyro.sample("y", dist.Normal(t * (1 + x) + z, 0.5), obs=y)


def linear_guide(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.3 * x, 1.0))


LINEAR = ModelGuidePair(linear_model, linear_guide)


# An effect that depends on the latent: y ~ N(t * z, 1). With q(z | x) = N(x, 0.5)
# for new units and q(z | x, y) = N(y, 0.1) when the outcome is observed (abduction).
def latent_model(x, t=None, y=None):
    with pyro.plate("units", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 2.0))
        t = pyro.sample("t", dist.Bernoulli(0.5), obs=t)
        return pyro.sample("y", dist.Normal(t * z, 1.0), obs=y)


def latent_guide(x, t=None, y=None):
    with pyro.plate("units", x.shape[0]):
        if y is None:
            pyro.sample("z", dist.Normal(x, 0.5))
        else:
            pyro.sample("z", dist.Normal(y, 0.1))


LATENT = ModelGuidePair(latent_model, latent_guide)


def test_ite_of_a_structural_model_is_exact():
    x = torch.linspace(-2, 2, 7)
    est = ite(LINEAR, x, num_samples=20)
    assert isinstance(est, EffectEstimate)
    assert est.mean.shape == est.lower.shape == est.upper.shape == (7,)
    torch.testing.assert_close(est.mean, 1 + x)
    torch.testing.assert_close(est.lower, 1 + x)
    torch.testing.assert_close(est.upper, 1 + x)
    y0, y1 = potential_outcomes(LINEAR, x, num_samples=20)
    torch.testing.assert_close(y1.mean - y0.mean, 1 + x)
    assert float(ate(LINEAR, x, num_samples=5).mean) == pytest.approx(1.0, abs=1e-6)
    assert sqrt_pehe(est, 1 + x) == pytest.approx(0.0, abs=1e-6)
    assert ate_error(est, 1 + x) == pytest.approx(0.0, abs=1e-6)


def test_ite_follows_the_posterior_over_latents_with_monte_carlo_error():
    x = torch.tensor([-1.0, 0.0, 2.0])
    num_samples = 4000
    est = ite(LATENT, x, num_samples=num_samples, keep_draws=True)
    # E[tau_i] = E_q[z_i] = x_i; the Monte Carlo standard error is 0.5 / sqrt(S)
    se = 0.5 / math.sqrt(num_samples)
    assert (est.mean - x).abs().max() < 5 * se, (est.mean, x)
    # 95% interval of N(x, 0.5): x -+ 0.98 (quantiles of 4000 draws: within 0.1)
    torch.testing.assert_close(est.lower, x - 1.96 * 0.5, atol=0.1, rtol=0)
    torch.testing.assert_close(est.upper, x + 1.96 * 0.5, atol=0.1, rtol=0)
    assert est.draws.shape == (num_samples, 3)
    torch.testing.assert_close(est.std, torch.full((3,), 0.5), atol=0.05, rtol=0)


def test_counterfactuals_of_observed_units_use_their_outcome():
    """Abduction: with (t, y) observed, the guide's posterior sits at y, so the ITE is ~ y."""
    x = torch.zeros(4)
    t = torch.tensor([1.0, 1.0, 0.0, 1.0])
    y = torch.tensor([3.0, -2.0, 0.5, 1.0])
    est = ite(LATENT, x, t, y, num_samples=2000)
    assert (est.mean - y).abs().max() < 5 * 0.1 / math.sqrt(2000), est.mean
    new_units = ite(LATENT, x, num_samples=2000)
    assert new_units.mean.abs().max() < 5 * 0.5 / math.sqrt(2000)


def test_cate_and_ate_average_the_draws_of_the_units():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    mask = torch.tensor([True, False, False, True])
    pyro.set_rng_seed(3)
    per_unit = ite(LATENT, x, num_samples=50, keep_draws=True)
    pyro.set_rng_seed(3)
    sub = cate(LATENT, x, where=mask, num_samples=50, keep_draws=True)
    pyro.set_rng_seed(3)
    by_index = cate(LATENT, x, where=[0, 3], num_samples=50)
    pyro.set_rng_seed(3)
    everyone = ate(LATENT, x, num_samples=50)
    assert sub.mean.shape == () and sub.draws.shape == (50,)
    torch.testing.assert_close(sub.draws, per_unit.draws[:, mask].mean(1))
    torch.testing.assert_close(sub.mean, by_index.mean)
    torch.testing.assert_close(everyone.mean, per_unit.mean.mean())
    assert float(sub.lower) <= float(sub.mean) <= float(sub.upper)


def test_effect_estimate_is_frozen_and_serialises():
    est = ite(LINEAR, torch.tensor([0.0, 1.0]), num_samples=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.alpha = 0.1
    d = est.to_dict()
    assert d["mean"] == pytest.approx([1.0, 2.0]) and d["alpha"] == 0.05 and d["num_samples"] == 3
    assert set(d) == {"mean", "lower", "upper", "alpha", "num_samples"}
    scalar = ate(LINEAR, torch.tensor([0.0, 1.0]), num_samples=3).to_dict()
    assert scalar["mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="keep_draws=True"):
        est.std


def test_single_unit_and_custom_treatment_values():
    x = torch.tensor([0.5])
    assert ite(LINEAR, x, num_samples=2).mean.shape == (1,)
    # do(t = 2) vs do(t = 0): twice the unit effect in this linear model
    est = ite(LINEAR, x, control=0.0, treated=2.0, num_samples=2)
    torch.testing.assert_close(est.mean, 2 * (1 + x))


def test_unknown_sites_list_the_program_sites():
    x = torch.zeros(3)
    with pytest.raises(SiteError, match=r"treatment site 'treat' .* sample sites are \['t', 'y', 'z'\]"):
        ite(LINEAR, x, treatment="treat")
    with pytest.raises(SiteError, match=r"outcome site 'outcome' .* \['t', 'y', 'z'\]"):
        ate(LINEAR, x, outcome="outcome")
    with pytest.raises(SiteError, match="different sites"):
        ite(LINEAR, x, treatment="y", outcome="y")


def test_bad_options_and_programs():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        ite(LINEAR, x, num_samples=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        ite(LINEAR, x, alpha=1.5)
    with pytest.raises(TypeError, match="ModelGuidePair"):
        ite(linear_model, x)
    with pytest.raises(ValueError, match="subgroup is empty"):
        cate(LINEAR, x, where=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool mask must have shape \(3,\), got \(2,\)"):
        cate(LINEAR, x, where=torch.ones(2, dtype=torch.bool))


def test_an_outcome_outside_the_data_plate_is_refused():
    def model(x, t=None, y=None):
        with pyro.plate("data", x.shape[0]):
            t = pyro.sample("t", dist.Bernoulli(0.5), obs=t)
        return pyro.sample("y", dist.Normal(t.mean(), 1.0), obs=y)

    def guide(x, t=None, y=None):
        pass

    with pytest.raises(SiteError, match="outside the data plate"):
        ite(ModelGuidePair(model, guide), torch.zeros(3))


@pytest.mark.parametrize("verb", [ite, ate, cate, lambda *a, **k: potential_outcomes(*a, **k)[1]],
                         ids=["ite", "ate", "cate", "potential_outcomes"])
def test_queries_take_both_calling_conventions_and_numpy(verb):
    x = torch.linspace(-2, 2, 5)
    pyro.set_rng_seed(0)
    a = verb(LINEAR, x, num_samples=10)
    pyro.set_rng_seed(0)
    b = verb(linear_model, linear_guide, x.numpy(), num_samples=10)
    torch.testing.assert_close(a.mean, b.mean)


# -- more than a binary treatment ------------------------------------------------------------
# A proxy x ~ N(z, 1) of a latent confounder z ~ N(0, 1): the exact posterior given x alone is
# q(z | x) = N(x / 2, 1/2), so E[z | x] = x / 2 and every effect has a closed form.
ARM_BASE = torch.tensor([0.0, 1.0, 3.0])
ARM_SLOPE = torch.tensor([0.0, -1.0, 2.0])


def arms_model(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        logits = torch.stack([torch.zeros_like(z), z, -z], -1)
        t = pyro.sample("t", dist.Categorical(logits=logits), obs=t)
        return pyro.sample("y", dist.Normal(ARM_BASE[t] + ARM_SLOPE[t] * z + z, 1.0), obs=y)


def dose_model(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        t = pyro.sample("t", dist.Normal(z, 1.0), obs=t)
        return pyro.sample("y", dist.Normal(t * (0.5 + z) + 0.3 * t**2 + z, 1.0), obs=y)


def exact_guide(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))


def test_a_contrast_between_two_arms_of_a_categorical_treatment_matches_its_closed_form():
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    program = ModelGuidePair(arms_model, exact_guide)
    pyro.set_rng_seed(0)
    for a, b in ((0, 2), (1, 2), (2, 0)):
        est = ite(program, x, control=a, treated=b, num_samples=20000)
        truth = ARM_BASE[b] - ARM_BASE[a] + (ARM_SLOPE[b] - ARM_SLOPE[a]) * x / 2
        # Monte Carlo error of a mean of 20000 draws of (slope_b - slope_a) z, sd |d slope| sqrt(1/2)
        se = (ARM_SLOPE[b] - ARM_SLOPE[a]).abs() * math.sqrt(0.5 / 20000)
        assert ((est.mean - truth).abs() <= 4 * se + 1e-6).all(), (a, b, est.mean, truth)
    assert float(ate(program, x, control=1, treated=1, num_samples=50).mean) == 0.0


def test_the_effect_of_moving_a_continuous_dose_matches_its_closed_form():
    x = torch.tensor([-1.0, 0.0, 2.0])
    program = ModelGuidePair(dose_model, exact_guide)
    pyro.set_rng_seed(1)
    for a, b in ((0.0, 1.0), (1.0, 3.0), (2.0, -1.0)):
        est = ite(program, x, control=a, treated=b, num_samples=20000)
        truth = (b - a) * (0.5 + x / 2) + 0.3 * (b**2 - a**2)
        se = abs(b - a) * math.sqrt(0.5 / 20000)
        assert ((est.mean - truth).abs() <= 4 * se).all(), (a, b, est.mean, truth)
    # a tensor dose per unit works too: each unit moved from 0 to its own dose
    doses = torch.tensor([1.0, 2.0, 0.5])
    est = ite(program, x, control=0.0, treated=doses, num_samples=20000)
    truth = doses * (0.5 + x / 2) + 0.3 * doses**2
    assert ((est.mean - truth).abs() <= 4 * doses * math.sqrt(0.5 / 20000)).all(), (est.mean, truth)


# -- a latent mediator ------------------------------------------------------------------------
# The linear-Gaussian SCM of the causal audit (finding 1) with a proxy x of the confounder z:
# z ~ N(0, 1), x ~ N(z, 1), t ~ Bern(sigmoid(z)), m ~ N(2 t, 0.1) (a latent mediator),
# y ~ N(m + z, 0.5). Closed form: E[Y | do(T = a), x] = 2 a + E[z | x] = 2 a + x / 2, so the
# ITE is 2 for every unit, all of it through m. The guide is exact for z given x and, for m,
# gives a factual-regime guess that an interventional query must not replay.
def mediator_model(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        t = pyro.sample("t", dist.Bernoulli(logits=z), obs=t)
        m = pyro.sample("m", dist.Normal(2.0 * t, 0.1))
        return pyro.sample("y", dist.Normal(m + z, 0.5), obs=y)


def mediator_guide(x, t=None, y=None):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
        pyro.sample("m", dist.Normal(1.0, 1.0))


MEDIATOR = ModelGuidePair(mediator_model, mediator_guide)


def test_an_effect_through_a_latent_mediator_matches_its_closed_form():
    """Only z (sampled before t) is replayed from the guide; m is drawn afresh from
    p(m | do(t = a)), so the path t -> m -> y is kept (replaying m gave ITE 0)."""
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    num_samples = 4000
    pyro.set_rng_seed(0)
    est = ite(MEDIATOR, x, num_samples=num_samples, keep_draws=True)
    # each draw is m1 - m0 (the replayed z cancels): N(2, 2 * 0.1^2), standard error 0.1 sqrt(2 / S)
    se = 0.1 * math.sqrt(2 / num_samples)
    assert (est.mean - 2.0).abs().max() < 5 * se, (est.mean, se)
    # its 95% interval is 2 -+ 1.96 * 0.1 sqrt(2) = [1.72, 2.28]; a 2.5% quantile of 4000 draws has
    # standard error sqrt(0.025 * 0.975 / 4000) / density(1.96 sd) = 0.0025 / 0.41 = 0.006: 5 of them
    bound = 1.96 * 0.1 * math.sqrt(2)
    torch.testing.assert_close(est.lower, torch.full((4,), 2 - bound), atol=0.03, rtol=0)
    torch.testing.assert_close(est.upper, torch.full((4,), 2 + bound), atol=0.03, rtol=0)
    average = ate(MEDIATOR, x, num_samples=num_samples)
    assert abs(float(average.mean) - 2.0) < 5 * se / 2, float(average.mean)
    # the potential outcomes still abduct the upstream latent: E[Y(a) | x] = 2 a + x / 2
    # (drawing z from its prior instead would give 2 a); draws sd sqrt(1/2 + 0.1^2)
    y0, y1 = potential_outcomes(MEDIATOR, x, num_samples=num_samples)
    se = math.sqrt(0.51 / num_samples)
    assert (y0.mean - x / 2).abs().max() < 5 * se, (y0.mean, x / 2)
    assert (y1.mean - (2 + x / 2)).abs().max() < 5 * se, (y1.mean, 2 + x / 2)


def test_only_latents_sampled_before_the_treatment_are_replayed():
    """The rule is the model's execution order: the same latent sampled after the treatment is
    drawn from the intervened model (here its prior), sampled before it is replayed from q."""
    def model(before):
        def fn(x, t=None, y=None):
            with pyro.plate("data", x.shape[0]):
                if before:
                    w = pyro.sample("w", dist.Normal(0.0, 1.0))
                t = pyro.sample("t", dist.Bernoulli(0.5), obs=t)
                if not before:
                    w = pyro.sample("w", dist.Normal(0.0, 1.0))
                return pyro.sample("y", dist.Normal(t * w, 1.0), obs=y)
        return fn

    def guide(x, t=None, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(5.0, 0.01))

    x = torch.zeros(3)
    replayed = ite(ModelGuidePair(model(True), guide), x, num_samples=500)
    torch.testing.assert_close(replayed.mean, torch.full((3,), 5.0), atol=0.01, rtol=0)
    # drawn afresh in each arm: t * w has mean 0, sd 1 under do(t = 1); 5 standard errors of 500 draws
    redrawn = ite(ModelGuidePair(model(False), guide), x, num_samples=500)
    assert redrawn.mean.abs().max() < 5 / math.sqrt(500), redrawn.mean


def test_with_every_latent_before_the_treatment_the_query_is_the_plain_replay_to_the_bit():
    """No downstream latent (as in CEVAE): the query is replay(do(model), guide trace) of every
    guide latent, draw for draw, as before mediators were told apart."""
    x = torch.tensor([-1.0, 0.5, 2.0])
    pyro.set_rng_seed(5)
    y0, y1 = potential_outcomes(LATENT, x, num_samples=50, keep_draws=True)
    pyro.set_rng_seed(5)
    particles = pyro.plate("num_samples_vectorized", 50, dim=-2)
    guide_trace = pyro.poutine.trace(particles(latent_guide)).get_trace(x)
    for a, est in ((0.0, y0), (1.0, y1)):
        intervened = pyro.poutine.do(latent_model, data={"t": torch.tensor(a)})
        replayed = pyro.poutine.replay(intervened, trace=guide_trace)
        site = pyro.poutine.trace(particles(replayed)).get_trace(x).nodes["y"]
        assert torch.equal(est.draws, site["fn"].mean.expand(site["fn"].batch_shape)), a
