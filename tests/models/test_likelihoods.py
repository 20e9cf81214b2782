"""Observation families: densities, support checks, masking.

Every density is compared with a closed-form formula evaluated in float64 on
the same raw decoder outputs (not with the distribution object the library
builds), so a wrong link function, parametrisation, normaliser or category
layout fails here.

Tolerance for float32 library values against float64 formulas: log-densities
here are O(1)-O(20), float32 has a relative precision of ~6e-8, and a few
transcendental calls each add rounding; ``atol=1e-4, rtol=1e-5`` is about 100x
that error and far below any modelling mistake (a wrong scale or normaliser
moves log-densities by >= 0.01).
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pvae.models import LIKELIHOODS, VAE, SupportError, make_likelihood

ATOL, RTOL = 1e-4, 1e-5
CARDS = [2, 3, 4]
MIN_VALUE = 1e-4  # pvae.models.nets.positive: softplus(raw) + 1e-4


def _softplus_pos(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw.double()) + MIN_VALUE


# -- closed-form references, all in float64 -------------------------------------
def _ref_bernoulli(lik, raw, x):
    # log p = x * l - log(1 + e^l)
    return x * raw - F.softplus(raw)


def _ref_continuous_bernoulli(lik, raw, x):
    # Loaiza-Ganem & Cunningham 2019, eq. 7:
    # log p = x log lam + (1 - x) log(1 - lam) + log C(lam),
    # C(lam) = 2 artanh(1 - 2 lam) / (1 - 2 lam)   (lam != 1/2)
    lam = torch.sigmoid(raw)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    return x * torch.log(lam) + (1 - x) * torch.log1p(-lam) + log_c


def _ref_normal(scale):
    def ref(lik, raw, x):
        s = torch.as_tensor(scale(lik) if callable(scale) else scale, dtype=torch.float64)
        return -0.5 * ((x - raw) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)

    return ref


def _ref_laplace(lik, raw, x):
    b = 0.5
    return -(x - raw).abs() / b - math.log(2 * b)


def _ref_student_t(df, scale):
    def ref(lik, raw, x):
        nu = torch.as_tensor(df(lik) if callable(df) else df, dtype=torch.float64)
        s = torch.as_tensor(scale, dtype=torch.float64)
        y = (x - raw) / s
        return (
            torch.lgamma((nu + 1) / 2)
            - torch.lgamma(nu / 2)
            - 0.5 * torch.log(nu * math.pi)
            - torch.log(s)
            - (nu + 1) / 2 * torch.log1p(y**2 / nu)
        )

    return ref


def _ref_poisson(lik, raw, x):
    rate = _softplus_pos(raw)  # the documented link: softplus(raw) + 1e-4
    return x * torch.log(rate) - rate - torch.lgamma(x + 1)


def _ref_negative_binomial(lik, raw, x):
    # k successes before r failures, success probability sigmoid(l):
    # log p = lgamma(k + r) - lgamma(r) - lgamma(k + 1) + r log(1 - p) + k log p
    r = _softplus_pos(lik.raw_total_count.detach())
    return (
        torch.lgamma(x + r)
        - torch.lgamma(r)
        - torch.lgamma(x + 1)
        + r * F.logsigmoid(-raw)
        + x * F.logsigmoid(raw)
    )


def _ref_nb_mean(mu, r, x):
    # the same density in scVI's (mean, inverse dispersion) form:
    # log NB(x; mu, r) = lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r log(r / (r + mu)) + x log(mu / (r + mu))
    return (
        torch.lgamma(x + r) - torch.lgamma(r) - torch.lgamma(x + 1)
        + r * torch.log(r / (r + mu)) + x * torch.log(mu / (r + mu))
    )


def _ref_negative_binomial_log_mean(lik, raw, x):
    # log-mean parameterisation: r = exp(raw dispersion), as scVI's px_r
    return _ref_nb_mean(raw.exp(), lik.raw_total_count.detach().double().exp(), x)


def _ref_zinb(lik, raw, x):
    # p(0) = pi + (1 - pi) NB(0), p(x) = (1 - pi) NB(x) for x > 0, pi = sigmoid(gate logits)
    log_mean, gate = raw.split(lik.input_dim, dim=-1)
    pi = torch.sigmoid(gate)
    nb = _ref_nb_mean(log_mean.exp(), lik.raw_total_count.detach().double().exp(), x)
    return torch.where(x == 0, torch.log(pi + (1 - pi) * nb.exp()), torch.log1p(-pi) + nb)


def _ref_categorical(lik, raw, x):
    # raw holds sum(CARDS) logits, feature j's block right after feature j-1's
    out, start = [], 0
    for j, card in enumerate(CARDS):
        logp = torch.log_softmax(raw[..., start : start + card], dim=-1)
        out.append(logp.gather(-1, x[..., j : j + 1].long()).squeeze(-1))
        start += card
    return torch.stack(out, dim=-1)


# -- data generators --------------------------------------------------------------
def _binary(shape):
    return torch.randint(0, 2, shape).float()


def _unit(shape):
    x = torch.rand(shape)
    x[..., 0] = 0.0  # both ends of [0, 1] are in the support
    x[..., 1] = 1.0
    return x


def _real(shape):
    return 3 * torch.randn(shape)


def _counts(shape):
    return torch.randint(0, 12, shape).float()


def _categories(shape):
    return torch.stack([torch.randint(0, c, shape[:-1]) for c in CARDS], dim=-1).float()


def _internal(shape):  # 5 atoms: 4 bond lengths, 3 bond angles in [0, pi], 2 dihedrals in [-pi, pi]
    n = shape[:-1]
    return torch.cat([1 + torch.rand(*n, 4), math.pi * torch.rand(*n, 3), math.pi * (2 * torch.rand(*n, 2) - 1)], -1)


D = 4  # features for every family but categorical
FAMILIES = {
    # id: (name, kwargs, input_dim, data generator, reference)
    "bernoulli": ("bernoulli", {}, D, _binary, _ref_bernoulli),
    "continuous_bernoulli": ("continuous_bernoulli", {}, D, _unit, _ref_continuous_bernoulli),
    "normal_fixed": ("normal", {"scale": 0.5}, D, _real, _ref_normal(0.5)),
    # learned scale starts at positive(0) = log 2 + 1e-4
    "normal_learned": ("normal", {}, D, _real, _ref_normal(math.log(2) + MIN_VALUE)),
    "laplace": ("laplace", {"scale": 0.5}, D, _real, _ref_laplace),
    "student_t": ("student_t", {"scale": 0.5, "df": 3.0}, D, _real, _ref_student_t(3.0, 0.5)),
    "poisson": ("poisson", {}, D, _counts, _ref_poisson),
    "negative_binomial": ("negative_binomial", {}, D, _counts, _ref_negative_binomial),
    "negative_binomial_log_mean": ("negative_binomial", {"parameterization": "log_mean"}, D, _counts,
                                   _ref_negative_binomial_log_mean),
    "zinb": ("zero_inflated_negative_binomial", {"parameterization": "log_mean"}, D, _counts, _ref_zinb),
    "categorical": ("categorical", {"cardinalities": CARDS}, len(CARDS), _categories, _ref_categorical),
}


def _raw(lik, batch_shape):
    raw = 1.5 * torch.randn(*batch_shape, lik.output_dim)
    # keep sigmoid(raw) away from 1/2, where ContinuousBernoulli switches to a
    # Taylor expansion of its normaliser (and the closed form is 0/0)
    return torch.where(raw.abs() < 0.05, raw + 0.2, raw)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_log_prob_matches_closed_form(family):
    name, kwargs, input_dim, gen, ref = FAMILIES[family]
    lik = make_likelihood(name, input_dim, **kwargs)
    batch_shape = (2, 5)  # an extra leading (particle) dim must broadcast through
    raw = _raw(lik, batch_shape)
    x = gen((*batch_shape, input_dim))
    lik.check(x.reshape(-1, input_dim))  # valid data pass the support check
    d = lik(raw)
    assert d.batch_shape == torch.Size((*batch_shape, input_dim))
    assert d.event_shape == torch.Size(())
    got = d.log_prob(x)
    want = ref(lik, raw.double(), x.double())
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=RTOL)


def test_zinb_tends_to_the_negative_binomial_as_the_zero_inflation_vanishes():
    """gate logits -> -inf: pi -> 0 and log ZINB -> log NB, at zero and non-zero counts alike;
    the error is O(pi) = O(e^gate)."""
    zinb = make_likelihood("zero_inflated_negative_binomial", D, parameterization="log_mean")
    nb = make_likelihood("negative_binomial", D, parameterization="log_mean")
    log_mean = torch.randn(5, D, dtype=torch.float64)
    x = _counts((5, D)).double()
    x[:, 0] = 0.0
    want = nb.double()(log_mean).log_prob(x)
    for gate, tol in ((-10.0, 1e-4), (-25.0, 1e-10)):
        got = zinb.double()(torch.cat([log_mean, torch.full_like(log_mean, gate)], -1)).log_prob(x)
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
    # and pi -> 1: all mass on zero
    d = zinb.double()(torch.cat([log_mean, torch.full_like(log_mean, 30.0)], -1))
    assert torch.allclose(d.log_prob(torch.zeros(5, D, dtype=torch.float64)), torch.zeros(5, D, dtype=torch.float64),
                          atol=1e-12)


def test_log_mean_negative_binomial_has_the_decoded_mean_and_nb_variance():
    lik = make_likelihood("negative_binomial", D, parameterization="log_mean")
    with torch.no_grad():
        lik.raw_total_count.copy_(torch.tensor([-1.0, 0.0, 1.0, 3.0]))
    mu = torch.tensor([[0.5, 3.0, 20.0, 100.0]])
    d = lik(mu.log())
    r = lik.raw_total_count.detach().exp()
    torch.testing.assert_close(d.mean, mu)
    torch.testing.assert_close(d.variance, mu + mu**2 / r)


def test_gene_batch_dispersion_picks_each_datums_row():
    lik = make_likelihood("negative_binomial", D, parameterization="log_mean", dispersion_groups=3)
    with torch.no_grad():
        lik.raw_total_count.copy_(torch.arange(12.0).reshape(3, D))
    group = torch.tensor([2, 0, 2])
    d = lik(torch.zeros(3, D), group=group)
    torch.testing.assert_close(d.total_count, lik.raw_total_count.detach().exp()[group])
    with pytest.raises(ValueError, match="dispersion groups"):
        lik(torch.zeros(3, D))
    with pytest.raises(ValueError, match="parameterization"):
        make_likelihood("negative_binomial", D, parameterization="mean")


def test_student_t_learned_df_starts_near_4_and_is_used():
    lik = make_likelihood("student_t", D, scale=0.5)
    raw = _raw(lik, (6,))
    x = _real((6, D))
    df = _softplus_pos(lik.raw_df.detach()) - MIN_VALUE + 1.0  # positive(raw, 1.0)
    # documented start: df = 4 (softplus(2.94) + 1 = 3.99)
    assert torch.allclose(df, torch.full((D,), 4.0, dtype=torch.float64), atol=0.02), df
    want = _ref_student_t(lambda _: df, 0.5)(lik, raw.double(), x.double())
    torch.testing.assert_close(lik(raw).log_prob(x).double(), want, atol=ATOL, rtol=RTOL)


def test_categorical_padding_has_no_mass():
    lik = make_likelihood("categorical", len(CARDS), cardinalities=CARDS)
    assert lik.output_dim == sum(CARDS)
    raw = _raw(lik, (7,))
    d = lik(raw)
    probs = d.probs  # (7, 3 features, 4 = max cardinality)
    for j, card in enumerate(CARDS):
        # padded (impossible) categories: probability ~0 (logit -1e9 -> exactly 0 in float32)
        if card < max(CARDS):
            assert probs[:, j, card:].max().item() < 1e-30
        # valid categories: exp(log p) sums to 1 per feature and datum
        valid = torch.stack(
            [d.log_prob(torch.full((7, len(CARDS)), float(c)))[:, j] for c in range(card)], dim=-1
        )
        torch.testing.assert_close(valid.exp().sum(-1), torch.ones(7), atol=1e-5, rtol=0)
    # the point reconstruction is the most probable *valid* category
    point = lik.point(d)
    for j, card in enumerate(CARDS):
        assert (point[:, j] < card).all()


# -- support errors -----------------------------------------------------------------
SUPPORT_CASES = [
    # (name, kwargs, input_dim, a valid row, feature to corrupt, bad value)
    ("bernoulli", {}, 3, [0.0, 1.0, 0.0], 1, 0.5),
    ("continuous_bernoulli", {}, 3, [0.0, 1.0, 0.3], 2, 1.2),
    ("poisson", {}, 3, [0.0, 2.0, 7.0], 0, -1.0),
    ("poisson", {}, 3, [0.0, 2.0, 7.0], 1, 2.5),
    ("negative_binomial", {}, 3, [0.0, 2.0, 7.0], 2, 1.5),
    ("categorical", {"cardinalities": CARDS}, 3, [1.0, 2.0, 3.0], 1, 3.0),  # cardinality 3
    ("normal", {"scale": 0.5}, 3, [0.1, -2.0, 4.0], 0, math.inf),
]


@pytest.mark.parametrize("name,kwargs,input_dim,row,j,bad", SUPPORT_CASES)
def test_off_support_value_raises_support_error(name, kwargs, input_dim, row, j, bad):
    lik = make_likelihood(name, input_dim, **kwargs)
    x = torch.tensor([row, row])
    lik.check(x)  # the valid rows pass
    x[1, j] = bad
    with pytest.raises(SupportError) as info:
        lik.check(x)
    assert isinstance(info.value, ValueError)  # catchable as a plain ValueError
    msg = str(info.value)
    assert repr(name) in msg, msg  # names the likelihood
    assert f"= {bad:g}" in msg, msg  # shows the offending value
    assert "[1, " in msg, msg  # ... and where it is


def test_off_support_value_raises_through_the_vae_model():
    vae = VAE(3, latent_dim=2, hidden_dims=(8,), likelihood="bernoulli")
    x = torch.tensor([[0.0, 1.0, 0.5]])
    with pytest.raises(SupportError, match="bernoulli"):
        poutine.trace(vae.model).get_trace(x)


def test_nan_at_observed_entry_mentions_mask():
    lik = make_likelihood("normal", 3, scale=0.5)
    x = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="mask") as info:
        lik.check(x)
    assert not isinstance(info.value, SupportError)
    # NaN at an entry the mask declares observed is still an error
    with pytest.raises(ValueError, match="mask"):
        lik.check(x, torch.tensor([[True, True, False]]))


@pytest.mark.parametrize("name,kwargs", [("normal", {"scale": 0.5}), ("poisson", {}), ("bernoulli", {})])
def test_nan_at_masked_entry_is_fine(name, kwargs):
    lik = make_likelihood(name, 3, **kwargs)
    x = torch.tensor([[0.0, float("nan"), 1.0], [float("nan"), 1.0, 0.0]])
    mask = ~torch.isnan(x)
    lik.check(x, mask)  # no error
    # masked entries may even be off-support
    x2 = torch.where(mask, x, torch.tensor(-7.5))
    lik.check(x2, mask)


def test_wrong_feature_count_raises_value_error():
    lik = make_likelihood("bernoulli", 4)
    with pytest.raises(ValueError, match="4 features") as info:
        lik.check(torch.zeros(2, 3))
    assert not isinstance(info.value, SupportError)


@pytest.mark.parametrize(
    "mask",
    [torch.ones(2, 3), torch.ones(2, 3, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.long)],
    ids=["float", "uint8", "long"],
)
def test_non_bool_mask_raises_type_error(mask):
    lik = make_likelihood("bernoulli", 3)
    with pytest.raises(TypeError, match="bool"):
        lik.check(torch.zeros(2, 3), mask)


def test_mask_of_wrong_shape_raises_value_error():
    lik = make_likelihood("bernoulli", 3)
    with pytest.raises(ValueError, match="shape"):
        lik.check(torch.zeros(2, 3), torch.ones(3, 3, dtype=torch.bool))


def test_unknown_likelihood_lists_names():
    with pytest.raises(ValueError) as info:
        make_likelihood("gaussian", 3)
    msg = str(info.value)
    assert "'gaussian'" in msg
    for name in LIKELIHOODS:
        assert name in msg, (name, msg)


@pytest.mark.parametrize("cards", [None, [2, 3], [2, 1, 3]], ids=["missing", "too_few", "card_1"])
def test_categorical_needs_cardinalities(cards):
    kwargs = {} if cards is None else {"cardinalities": cards}
    with pytest.raises(ValueError, match="cardinalities"):
        make_likelihood("categorical", 3, **kwargs)


# -- masked likelihood inside the VAE program -----------------------------------------
def _hand_masked_log_lik(family, lik, raw, x, mask):
    """sum over observed entries only, with torch.distributions on the observed
    sub-vector of each row (so masked entries never enter the computation)."""
    td = torch.distributions
    out = []
    for b in range(x.shape[0]):
        obs = mask[b]
        xo = x[b][obs].double()
        r = raw[b].double()
        if family == "bernoulli":
            lp = td.Bernoulli(logits=r[obs]).log_prob(xo)
        elif family == "normal":
            scale = _softplus_pos(lik.raw_scale.detach())[obs]
            lp = td.Normal(r[obs], scale).log_prob(xo)
        elif family == "poisson":
            lp = td.Poisson(_softplus_pos(r[obs])).log_prob(xo)
        elif family == "categorical":
            blocks = torch.split(r, CARDS)
            lp = torch.stack(
                [
                    td.Categorical(logits=blocks[j]).log_prob(x[b, j].long())
                    for j in range(len(CARDS))
                    if obs[j]
                ]
            ) if obs.any() else torch.zeros(0, dtype=torch.float64)
        out.append(lp.sum())
    return torch.stack(out)


MASK_FAMILIES = {
    "bernoulli": ({}, 5, _binary),
    "normal": ({}, 5, _real),  # learned scale: it must also be masked correctly
    "poisson": ({}, 5, _counts),
    "categorical": ({"cardinalities": CARDS}, 3, _categories),
}


@pytest.mark.parametrize("family", sorted(MASK_FAMILIES))
def test_masked_log_likelihood_sums_observed_entries_only(family):
    kwargs, d, gen = MASK_FAMILIES[family]
    vae = VAE(d, latent_dim=2, hidden_dims=(8,), likelihood=family, likelihood_kwargs=kwargs)
    n = 6
    x = gen((n, d))
    mask = torch.rand(n, d) < 0.6
    mask[0] = True  # a fully observed row
    mask[1] = False  # a fully missing row: contributes exactly 0
    x = torch.where(mask, x, torch.tensor(float("nan")))
    z = torch.randn(n, 2)
    tr = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x, mask)
    tr.compute_log_prob()
    got = tr.nodes["x"]["log_prob"]  # per datum, event dim summed
    assert got.shape == (n,)
    want = _hand_masked_log_lik(family, vae.likelihood, vae.decoder(z).detach(), x, mask)
    torch.testing.assert_close(got.detach().double(), want, atol=ATOL, rtol=RTOL)
    assert got[1].item() == 0.0


# families whose fill value matters for the gradients: a filler outside the support (a bond
# length of 0 for a log-normal) gives log 0 = -inf under the mask, and NaN gradients
MASK_GRADIENT_FAMILIES = {**MASK_FAMILIES, "internal_coordinates": ({}, 9, _internal)}


@pytest.mark.parametrize("family", sorted(MASK_GRADIENT_FAMILIES))
def test_nan_at_masked_entries_gives_finite_loss_and_gradients(family):
    kwargs, d, gen = MASK_GRADIENT_FAMILIES[family]
    vae = VAE(d, latent_dim=2, hidden_dims=(8,), likelihood=family, likelihood_kwargs=kwargs)
    x = gen((8, d))
    mask = torch.rand(8, d) < 0.5
    x = torch.where(mask, x, torch.tensor(float("nan")))
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, mask)
    assert torch.isfinite(loss), loss
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the masked values do not matter at all: any other filler gives the same loss
    pyro.set_rng_seed(3)
    a = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, mask)
    pyro.set_rng_seed(3)
    x_other = torch.where(mask, x, torch.tensor(1.0))
    b = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x_other, mask)
    assert a.item() == b.item()


@pytest.mark.parametrize("family", sorted(LIKELIHOODS))
def test_every_family_fills_missing_entries_inside_its_support(family):
    kwargs = {"cardinalities": CARDS} if family == "categorical" else {}
    d = {"categorical": len(CARDS), "internal_coordinates": 9}.get(family, 6)
    lik = make_likelihood(family, d, **kwargs)
    assert lik._in_support(torch.full((2, d), lik.fill_value)).all()
