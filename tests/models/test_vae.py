"""The VAE program: shapes, beta, parameter ownership, save/load."""

from __future__ import annotations

import io

import pyro
import pytest
import torch
from pyro import poutine

from pvae.models import VAE, Program

CARDS = [2, 3, 4]
SHAPE_CASES = {
    # likelihood: (input_dim, likelihood_kwargs, data)
    "bernoulli": (6, {}, lambda n: torch.randint(0, 2, (n, 6)).float()),
    "normal": (6, {}, lambda n: torch.randn(n, 6)),
    "poisson": (6, {}, lambda n: torch.randint(0, 5, (n, 6)).float()),
    "categorical": (3, {"cardinalities": CARDS}, lambda n: torch.stack(
        [torch.randint(0, c, (n,)) for c in CARDS], -1).float()),
}


def _small_vae(input_dim=6, **kw):
    kw.setdefault("latent_dim", 3)
    kw.setdefault("hidden_dims", (16,))
    return VAE(input_dim, **kw)


@pytest.mark.parametrize("likelihood", sorted(SHAPE_CASES))
def test_shapes(likelihood):
    d, lkw, data = SHAPE_CASES[likelihood]
    vae = _small_vae(d, likelihood=likelihood, likelihood_kwargs=lkw)
    assert isinstance(vae, Program)
    x = data(5)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 3)
    assert (scale > 0).all()
    px = vae.decode(loc)
    assert px.batch_shape == (5,) and px.event_shape == (d,)
    # particles in front of the batch broadcast through the decoder
    assert vae.decode(torch.randn(4, 5, 3)).batch_shape == (4, 5)
    s = vae.sample(7)
    assert s.shape == (7, d)
    assert vae.likelihood.check(s) is None  # samples lie in the support
    assert vae.sample(7, mean=True).shape == (7, d)
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    # model and guide run, with sites z (latent, 5 x latent_dim) and x (observed)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (5, 3)
    assert model_tr.nodes["x"]["is_observed"]
    assert torch.equal(model_tr.nodes["z"]["value"], guide_tr.nodes["z"]["value"])


def test_bernoulli_mean_sample_is_a_probability_and_sample_is_binary():
    vae = _small_vae()
    m = vae.sample(50, mean=True)
    assert ((m > 0) & (m < 1)).all()
    s = vae.sample(50)
    assert ((s == 0) | (s == 1)).all()


@pytest.mark.parametrize("beta", [2.0, 0.25])
def test_beta_scales_latent_sites_only(beta):
    vae = _small_vae(beta=beta)
    x = torch.randint(0, 2, (4, 6)).float()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["scale"] == beta
    assert model_tr.nodes["z"]["scale"] == beta
    assert model_tr.nodes["x"]["scale"] == 1.0
    # and the ELBO Pyro computes from them is rec - beta * KL
    pyro.set_rng_seed(1)
    loss_beta = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()
    vae.beta = 1.0
    pyro.set_rng_seed(1)
    tr_q = poutine.trace(vae.guide).get_trace(x)
    tr_p = poutine.trace(poutine.replay(vae.model, trace=tr_q)).get_trace(x)
    rec = tr_p.nodes["x"]["fn"].log_prob(tr_p.nodes["x"]["value"]).sum()
    kl = (tr_q.nodes["z"]["fn"].log_prob(tr_q.nodes["z"]["value"])
          - tr_p.nodes["z"]["fn"].log_prob(tr_p.nodes["z"]["value"])).sum()
    # same seed -> same z; float32 sums of ~30 terms: 1e-4 relative
    assert loss_beta == pytest.approx(-(rec - beta * kl).item(), rel=1e-4, abs=1e-4)


def test_negative_beta_rejected():
    with pytest.raises(ValueError, match="beta"):
        _small_vae(beta=-1.0)


def test_two_vaes_share_no_parameters_and_leave_the_param_store_empty():
    a, b = _small_vae(), _small_vae()
    x = torch.randint(0, 2, (4, 6)).float()
    for vae in (a, b):
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
    ptrs_a = {p.data_ptr() for p in a.parameters()}
    ptrs_b = {p.data_ptr() for p in b.parameters()}
    assert ptrs_a and ptrs_b and not (ptrs_a & ptrs_b)
    assert len(list(pyro.get_param_store().keys())) == 0, list(pyro.get_param_store().keys())
    # a gradient step on one leaves the other untouched
    before = [p.detach().clone() for p in b.parameters()]
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before))
    # and the change to a is seen by a's program (its parameters are live)
    loc_a, _ = a.encode(x)
    loc_b, _ = b.encode(x)
    assert not torch.allclose(loc_a, loc_b)


def test_state_dict_round_trip_reproduces_encode():
    a = _small_vae(likelihood="normal")
    with torch.no_grad():  # make the learned scale non-default, so it must travel too
        a.likelihood.raw_scale.uniform_(-1, 1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _small_vae(likelihood="normal")  # different random init
    x = torch.randn(5, 6)
    assert not torch.equal(a.encode(x)[0], b.encode(x)[0])
    b.load_state_dict(torch.load(buf, weights_only=True))
    for ta, tb in zip(a.encode(x), b.encode(x)):
        assert torch.equal(ta, tb)
    z = torch.randn(5, 3)
    assert torch.equal(a.decode(z).base_dist.scale, b.decode(z).base_dist.scale)


@pytest.mark.parametrize(
    "likelihood,kwargs,attrs",
    [
        ("normal", {}, ["raw_scale"]),
        ("laplace", {}, ["raw_scale"]),
        ("student_t", {}, ["raw_scale", "raw_df"]),
        ("negative_binomial", {}, ["raw_total_count"]),
    ],
)
def test_learned_likelihood_parameters_belong_to_the_vae(likelihood, kwargs, attrs):
    vae = _small_vae(likelihood=likelihood, likelihood_kwargs=kwargs)
    ids = {id(p) for p in vae.parameters()}
    for attr in attrs:
        assert id(getattr(vae.likelihood, attr)) in ids, attr
    # and they receive gradients from the ELBO
    x = torch.randint(0, 4, (5, 6)).float()
    pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    for attr in attrs:
        g = getattr(vae.likelihood, attr).grad
        assert g is not None and g.abs().sum() > 0, attr


def test_fixed_scale_adds_no_parameter():
    learned = _small_vae(likelihood="normal")
    fixed = _small_vae(likelihood="normal", likelihood_kwargs={"scale": 0.5})
    n_learned = sum(p.numel() for p in learned.parameters())
    n_fixed = sum(p.numel() for p in fixed.parameters())
    assert n_learned - n_fixed == 6  # one scale per feature


@pytest.mark.parametrize("kw", [{"input_dim": 0}, {"latent_dim": 0}, {"input_dim": 2.5}])
def test_bad_dimensions_rejected(kw):
    args = {"input_dim": 6, "latent_dim": 3, **kw}
    with pytest.raises(ValueError, match=next(iter(kw))):
        VAE(args.pop("input_dim"), **args)


@pytest.mark.parametrize("beta", [0, 0.0, -0.5, float("inf"), float("nan")])
def test_beta_zero_or_non_finite_is_refused_at_construction_and_assignment(beta):
    # Pyro's poutine.scale refuses a scale of 0 with a bare "Expected scale > 0" at the
    # first use; the constructors must refuse it at once and say what beta is
    from pvae.models import CountVAE, LinearVAE, SemiSupervisedVAE, SequentialVAE

    builders = [lambda b: _small_vae(beta=b), lambda b: SequentialVAE(3, beta=b),
                lambda b: CountVAE(5, beta=b), lambda b: SemiSupervisedVAE(5, num_classes=2, beta=b),
                lambda b: LinearVAE(5, beta=b)]
    for build in builders:
        with pytest.raises(ValueError, match=r"beta \(the weight of the KL term\) must be a finite number > 0"):
            build(beta)
        model = build(0.5)
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            model.beta = beta
        assert model.beta == 0.5
