"""Training objectives: ELBO (standard / STL), IWAE and Renyi (standard / DReG).

Exactness checks compare against per-site log-densities from the seam
(``site_log_probs``) under the same seed; the estimator checks use a
linear-Gaussian model whose exact posterior is known, with *per-datum* guide
parameters, so that one vectorised call over B identical data gives B
independent draws of the encoder gradient (the gradient of the batch sum with
respect to datum b's parameters is datum b's gradient).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from torch.distributions import biject_to

import pvae
from pvae.infer import ElboObjective, IWAEObjective, detach_distribution, make_objective, site_log_probs
from pvae.models import VAE, ModelGuidePair

DTYPE = torch.float64


@lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0 > 0.5, dtype=torch.float32)  # (1797, 64)


def _vae(**kw) -> VAE:
    return VAE(64, latent_dim=4, hidden_dims=(32,), **kw)


def _seeded(objective, model, guide, args, kl_weight=1.0, seed=1):
    pyro.set_rng_seed(seed)
    return objective(model, guide, args, {}, kl_weight)


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


# -- a linear-Gaussian model with a per-datum MVN guide --------------------------------
class LinearGaussianPair:
    """z ~ N(0, I_2), x | z ~ N(W z + b, sigma^2 I_3); guide q(z_b) = MVN(loc_b, L_b L_b^T).

    Exact posterior: S = (I + W^T W / sigma^2)^{-1}, m(x) = S W^T (x - b) / sigma^2.
    ``loc`` (B, 2) and ``raw_tril`` (B, 2, 2) are per datum; W and b are the
    decoder ("model") parameters.
    """

    sigma = 0.7

    def __init__(self, x: torch.Tensor, exact: bool = True, perturb: float = 0.0) -> None:
        B = x.shape[0]
        self.W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]], dtype=DTYPE, requires_grad=True)
        self.b = torch.tensor([0.1, -0.2, 0.3], dtype=DTYPE, requires_grad=True)
        with torch.no_grad():
            W, s2 = self.W, self.sigma**2
            S = torch.linalg.inv(torch.eye(2, dtype=DTYPE) + W.T @ W / s2)
            m = (x - self.b) @ W @ S.T / s2  # (B, 2)
            L = torch.linalg.cholesky(S)
            if not exact:
                m = m + perturb * torch.tensor([0.5, -0.4], dtype=DTYPE)
                L = L * (1.0 + perturb) + perturb * torch.tensor([[0.0, 0.0], [0.3, 0.0]], dtype=DTYPE)
        self.loc = m.clone().requires_grad_(True)
        self.tril = L.expand(B, 2, 2).clone().requires_grad_(True)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.loc, scale_tril=self.tril.tril()))

    @property
    def encoder(self):
        return [self.loc, self.tril]

    @property
    def decoder(self):
        return [self.W, self.b]


def _lg_data(n: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DTYPE)


def _per_datum_encoder_grads(loss, pair) -> torch.Tensor:
    """(B, 5): d loss / d(loc_b, lower triangle of L_b), one row per datum."""
    g_loc, g_tril = _grads(loss, pair.encoder)
    i, j = torch.tril_indices(2, 2)
    return torch.cat([g_loc, g_tril[:, i, j]], dim=-1)


# -- exact values ---------------------------------------------------------------------
def test_iwae_with_one_particle_is_the_elbo_under_the_same_seed():
    x = _digits()[:50]
    vae = _vae()
    params = list(vae.parameters())
    elbo = _seeded(ElboObjective(), vae.model, vae.guide, (x,))
    for obj in (IWAEObjective(1), IWAEObjective(1, "dreg"), make_objective("renyi", alpha=0.5)):
        iwae = _seeded(obj, vae.model, vae.guide, (x,))
        # float32 batch totals of ~2000 nats summed in another order: 1e-6 relative
        assert iwae.loss.item() == pytest.approx(elbo.loss.item(), rel=1e-6), obj
        assert iwae.bound.item() == pytest.approx(elbo.elbo.item(), rel=1e-6), obj
        assert iwae.reconstruction.item() == pytest.approx(elbo.reconstruction.item(), rel=1e-6)
        assert iwae.kl.item() == pytest.approx(elbo.kl.item(), rel=1e-6, abs=1e-4)
    # and so is its gradient (standard estimator: the very same function)
    iwae = _seeded(IWAEObjective(1), vae.model, vae.guide, (x,))
    for a, b in zip(_grads(iwae.loss, params), _grads(elbo.loss, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_importance_weighted_loss_equals_the_bound_computed_by_hand(alpha, kl_weight):
    x = _digits()[:40]
    vae = _vae()
    K = 7
    obj = make_objective("renyi", num_particles=K, alpha=alpha) if alpha else make_objective("iwae", num_particles=K)
    terms = _seeded(obj, vae.model, vae.guide, (x,), kl_weight=kl_weight)
    pyro.set_rng_seed(1)
    s = site_log_probs(vae.model, vae.guide, x, num_particles=K, max_plate_nesting=1)
    log_w = s.log_likelihood + kl_weight * (s.log_prior - s.log_guide)  # (K, 40)
    assert log_w.shape == (K, 40)

    def bound(lw):
        return ((torch.logsumexp((1 - alpha) * lw, 0) - math.log(K)) / (1 - alpha)).sum()

    # float32 sums of ~1800 nats: 1e-5 relative
    assert terms.loss.item() == pytest.approx(-bound(log_w).item(), rel=1e-5)
    assert terms.bound.item() == pytest.approx(bound(s.log_weight).item(), rel=1e-5)  # never annealed
    assert terms.reconstruction.item() == pytest.approx(s.log_likelihood.mean(0).sum().item(), rel=1e-5)
    kl = (s.log_guide - s.log_prior).mean(0).sum().item()
    assert terms.kl.item() == pytest.approx(kl, rel=1e-5, abs=1e-3)
    assert terms.elbo.item() == pytest.approx(s.log_weight.mean(0).sum().item(), rel=1e-5)


def test_masked_observations_enter_the_log_weights_as_in_the_seam():
    x = _digits()[:30]
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    vae = _vae()
    for estimator in ("standard", "dreg"):
        terms = _seeded(IWAEObjective(4, estimator), vae.model, vae.guide, (x, mask))
        pyro.set_rng_seed(1)
        s = site_log_probs(vae.model, vae.guide, x, mask, num_particles=4, max_plate_nesting=1)
        expected = -(torch.logsumexp(s.log_weight, 0) - math.log(4)).sum()
        assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5)
        # and masking matters: the unmasked loss differs by far more than that
        unmasked = _seeded(IWAEObjective(4, estimator), vae.model, vae.guide, (x,))
        assert abs(unmasked.loss.item() - terms.loss.item()) > 100 * 1e-5 * abs(expected.item())


def test_renyi_alpha_zero_is_iwae():
    x = _digits()[:30]
    vae = _vae()
    params = list(vae.parameters())
    for estimator in ("standard", "dreg"):
        a = _seeded(make_objective("renyi", num_particles=5, alpha=0.0, estimator=estimator), vae.model, vae.guide, (x,))
        b = _seeded(make_objective("iwae", num_particles=5, estimator=estimator), vae.model, vae.guide, (x,))
        assert a.loss.item() == b.loss.item()
        for ga, gb in zip(_grads(a.loss, params), _grads(b.loss, params)):
            torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_iwae_bound_lies_between_elbo_and_evidence_on_average():
    # sanity of the reported fields: IWAE_K >= ELBO of the same particles (Jensen,
    # exact per datum), and alpha orders the Renyi bounds the same way.
    x = _digits()[:100]
    vae = _vae()
    with torch.no_grad():
        t0 = _seeded(IWAEObjective(10), vae.model, vae.guide, (x,))
        t5 = _seeded(IWAEObjective(10, alpha=0.5), vae.model, vae.guide, (x,))
    assert t0.bound.item() >= t5.bound.item() >= t0.elbo.item(), (t0.bound, t5.bound, t0.elbo)


def test_subsample_scale_multiplies_the_loss_and_not_the_bound():
    N, B = 40, 10
    x_all = _lg_data(N)
    idx = torch.arange(10, 20)
    pair = LinearGaussianPair(x_all[idx], exact=False, perturb=0.5)

    def model(x, sub):
        with pyro.plate("data", N if sub else B, subsample=idx if sub else None):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ pair.W.T + pair.b, pair.sigma).to_event(1), obs=x)

    def guide(x, sub):
        with pyro.plate("data", N if sub else B, subsample=idx if sub else None):
            pyro.sample("z", dist.MultivariateNormal(pair.loc, scale_tril=pair.tril.tril()))

    x = x_all[idx]
    for estimator in ("standard", "dreg"):
        full = _seeded(IWAEObjective(4, estimator), model, guide, (x, False))
        sub = _seeded(IWAEObjective(4, estimator), model, guide, (x, True))
        assert sub.loss.item() == pytest.approx(N / B * full.loss.item(), rel=1e-12)
        assert sub.bound.item() == pytest.approx(full.bound.item(), rel=1e-12)


# -- estimators: STL and DReG ------------------------------------------------------------
def test_stl_encoder_gradient_is_zero_at_the_exact_posterior_and_standard_is_not():
    x = _lg_data(64)
    pair = LinearGaussianPair(x, exact=True)
    for K in (1, 4):
        stl = _seeded(ElboObjective(K, "stl"), pair.model, pair.guide, (x,))
        std = _seeded(ElboObjective(K), pair.model, pair.guide, (x,))
        assert stl.loss.item() == pytest.approx(std.loss.item(), rel=1e-12)  # same value
        g_stl = torch.cat([g.flatten() for g in _grads(stl.loss, pair.encoder)])
        g_std = torch.cat([g.flatten() for g in _grads(std.loss, pair.encoder)])
        # log p(x, z) - log q(z) = log p(x) for every z: the STL path term vanishes
        # (float64 round-off ~1e-13); the score term of the standard one does not
        assert g_stl.abs().max().item() < 1e-9, g_stl.abs().max()
        assert g_std.abs().max().item() > 0.1, g_std.abs().max()
        # decoder gradients are the same function
        for a, b in zip(_grads(stl.loss, pair.decoder), _grads(std.loss, pair.decoder)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dreg_encoder_gradient_is_zero_at_the_exact_posterior():
    x = _lg_data(64)
    pair = LinearGaussianPair(x, exact=True)
    dreg = _seeded(IWAEObjective(5, "dreg"), pair.model, pair.guide, (x,))
    std = _seeded(IWAEObjective(5), pair.model, pair.guide, (x,))
    g_dreg = torch.cat([g.flatten() for g in _grads(dreg.loss, pair.encoder)])
    g_std = torch.cat([g.flatten() for g in _grads(std.loss, pair.encoder)])
    assert g_dreg.abs().max().item() < 1e-9, g_dreg.abs().max()
    assert g_std.abs().max().item() > 0.1, g_std.abs().max()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_dreg_decoder_gradient_is_the_standard_one_under_the_same_seed(alpha):
    x = _lg_data(32)
    pair = LinearGaussianPair(x, exact=False, perturb=0.5)
    for kl_weight in (1.0, 0.4):
        dreg = _seeded(IWAEObjective(6, "dreg", alpha), pair.model, pair.guide, (x,), kl_weight)
        std = _seeded(IWAEObjective(6, "standard", alpha), pair.model, pair.guide, (x,), kl_weight)
        assert dreg.loss.item() == pytest.approx(std.loss.item(), rel=1e-12)  # the bound's value
        for a, b in zip(_grads(dreg.loss, pair.decoder), _grads(std.loss, pair.decoder)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # float64: equal to round-off
        # while the encoder gradients differ (else the test above would be vacuous)
        ga, gb = _grads(dreg.loss, pair.encoder)[0], _grads(std.loss, pair.encoder)[0]
        assert (ga - gb).abs().max().item() > 1e-3


def test_dreg_decoder_gradient_on_the_vae():
    x = _digits()[:64]
    vae = _vae()
    dec = list(vae.decoder.parameters())
    enc = list(vae.encoder_body.parameters()) + list(vae.encoder_head.parameters())
    dreg = _seeded(IWAEObjective(5, "dreg"), vae.model, vae.guide, (x,))
    std = _seeded(IWAEObjective(5), vae.model, vae.guide, (x,))
    for a, b in zip(_grads(dreg.loss, dec), _grads(std.loss, dec)):
        # float32: softmax weights vs logsumexp's backward, ~1e-6 relative
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    diff = max((a - b).abs().max().item() for a, b in zip(_grads(dreg.loss, enc), _grads(std.loss, enc)))
    assert diff > 1e-3


@pytest.mark.parametrize("alpha,kl_weight", [(0.0, 1.0), (0.5, 1.0), (0.0, 0.5)])
def test_dreg_is_unbiased_and_has_lower_encoder_variance(alpha, kl_weight):
    """B = 20000 identical data with per-datum guide parameters: 20000 draws of
    each estimator's encoder gradient in one call, paired by seed (same z)."""
    B, K = 20000, 5
    x = _lg_data(1).expand(B, 3).contiguous()
    pair = LinearGaussianPair(x, exact=False, perturb=0.3)
    std = _seeded(IWAEObjective(K, "standard", alpha), pair.model, pair.guide, (x,), kl_weight)
    dreg = _seeded(IWAEObjective(K, "dreg", alpha), pair.model, pair.guide, (x,), kl_weight)
    g_std = _per_datum_encoder_grads(std.loss, pair)
    g_dreg = _per_datum_encoder_grads(dreg.loss, pair)

    def z_scores(g):
        d = g - g_std  # paired differences: mean 0 for an unbiased estimator
        return (d.mean(0) / (d.std(0) / math.sqrt(B))).abs()

    # 5 coordinates at 4 standard errors: a false alarm has probability < 1e-3
    z = z_scores(g_dreg)
    assert z.max().item() < 4.0, (z, g_std.mean(0), g_dreg.mean(0))
    var_std, var_dreg = g_std.var(0).sum().item(), g_dreg.var(0).sum().item()
    assert var_dreg < 0.5 * var_std, (var_dreg, var_std)  # measured 0.01x, 0.06x, 0.17x

    # power: the tempting but biased "STL for IWAE" (weights w~, not w~^2, on the
    # path term) fails the same check by far
    pyro.set_rng_seed(1)
    s = site_log_probs(pair.model, pair.guide, x, num_particles=K, max_plate_nesting=1)
    q = s.guide_trace.nodes["z"]
    log_q_sg = detach_distribution(q["fn"]).log_prob(q["value"])
    log_w_hat = s.log_likelihood + kl_weight * (s.log_prior - log_q_sg)
    v = torch.softmax((1 - alpha) * log_w_hat, 0).detach()
    biased = -(v * log_w_hat).sum()
    assert z_scores(_per_datum_encoder_grads(biased, pair)).max().item() > 10.0


# -- fit --------------------------------------------------------------------------------
@torch.no_grad()
def _val_elbo(vae, x) -> float:
    return ElboObjective(10)(vae.model, vae.guide, (x,), {}).elbo.item() / x.shape[0]


@pytest.mark.parametrize("objective", ["iwae", "dreg", "stl"])
def test_fit_with_the_iwae_objective_raises_the_elbo_on_digits(objective):
    X = _digits()
    xt, xv = X[:1000], X[1000:1300]
    vae = _vae()
    before = _val_elbo(vae, xv)
    fit = dict(num_epochs=5, batch_size=100, learning_rate=1e-2, seed=0)
    if objective == "iwae":
        result = pvae.fit(vae, xt, objective="iwae", num_particles=5, **fit)
    elif objective == "dreg":
        result = pvae.fit(vae, xt, objective=make_objective("iwae", num_particles=5, estimator="dreg"), **fit)
    else:
        result = pvae.fit(vae, xt, objective=ElboObjective(estimator="stl"), **fit)
    after = _val_elbo(vae, xv)
    # as in test_train: ~-45 nats untrained, ~-26 after 5 ELBO epochs; 10 nats is
    # half the gain and >> the estimates' standard errors (< 0.3 nats)
    assert after - before > 10.0, (before, after)
    for row in result.history:
        assert row["elbo"] == pytest.approx(row["reconstruction"] - row["kl"], abs=1e-3)
        # the loss is -IWAE_5 per datum, at least as tight as the ELBO of the same particles
        assert -row["loss"] >= row["elbo"] - 1e-4, row
        if objective == "stl":  # the STL loss is the ELBO's value
            assert row["loss"] == pytest.approx(-row["elbo"], abs=1e-3)


# -- options and errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("iwae", {"estimator": "stl"}, r"estimator must be one of \['standard', 'dreg'\].*Try objective='elbo'"),
        ("elbo", {"estimator": "dreg"}, r"estimator must be one of \['standard', 'stl'\].*Try objective='iwae'"),
        ("renyi", {"estimator": "reinforce"}, r"\['standard', 'dreg'\]"),
        ("iwae", {"num_particles": 0}, "num_particles must be a positive integer, got 0"),
        ("iwae", {"num_particles": 2.5}, "num_particles must be a positive integer"),
        ("renyi", {"alpha": 1.0}, r"alpha=1 is the ELBO.*objective='elbo'"),
        ("renyi", {"alpha": float("nan")}, "alpha must be a finite real number"),
        ("iwae", {"alpha": 0.5}, r"unknown \['alpha'\].*objective='renyi'"),
        ("elbo", {"particles": 3}, r"takes the options \['num_particles', 'estimator'\], got unknown \['particles'\]"),
        ("vimco", {}, r"objective must be one of \['cevae', 'elbo', 'enum_elbo', 'iwae', 'renyi'\]"),
    ],
)
def test_bad_options_raise_value_errors_listing_the_allowed_values(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_objective(name, **kwargs)


def test_make_objective_builds_the_right_objective():
    obj = make_objective("iwae", num_particles=5, estimator="dreg")
    assert isinstance(obj, IWAEObjective) and (obj.num_particles, obj.estimator, obj.alpha) == (5, "dreg", 0.0)
    obj = make_objective("renyi", num_particles=3, alpha=0.5)
    assert isinstance(obj, IWAEObjective) and obj.alpha == 0.5
    obj = make_objective("elbo", estimator="stl")
    assert isinstance(obj, ElboObjective) and obj.estimator == "stl"
    assert make_objective(obj) is obj


def _bernoulli_latent_pair():
    probs = torch.full((64,), 0.5, requires_grad=True)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("coin", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("coin", dist.Bernoulli(probs[: x.shape[0]]))

    return ModelGuidePair(model, guide)


@pytest.mark.parametrize(
    "objective,what",
    [
        (IWAEObjective(3, "dreg"), "estimator='dreg'"),
        (IWAEObjective(3), "'iwae' with estimator='standard'"),
        (ElboObjective(2, "stl"), "estimator='stl'"),
    ],
)
def test_non_reparameterised_guide_site_is_a_clear_error(objective, what):
    pair = _bernoulli_latent_pair()
    with pytest.raises(ValueError, match=r"guide site 'coin' \(Bernoulli\) is not reparameterised") as err:
        objective(pair.model, pair.guide, (torch.randn(8),), {})
    msg = str(err.value)
    assert what in msg and "score-function" in msg and "out of scope" in msg and "Try" in msg


def test_beta_vae_under_iwae_is_a_clear_error_and_fine_under_the_elbo():
    x = _digits()[:20]
    vae = _vae(beta=2.0)
    with pytest.raises(ValueError, match=r"site 'z' has scale 2 while the observed data have scale 1.*beta.*objective='elbo'"):
        IWAEObjective(3)(vae.model, vae.guide, (x,), {})
    ElboObjective(1, "stl")(vae.model, vae.guide, (x,), {})  # beta is the ELBO's business


def test_global_latent_under_iwae_is_a_clear_error():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    loc = torch.zeros((), requires_grad=True)

    def guide(x):
        pyro.sample("mu", dist.Normal(loc, 1.0))

    with pytest.raises(ValueError, match=r"site 'mu' lies outside the data plate"):
        IWAEObjective(2)(model, guide, (torch.randn(5),), {})


def test_hierarchical_guide_is_a_clear_error_for_dreg_and_stl_only():
    w = torch.tensor(0.5, requires_grad=True)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            b = pyro.sample("b", dist.Normal(a, 1.0))
            pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(w * x, 1.0))
            pyro.sample("b", dist.Normal(w * a, 1.0))  # q(b | a): parameters depend on a

    x = torch.randn(6)
    for obj in (IWAEObjective(3, "dreg"), ElboObjective(1, "stl")):
        with pytest.raises(ValueError, match=r"parameters of guide site 'b' depend on the latent sample 'a'.*Try estimator='standard'"):
            obj(model, guide, (x,), {})
    IWAEObjective(3)(model, guide, (x,), {}).loss.backward()  # standard is exact here
    # a mean-field guide over two sites is fine
    def mean_field(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(w * x, 1.0))
            pyro.sample("b", dist.Normal(w * x, 2.0))

    IWAEObjective(3, "dreg")(model, mean_field, (x,), {}).loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad)


# -- detach_distribution -------------------------------------------------------------------
def _leaf(*shape, positive=False):
    t = torch.rand(*shape, dtype=DTYPE) + 0.5 if positive else torch.randn(*shape, dtype=DTYPE)
    return t.requires_grad_(True)


def _cases():
    loc, scale = _leaf(3), _leaf(3, positive=True)
    a, b = _leaf(3, positive=True), _leaf(3, positive=True)
    tril = (torch.eye(3, dtype=DTYPE) + 0.1 * torch.randn(3, 3, dtype=DTYPE).tril(-1)).requires_grad_(True)
    factor, diag = _leaf(3, 2), _leaf(3, positive=True)
    shift = _leaf(3)
    return [
        ("Normal", dist.Normal(loc, scale), [loc, scale]),
        ("Independent", dist.Normal(loc, scale).to_event(1), [loc, scale]),
        ("MultivariateNormal", dist.MultivariateNormal(loc, scale_tril=tril), [loc, tril]),
        ("LowRankMultivariateNormal", dist.LowRankMultivariateNormal(loc, factor, diag), [loc, factor, diag]),
        ("Beta", dist.Beta(a, b), [a, b]),
        ("Gamma", dist.Gamma(a, b), [a, b]),
        ("LogNormal", dist.LogNormal(loc, scale), [loc, scale]),
        ("Expanded", dist.ExpandedDistribution(dist.Normal(loc, scale), (2, 3)), [loc, scale]),
        ("Masked", dist.Normal(loc, scale).mask(torch.tensor([True, False, True])), [loc, scale]),
        ("Affine", dist.TransformedDistribution(dist.Normal(loc, scale), [T.AffineTransform(shift, 2.0), T.ExpTransform()]), [loc, scale, shift]),
        ("RelaxedBernoulli", dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5, dtype=DTYPE), logits=loc), [loc]),
    ]


@pytest.mark.parametrize("index", range(11))
def test_detach_distribution_keeps_values_and_the_path_gradient_only(index):
    name, fn, params = _cases()[index]
    z = fn.rsample()
    detached = detach_distribution(fn, "z")
    assert type(detached) is type(fn), name
    lp, lp_sg = fn.log_prob(z), detach_distribution(fn, "z").log_prob(z)
    torch.testing.assert_close(lp_sg, lp, rtol=1e-12, atol=1e-12)
    # no gradient to the parameters except through z
    z_free = z.detach().requires_grad_(True)
    g_params = torch.autograd.grad(detached.log_prob(z_free).sum(), params, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in g_params), name
    g_z = torch.autograd.grad(detached.log_prob(z_free).sum(), z_free)[0]
    g_z_ref = torch.autograd.grad(fn.log_prob(z_free).sum(), z_free)[0]
    torch.testing.assert_close(g_z, g_z_ref, rtol=1e-10, atol=1e-10)  # the path term is intact
    # the original is untouched
    assert any(t.requires_grad for t in [fn.log_prob(z.detach())])


def test_detach_distribution_refuses_a_flow_and_names_the_site():
    flow = T.Planar(3)
    fn = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0), [flow])
    with pytest.raises(ValueError, match=r"guide site 'z'.*TransformedDistribution.*nn.Module.*reparameterised guide.*Try"):
        detach_distribution(fn, "z")


def test_detach_distribution_refuses_a_distribution_that_hides_its_parameters():
    net = torch.nn.Linear(1, 1)

    class Hidden(dist.TorchDistribution):
        arg_constraints: dict = {}
        has_rsample = True

        def __init__(self):
            super().__init__(torch.Size(), torch.Size())

        def rsample(self, sample_shape=torch.Size()):
            return net.weight.sum() + torch.randn(sample_shape)

        def log_prob(self, value):
            return -0.5 * (value - net.bias.sum()) ** 2

    with pytest.raises(ValueError, match=r"guide site 'q'.*Hidden.*not stored on the instance"):
        detach_distribution(Hidden(), "q")


# -- auxiliary guide sites (audit finding 2) -------------------------------------------------
def _aux_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


_POST_SCALE = torch.tensor(0.2, dtype=DTYPE).sqrt()


def _aux_exact_guide(x):
    # the exact posterior N(x / 1.25, 0.2), drawn as an auxiliary u with a Delta at z
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(x / 1.25, _POST_SCALE), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Delta(u))


def test_auxiliary_guide_sites_enter_the_objectives_as_in_the_seam():
    # log w = log p(x, u) - log q(u) = log p(x) for every particle: the ELBO and
    # IWAE objectives must give sum_i log p(x_i) exactly (the audit measured
    # -7.22 and -6.79 for -5.30: the -log q(u) term was dropped)
    x = torch.tensor([0.3, -1.2, 2.0], dtype=DTYPE)
    exact = dist.Normal(0.0, torch.tensor(1.25, dtype=DTYPE).sqrt()).log_prob(x).sum()
    for objective in (ElboObjective(4), IWAEObjective(4), IWAEObjective(3, alpha=0.5)):
        terms = _seeded(objective, _aux_model, _aux_exact_guide, (x,))
        got = terms.elbo if terms.bound is None else terms.bound
        torch.testing.assert_close(got, exact, atol=1e-12, rtol=0)
        torch.testing.assert_close(terms.loss, -exact, atol=1e-12, rtol=0)
    # the same log-weights as the seam, particle by particle
    s = _seeded(lambda *a: site_log_probs(_aux_model, _aux_exact_guide, x, num_particles=4, max_plate_nesting=1),
                None, None, None)
    iw = _seeded(IWAEObjective(4), _aux_model, _aux_exact_guide, (x,))
    torch.testing.assert_close(iw.bound, (torch.logsumexp(s.log_weight, 0) - math.log(4)).sum())


def _auto_normal_pair():
    """A per-datum model with two local latents (one positive) and Pyro's AutoNormal,
    whose ``*_unconstrained`` sites are auxiliary and whose model sites are Deltas."""
    from pyro.infer.autoguide import AutoNormal

    def model(x):
        with pyro.plate("data", x.shape[0]):
            loc = pyro.sample("loc", dist.Normal(torch.zeros((), dtype=DTYPE), 2.0))
            scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=DTYPE), 0.5))
            pyro.sample("x", dist.Normal(loc, scale), obs=x)

    guide = AutoNormal(model, init_scale=0.3)
    x = _lg_data(5)[:, 0]
    pyro.set_rng_seed(0)
    guide(x)  # create the parameters
    return model, guide, x


@pytest.mark.parametrize("num_particles", [1, 3])
def test_elbo_objective_with_an_autonormal_guide_is_pyros_trace_elbo(num_particles):
    # Same seed, same draws: the loss and every guide gradient equal Pyro's
    # Trace_ELBO (the entropy gradient of the scales was missing before)
    from pyro.infer import Trace_ELBO

    model, guide, x = _auto_normal_pair()
    params = [p for _, p in sorted(guide.named_parameters())]
    ours = _seeded(ElboObjective(num_particles), model, guide, (x,)).loss
    pyro.set_rng_seed(1)
    reference = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                           max_plate_nesting=1).differentiable_loss(model, guide, x)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(_grads(ours, params), _grads(reference, params)):
        torch.testing.assert_close(a, b)
    # IWAE with one particle is that ELBO; with K its log-weights are the seam's
    iw = _seeded(IWAEObjective(1), model, guide, (x,))
    torch.testing.assert_close(iw.loss, reference if num_particles == 1 else iw.loss)
    s = _seeded(lambda *a: site_log_probs(model, guide, x, num_particles=num_particles, max_plate_nesting=1),
                None, None, None)
    assert set(s.auxiliary) == {"loc_unconstrained", "scale_unconstrained"}
    iw = _seeded(IWAEObjective(num_particles), model, guide, (x,))
    torch.testing.assert_close(iw.bound, (torch.logsumexp(s.log_weight, 0) - math.log(num_particles)).sum())


def test_an_unmarked_guide_only_site_is_the_seams_error_in_every_objective():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("zz", dist.Normal(0.0, 1.0))  # misspelt
            pyro.sample("z", dist.Normal(x / 1.25, _POST_SCALE))

    x = torch.tensor([0.3, -1.2, 2.0], dtype=DTYPE)
    message = r"guide sites \['zz'\] do not appear in the model and are not marked auxiliary.*Try"
    for objective in (ElboObjective(), IWAEObjective(2)):
        with pytest.raises(ValueError, match=message):
            objective(_aux_model, guide, (x,), {})
    with pytest.raises(ValueError, match=message):
        site_log_probs(_aux_model, guide, x)


def test_stl_and_dreg_with_auxiliary_sites():
    # (a) a Delta at z whose value is the auxiliary draw u ~ N(loc, 1) is q(z) = N(loc, 1)
    # drawn in two steps: the point mass is not detached (it has no parameter of its own)
    # and the path z <- u is scaled once, at u, so STL and DReG give the one-step guide's
    # gradients on the same draws (they were refused as "hierarchical" before)
    loc = torch.tensor([0.1, -0.4, 0.9], dtype=DTYPE, requires_grad=True)

    def delta_guide(x):
        with pyro.plate("data", 3):
            u = pyro.sample("u", dist.Normal(loc, 1.0), infer={"is_auxiliary": True})
            pyro.sample("z", dist.Delta(u))

    def direct_guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(loc, 1.0))

    x = torch.tensor([0.3, -1.2, 2.0], dtype=DTYPE)
    for objective in (ElboObjective(3, estimator="stl"), IWAEObjective(3, estimator="dreg")):
        two_step = _grads(_seeded(objective, _aux_model, delta_guide, (x,)).loss, [loc])[0]
        one_step = _grads(_seeded(objective, _aux_model, direct_guide, (x,)).loss, [loc])[0]
        torch.testing.assert_close(two_step, one_step)
    # (b) an independent auxiliary u ~ N(0, s^2): its term -E log q(u) = log s + c has
    # gradient 1/s in s. The standard estimator gives it exactly; STL's, with log q
    # detached, is eps^2 / s per particle: mean 1/s, sd sqrt(2)/s. DReG with K = 1 is STL.
    s = torch.full((3,), 0.7, dtype=DTYPE, requires_grad=True)

    def independent_guide(x):
        with pyro.plate("data", 3):
            pyro.sample("u", dist.Normal(0.0, s), infer={"is_auxiliary": True})
            pyro.sample("z", dist.Normal(x / 1.25, _POST_SCALE))

    K = 4000
    standard = _grads(_seeded(ElboObjective(K), _aux_model, independent_guide, (x,)).loss, [s])[0]
    torch.testing.assert_close(standard, -1 / s.detach())
    stl = _grads(_seeded(ElboObjective(K, "stl"), _aux_model, independent_guide, (x,)).loss, [s])[0]
    z = (stl + 1 / s.detach()) / (2**0.5 / s.detach() / K**0.5)
    assert (z.abs() < 4).all(), z
    dreg = _grads(_seeded(IWAEObjective(1, "dreg"), _aux_model, independent_guide, (x,)).loss, [s])[0]
    stl1 = _grads(_seeded(ElboObjective(1, "stl"), _aux_model, independent_guide, (x,)).loss, [s])[0]
    torch.testing.assert_close(dreg, stl1)


# -- a Python bool mask (audit finding 4) -----------------------------------------------------
@pytest.mark.parametrize("flag", [False, True])
def test_a_python_bool_mask_works_in_both_objectives(flag):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.mask(mask=flag):
                pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    x = torch.tensor([0.3, -1.2, 2.0], dtype=DTYPE)
    guide = _plain_guide
    terms = _seeded(ElboObjective(4), model, guide, (x,))
    s = _seeded(lambda *a: site_log_probs(model, guide, x, num_particles=4, max_plate_nesting=1), None, None, None)
    torch.testing.assert_close(terms.elbo, s.log_weight.sum() / 4)
    assert bool(terms.reconstruction == 0) == (not flag)
    iw = _seeded(IWAEObjective(4), model, guide, (x,))
    torch.testing.assert_close(iw.bound, (torch.logsumexp(s.log_weight, 0) - math.log(4)).sum())


def _plain_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 1.25, _POST_SCALE))


@pytest.mark.parametrize("make", [ElboObjective, IWAEObjective])
@pytest.mark.parametrize("bad", [2.0, True, 0, "3"])
def test_objectives_take_integer_particle_counts_only(make, bad):
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        make(num_particles=bad)
    assert make(num_particles=np.int64(3)).num_particles == 3


def _autonormal_at(model, x, loc, scale):
    """Pyro's AutoNormal for ``model``, its per-datum q(u) set to N(loc, scale^2)."""
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    guide = AutoNormal(model)
    guide(x)
    params = dict(guide.named_parameters())
    with torch.no_grad():
        params["locs.z_unconstrained"].copy_(loc)
        params["scales.z_unconstrained"].copy_(biject_to(constraints.softplus_positive).inv(scale))
    return guide, [params["locs.z_unconstrained"], params["scales.z_unconstrained"]]


def test_stl_and_dreg_train_pyros_autonormal_without_bias_and_with_zero_variance_at_the_posterior():
    # z ~ LogNormal(0, 1) is u = log z ~ N(0, 1); x | z ~ N(log z, 0.7^2). AutoNormal draws u
    # and puts a Delta at z = exp(u) whose log_density is the Jacobian's, so the posterior
    # N(x / 1.49, 0.49 / 1.49) of u lies in the guide's family. Before, STL and DReG refused
    # AutoNormal ("hierarchical guide").
    sigma = 0.7

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.LogNormal(torch.zeros((), dtype=DTYPE), 1.0))
            pyro.sample("x", dist.Normal(z.log(), sigma), obs=x)

    x = torch.linspace(-1.0, 2.0, 4, dtype=DTYPE)
    post_loc, post_scale = x / (1 + sigma**2), torch.full_like(x, (sigma**2 / (1 + sigma**2)) ** 0.5)
    # (a) at the exact posterior every log-weight is log p(x): STL's and DReG's gradients are
    # exactly 0 on any draw (the standard estimators' are not)
    for objective in (ElboObjective(4, "stl"), IWAEObjective(4, "dreg")):
        guide, params = _autonormal_at(model, x, post_loc, post_scale)
        for seed in (1, 2):
            grads = _grads(_seeded(objective, model, guide, (x,), seed=seed).loss, params)
            assert max(float(g.abs().max()) for g in grads) < 1e-10, grads
    guide, params = _autonormal_at(model, x, post_loc, post_scale)
    standard = _grads(_seeded(ElboObjective(4), model, guide, (x,)).loss, params)
    assert max(float(g.abs().max()) for g in standard) > 0.1
    # (b) away from it, STL's mean gradient (200 draws of 50 particles) is the closed-form
    # ELBO's gradient, E_q[log N(x; u, s^2) + log N(u; 0, 1) - log q(u)], within 5 standard
    # errors of the draws' mean
    loc, scale = post_loc + 0.5, post_scale * 1.5
    guide, params = _autonormal_at(model, x, loc, scale)
    draws = []
    for seed in range(200):
        grads = _grads(_seeded(ElboObjective(50, "stl"), model, guide, (x,), seed=seed).loss, params)
        draws.append(torch.cat([g.flatten() for g in grads]))
    draws = torch.stack(draws)
    m, raw_s = params[0].detach().clone().requires_grad_(), params[1].detach().clone().requires_grad_()
    s2 = torch.nn.functional.softplus(raw_s) ** 2
    elbo = (-((x - m) ** 2 + s2) / (2 * sigma**2) - (m**2 + s2) / 2 + 0.5 * s2.log()).sum()
    exact = -torch.cat(torch.autograd.grad(elbo, [m, raw_s]))
    z = (draws.mean(0) - exact) / (draws.std(0) / 200**0.5)
    assert (z.abs() < 5).all(), z
