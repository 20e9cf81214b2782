"""Model-specific checks of the semi-supervised, relaxed-categorical and sequential VAEs.

The generic checks (sites, bounds, one fit epoch, shapes, save / load) run for
every registered model in ``test_zoo.py``; here: exact enumeration and the
classifier of the SSVAE, the temperature schedule, straight-through samples
and the closed-form KL of the relaxed VAE, masks of ragged sequences and the
recovery of latent dynamics from spikes by the deep Markov model.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import pvae
from pvae.data import load_digits, spike_trains
from pvae.infer import ElboObjective, EnumElboObjective, make_objective
from pvae.models import (
    GumbelSoftmaxCategorical,
    RelaxedCategoricalVAE,
    SemiSupervisedVAE,
    SequentialVAE,
    categorical_kl,
    list_models,
)
from pvae.models.nets import mlp


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def test_the_three_programs_are_registered():
    assert {"ssvae", "relaxed_vae", "sequential_vae"} <= set(list_models())


# -- SemiSupervisedVAE and the enumerated objective ----------------------------------------------
def _tiny_ssvae(**kwargs) -> SemiSupervisedVAE:
    return SemiSupervisedVAE(5, num_classes=10, latent_dim=2, hidden_dims=(8,), likelihood="normal", **kwargs)


def _hand_elbo(ssvae: SemiSupervisedVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The M2 ELBO summed over the batch, written out: labelled data use their
    label, unlabelled ones the q(y|x)-weighted sum over all 10 classes plus the
    entropy. z is drawn for every (class, datum) pair as TraceEnum_ELBO does
    (one Normal over a (10, batch, latent) tensor), so under the same seed the
    draws are the same."""
    classes = ssvae.num_classes
    onehot = F.one_hot(torch.arange(classes), classes).float()[:, None, :].expand(classes, len(x), classes)
    h = ssvae.encoder_body(torch.cat([x.expand(classes, *x.shape), onehot], -1))
    loc, scale = ssvae.encoder_head(h)
    z = dist.Normal(loc, scale).rsample()
    px = ssvae.likelihood(ssvae.decoder(torch.cat([z, onehot], -1)))
    term = (px.log_prob(x).sum(-1) - math.log(classes)  # log p(x|y,z) + log p(y)
            + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - dist.Normal(loc, scale).log_prob(z).sum(-1))
    log_q = torch.log_softmax(ssvae.classifier(x), -1).T  # (classes, batch)
    total = x.new_zeros(())
    for i in range(len(x)):
        if y[i] >= 0:
            total = total + term[y[i], i]
        else:
            total = total + (log_q[:, i].exp() * (term[:, i] - log_q[:, i])).sum()
    return total


def _hand_kl_z(ssvae: SemiSupervisedVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The z part of the M2 KL, summed over the batch: log q(z|x,y) - log p(z) at the label
    for labelled data, its q(y|x)-weighted sum over the 10 classes for unlabelled ones; z
    drawn as in :func:`_hand_elbo` (the same draws under the same seed)."""
    classes = ssvae.num_classes
    onehot = F.one_hot(torch.arange(classes), classes).float()[:, None, :].expand(classes, len(x), classes)
    loc, scale = ssvae.encoder_head(ssvae.encoder_body(torch.cat([x.expand(classes, *x.shape), onehot], -1)))
    z = dist.Normal(loc, scale).rsample()
    kl = dist.Normal(loc, scale).log_prob(z).sum(-1) - dist.Normal(0.0, 1.0).log_prob(z).sum(-1)  # (classes, batch)
    q = torch.softmax(ssvae.classifier(x), -1).T
    return sum(kl[y[i], i] if y[i] >= 0 else (q[:, i] * kl[:, i]).sum() for i in range(len(x)))


def test_enumeration_is_exact_sum_over_the_ten_labels():
    ssvae = _tiny_ssvae(alpha=0.0)
    x = torch.randn(6, 5)
    y = torch.tensor([3, -1, 7, -1, -1, 0])
    pyro.set_rng_seed(1)
    terms = EnumElboObjective(max_plate_nesting=1)(ssvae.model, ssvae.guide, (x, y), {})
    pyro.set_rng_seed(1)
    pyro_loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(ssvae.model, ssvae.guide, x, y)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        by_hand = _hand_elbo(ssvae, x, y)
    assert _f(terms.loss) == pytest.approx(-float(by_hand), rel=1e-5)
    assert _f(terms.loss) == pytest.approx(_f(pyro_loss), rel=1e-5)
    # the split of the history: reconstruction - kl is the ELBO
    assert _f(terms.reconstruction - terms.kl) == pytest.approx(-_f(terms.loss), rel=1e-5)
    assert terms.bound is None and _f(terms.kl) > 0


def test_enum_objective_adds_the_classifier_loss_and_honours_kl_weight_and_beta():
    ssvae = _tiny_ssvae(alpha=2.5)
    x, y = torch.randn(6, 5), torch.tensor([3, -1, 7, -1, -1, 0])
    objective = make_objective("enum_elbo")
    assert isinstance(objective, EnumElboObjective)
    pyro.set_rng_seed(2)
    terms = objective(ssvae.model, ssvae.guide, (x, y), {})
    known = y >= 0
    aux = 2.5 * F.cross_entropy(ssvae.classifier(x[known]), y[known], reduction="sum")
    assert _f(ssvae.auxiliary_loss(x, y)) == pytest.approx(_f(aux), rel=1e-6)
    assert _f(terms.loss - aux) == pytest.approx(-_f(terms.elbo), rel=1e-5)
    # "auto" finds the program's auxiliary_loss; None leaves it out
    pyro.set_rng_seed(2)
    plain = EnumElboObjective(auxiliary=None)(ssvae.model, ssvae.guide, (x, y), {})
    assert _f(plain.loss) == pytest.approx(-_f(plain.elbo), rel=1e-5)
    # KL warm-up weighs the latent terms of the loss only
    pyro.set_rng_seed(2)
    warm = EnumElboObjective(auxiliary=None)(ssvae.model, ssvae.guide, (x, y), {}, kl_weight=0.25)
    assert _f(warm.loss) == pytest.approx(-_f(warm.reconstruction - 0.25 * warm.kl), rel=1e-5)
    # beta scales the loss's KL of z, while the reported terms stay at beta = 1
    beta = SemiSupervisedVAE(5, num_classes=10, latent_dim=2, hidden_dims=(8,), likelihood="normal", beta=4.0)
    beta.load_state_dict(ssvae.state_dict())
    pyro.set_rng_seed(2)
    scaled = EnumElboObjective(auxiliary=None)(beta.model, beta.guide, (x, y), {})
    assert torch.allclose(scaled.reconstruction, plain.reconstruction) and torch.allclose(scaled.kl, plain.kl)
    assert _f(scaled.loss) > _f(plain.loss)
    # exactly: the loss rises by (beta - 1) x the KL of z, by hand under the same seed (same z
    # draws); the label's KL (log q(y|x) - log p(y)) is not scaled: scaling it too would add
    # 3 x log 10 = 6.9 for each of the 3 labelled rows alone. The losses are float32 of ~|60|,
    # so their difference carries ~1e-5 of rounding: abs 1e-3 leaves room and catches that
    pyro.set_rng_seed(2)
    with torch.no_grad():
        kl_z = float(_hand_kl_z(ssvae, x, y))
    assert _f(scaled.loss - plain.loss) == pytest.approx(3.0 * kl_z, rel=1e-4, abs=1e-3)
    with pytest.raises(ValueError, match="auxiliary must be"):
        EnumElboObjective(auxiliary="yes")
    with pytest.raises(ValueError, match="takes the options"):
        make_objective("enum_elbo", alpha=0.5)


def test_enum_objective_with_model_side_enumeration_gives_the_exact_marginal_likelihood():
    weights, means = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0])
    shift = torch.nn.Parameter(torch.zeros(()))

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(means[c] + shift, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([-1.5, 0.3, 2.0, 4.0])
    terms = EnumElboObjective(max_plate_nesting=1)(model, guide, (x,), {})
    exact = torch.logsumexp(weights.log() + dist.Normal(means, 1.0).log_prob(x[:, None]), -1).sum()
    assert _f(terms.loss) == pytest.approx(-float(exact), rel=1e-6)
    assert math.isnan(_f(terms.reconstruction)) and math.isnan(_f(terms.kl))  # no split exists
    assert _f(terms.bound) == pytest.approx(float(exact), rel=1e-6)
    with pytest.raises(ValueError, match="kl_warmup"):
        EnumElboObjective(max_plate_nesting=1)(model, guide, (x,), {}, kl_weight=0.5)


def test_ssvae_predict_shapes_point_mass_labels_and_validation():
    ssvae = _tiny_ssvae()
    x = torch.randn(7, 5)
    assert ssvae.predict(x).shape == (7,) and ssvae.predict(x).dtype == torch.int64
    probs = ssvae.predict_proba(x)
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(-1), torch.ones(7))
    assert torch.equal(ssvae.predict(x), probs.argmax(-1))
    # a known label is a point mass of the guide: every draw is that label
    y = torch.tensor([4, -1, 4, 9, -1, 0, 1])
    draws = torch.stack([poutine.trace(ssvae.guide).get_trace(x, y).nodes["y"]["value"] for _ in range(20)])
    known = y >= 0
    assert (draws[:, known] == y[known]).all()
    assert ssvae.sample(3, y=2).shape == (3, 5) and ssvae.reconstruct(x, y).shape == (7, 5)
    with pytest.raises(ValueError, match=r"labels y must lie in 0..9, or be -1"):
        ssvae.validate(x, torch.tensor([0, 1, 2, 3, 4, 5, 10]))
    with pytest.raises(TypeError, match="integer tensor of labels"):
        ssvae.validate(x, torch.zeros(7))
    assert SemiSupervisedVAE.kingma_alpha(1000, 100) == pytest.approx(1.0)


def test_ssvae_helpers_refuse_labels_outside_the_classes():
    # one_hot gives an all-zero row outside 0..C-1: the helpers must not feed that to the
    # decoder as if it were a class (audit 3, finding 6)
    ssvae = _tiny_ssvae()  # 10 classes
    x, z = torch.randn(4, 5), torch.randn(4, ssvae.latent_dim)
    with pytest.raises(ValueError, match=r"classes y must lie in 0..9 \(num_classes=10\); got values in 12..12"):
        ssvae.sample(2, y=12)
    with pytest.raises(ValueError, match=r"-1 \(unknown\) is not a class here: pass y=None"):
        ssvae.sample(2, y=-1)
    with pytest.raises(ValueError, match=r"classes y must lie in 0..9"):
        ssvae.sample(3, y=torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match=r"one class or \(3,\) classes"):
        ssvae.sample(3, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"classes y must lie in 0..9.*-1 \(unknown\) is not a class"):
        ssvae.decode(z, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"classes y must lie in 0..9"):
        ssvae.decode(z, 10)
    with pytest.raises(ValueError, match=r"labels y must lie in 0..9, or -1 for unknown"):
        ssvae.reconstruct(x, torch.tensor([5, 5, 5, 10]))
    with pytest.raises(ValueError, match=r"labels y must lie in 0..9, or -1 for unknown.*-2..0"):
        ssvae.encode(x, torch.tensor([-2, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ssvae.encode(x, torch.tensor([0, 1]))
    for bad in (torch.tensor([0.5, 1.0, 2.0, -1.0]), torch.tensor([True, False, True, False])):
        with pytest.raises(TypeError, match="integer class labels"):
            ssvae.encode(x, bad)
    # the documented meanings still hold: y=None draws the class from the prior, -1 in
    # encode / reconstruct is the classifier's prediction, ints and tensors are classes
    assert ssvae.sample(3).shape == (3, 5) and ssvae.sample(3, y=9).shape == (3, 5)
    assert ssvae.sample(3, y=torch.tensor([0, 4, 9])).shape == (3, 5)
    predicted = ssvae.predict(x)
    assert torch.equal(ssvae.encode(x, torch.full((4,), -1))[0], ssvae.encode(x, predicted)[0])
    assert torch.equal(ssvae.reconstruct(x, torch.full((4,), -1)), ssvae.reconstruct(x, predicted))
    assert ssvae.decode(z, 3).batch_shape == (4,)


def _digit_split(fraction: float, seed: int = 0):
    """Stratified: a held-out test third, and ``fraction`` of each class of the
    rest labelled (the other labels set to -1)."""
    digits = load_digits(binarize=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(digits.x), generator=g)
    test, train = order[:600], order[600:]
    y = digits.y[train]
    labelled = torch.zeros(len(train), dtype=torch.bool)
    for c in range(10):
        idx = (y == c).nonzero().squeeze(-1)
        labelled[idx[torch.randperm(len(idx), generator=g)[: max(1, round(fraction * len(idx)))]]] = True
    return digits.x[train], torch.where(labelled, y, -1), digits.x[test], digits.y[test]


def _supervised_accuracy(x, y, x_test, y_test, hidden, epochs=600) -> float:
    """The SSVAE's classifier architecture, trained on the labelled data alone."""
    known = y >= 0
    clf = mlp(x.shape[1], hidden, 10)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(clf(x[known]), y[known]).backward()
        opt.step()
    with torch.no_grad():
        return float((clf(x_test).argmax(-1) == y_test).float().mean())


@pytest.mark.slow
def test_ssvae_classifier_beats_the_supervised_classifier_on_digits_with_10pct_labels():
    x, y, x_test, y_test = _digit_split(0.1)
    hidden = (256,)
    alpha = 50 * SemiSupervisedVAE.kingma_alpha(len(x), int((y >= 0).sum()))  # as in the benchmark
    ssvae = SemiSupervisedVAE(64, num_classes=10, latent_dim=10, hidden_dims=hidden, alpha=alpha)
    pvae.fit(ssvae, (x, y), objective=EnumElboObjective(), num_epochs=150, batch_size=128,
             learning_rate=1e-3, seed=0, progress=False, diagnostics_every=None)
    accuracy = float((ssvae.predict(x_test) == y_test).float().mean())
    supervised = _supervised_accuracy(x, y, x_test, y_test, hidden)
    # measured (seed 0): see benchmarks/ssvae_digits.py for several seeds
    print(f"SSVAE {accuracy:.3f}, supervised {supervised:.3f}")
    assert accuracy > supervised + 0.02, (accuracy, supervised)


def test_ssvae_unlabelled_data_train_the_classifier_fast():
    """Smoke version: a few epochs on digits with 10% of the labels reach well above
    chance, and the enumerated objective's history is finite."""
    x, y, x_test, y_test = _digit_split(0.1)
    ssvae = SemiSupervisedVAE(64, num_classes=10, latent_dim=4, hidden_dims=(64,), alpha=10.0)
    result = pvae.fit(ssvae, (x[:600], y[:600]), objective="enum_elbo", num_epochs=5, batch_size=100,
                      learning_rate=3e-3, seed=0, progress=False, diagnostics_every=None)
    assert all(math.isfinite(h[k]) for h in result.history for k in ("loss", "elbo", "reconstruction", "kl"))
    accuracy = float((ssvae.predict(x_test) == y_test).float().mean())
    print(f"accuracy after 5 epochs {accuracy:.3f}")
    assert accuracy > 0.4, accuracy  # chance is 0.1


# -- RelaxedCategoricalVAE ----------------------------------------------------------------------
def test_temperature_anneals_through_fit_with_a_floor():
    x = torch.randint(0, 2, (40, 6)).float()
    relaxed = RelaxedCategoricalVAE(6, num_categorical=2, num_categories=3, hidden_dims=(8,),
                                    temperature=2.0, min_temperature=0.5, anneal_rate=0.5)
    assert relaxed.temperature == 2.0
    seen: list[float] = []
    result = pvae.fit(relaxed, x, num_epochs=6, batch_size=10, progress=False,
                      callback=lambda row: seen.append(relaxed.temperature))
    steps = 4  # 40 data in batches of 10
    expected = [max(0.5, 2.0 * math.exp(-0.5 * (e + (steps - 1) / steps))) for e in range(6)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] < 2.0 and seen[-1] == 0.5 and seen[2] > 0.5  # annealed, then held at the floor
    assert len(result.history) == 6
    assert relaxed.temperature_at(0.0) == 2.0 and relaxed.temperature_at(1e6) == 0.5
    with pytest.raises(ValueError, match="must not exceed the initial temperature"):
        RelaxedCategoricalVAE(6, temperature=0.5, min_temperature=1.0)


def test_gumbel_softmax_samples_straight_through_one_hot_with_gradients():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, -3.0]], requires_grad=True)
    probs = torch.softmax(logits, -1).detach()
    soft = GumbelSoftmaxCategorical(0.7, logits=logits).rsample((5,))
    assert torch.allclose(soft.sum(-1), torch.ones(5, 2)) and ((soft > 0) & (soft < 1)).all()
    hard_dist = GumbelSoftmaxCategorical(0.7, logits=logits, straight_through=True)
    hard = hard_dist.rsample((20000,))
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()  # exactly one-hot values
    weights = torch.randn(4)
    (hard * weights).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the forward values are exact categorical draws (the Gumbel-max trick): 4 standard errors
    freq = hard.detach().mean(0)
    se = (probs * (1 - probs) / 20000).sqrt()
    assert ((freq - probs).abs() < 4 * se + 1e-4).all(), (freq, probs)
    # expand (used by plates) keeps the temperature and the straight-through flag
    expanded = hard_dist.expand((3, 2))
    assert expanded.temperature == 0.7 and expanded.straight_through and expanded.batch_shape == (3, 2)


@pytest.mark.parametrize("straight_through", [False, True])
def test_relaxed_kl_is_the_closed_form_categorical_kl(straight_through):
    relaxed = RelaxedCategoricalVAE(6, num_categorical=3, num_categories=4, hidden_dims=(8,),
                                    straight_through=straight_through)
    x = torch.randint(0, 2, (5, 6)).float()
    logits = relaxed.encode(x)
    probs = torch.softmax(logits, -1)
    closed_form = (probs * (probs.log() + math.log(4))).sum((-2, -1))
    assert torch.allclose(categorical_kl(logits), closed_form, atol=1e-6)
    # training mode: log q - log p of the latent site is the closed form for every sample
    guide_tr = poutine.trace(relaxed.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(relaxed.model, trace=guide_tr)).get_trace(x)
    q, p = guide_tr.nodes["z"], model_tr.nodes["z"]
    assert torch.allclose(q["fn"].log_prob(q["value"]) - p["fn"].log_prob(q["value"]), closed_form, atol=1e-5)
    assert not torch.equal(q["value"], q["value"].round()) or straight_through  # relaxed unless ST
    # elbo_terms reads the same KL, analytically, in training and in eval mode
    for train in (True, False):
        relaxed.train(train)
        terms = pvae.infer.elbo_terms(relaxed.model, relaxed.guide, x, num_particles=4)
        assert terms.kl_method == "analytic"
        assert torch.allclose(terms.kl, closed_form.detach(), atol=1e-5), (train, terms.kl, closed_form)
    # eval mode is the discrete model: exact one-hot codes
    codes = poutine.trace(relaxed.guide).get_trace(x).nodes["z"]["value"]
    assert ((codes == 0) | (codes == 1)).all() and (codes.sum(-1) == 1).all()


# -- SequentialVAE ------------------------------------------------------------------------------
def _dmm(**kwargs) -> SequentialVAE:
    return SequentialVAE(3, latent_dim=2, transition_dim=8, rnn_dim=8, emitter_hidden_dims=(8,),
                         likelihood="poisson", **kwargs)


def test_padded_steps_change_nothing():
    dmm = _dmm()
    x = torch.poisson(torch.full((4, 6, 3), 2.0))
    lengths = torch.tensor([6, 3, 5, 1])
    mask = torch.arange(6) < lengths[:, None]
    other = x.clone()
    other[~mask] = torch.where(torch.rand_like(other[~mask]) < 0.5, 17.0, float("nan"))
    objective = ElboObjective()
    losses = []
    for data, m in ((x, lengths), (other, lengths), (other, mask)):
        pyro.set_rng_seed(3)
        losses.append(_f(objective(dmm.model, dmm.guide, (data, m), {}).loss))
    assert losses[0] == losses[1] == losses[2], losses
    # and an observed step does count
    changed = x.clone()
    changed[1, 2] += 5
    pyro.set_rng_seed(3)
    assert _f(objective(dmm.model, dmm.guide, (changed, lengths), {}).loss) != losses[0]
    # per-datum bounds ignore padding too, and padded latents are masked out of the KL
    pyro.set_rng_seed(4)
    a = pvae.infer.elbo_terms(dmm.model, dmm.guide, x, lengths, num_particles=3)
    pyro.set_rng_seed(4)
    b = pvae.infer.elbo_terms(dmm.model, dmm.guide, other, lengths, num_particles=3)
    assert torch.equal(a.elbo, b.elbo)
    assert (a.kl_per_dim.reshape(4, 6, 2)[~mask] == 0).all()
    # the backward RNN starts at each sequence's own end: a padded sequence is
    # inferred exactly as the same sequence alone
    loc, scale = dmm.encode(other, lengths)
    alone_loc, alone_scale = dmm.encode(x[1:2, :3])
    assert torch.allclose(loc[1, :3], alone_loc[0], atol=1e-6) and torch.allclose(scale[1, :3], alone_scale[0])
    with pytest.raises(ValueError, match="prefix"):
        dmm.validate(x, torch.tensor([[True, False, True, False, False, False]] * 4))
    with pytest.raises(ValueError, match=r"values in 1..6"):
        dmm.validate(x, torch.tensor([6, 0, 2, 2]))
    with pytest.raises(ValueError, match=r"shape \(batch, T, 3\)"):
        dmm.validate(x[0])


def test_spike_trains_have_the_stated_statistics():
    data = spike_trains(300, 80, 20, latent_dim=3, seed=0)
    assert data.counts.shape == (300, 80, 20) and data.latents.shape == (300, 80, 3)
    assert (data.counts >= 0).all() and torch.equal(data.counts, data.counts.round())
    assert torch.allclose(data.latents.reshape(-1, 3).var(0), torch.ones(3), atol=0.15)  # stationary N(0, I)
    assert float(data.counts.mean()) == pytest.approx(0.5, rel=0.1)  # baseline_rate
    assert torch.allclose(data.readout.norm(dim=-1), torch.ones(20))
    assert torch.equal(spike_trains(2, 5, 3, seed=7).counts, spike_trains(2, 5, 3, seed=7).counts)
    with pytest.raises(ValueError, match="decay"):
        spike_trains(2, 5, 3, decay=1.0)


def _r2(inferred: torch.Tensor, true: torch.Tensor) -> float:
    """R^2 of the least-squares regression (with intercept) of the true latents on the inferred ones."""
    design = torch.cat([inferred.reshape(-1, inferred.shape[-1]), torch.ones(inferred[..., 0].numel(), 1)], 1)
    target = true.reshape(-1, true.shape[-1])
    fit = design @ torch.linalg.lstsq(design, target).solution
    return float(1 - (fit - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum())


def test_dmm_recovers_the_latent_trajectories_of_poisson_spikes():
    data = spike_trains(300, 50, 30, latent_dim=2, seed=0)
    x, x_test, z_test = data.counts[:200], data.counts[200:], data.latents[200:]
    dmm = SequentialVAE(30, latent_dim=2, transition_dim=32, rnn_dim=32, emitter_hidden_dims=(32,),
                        likelihood="poisson")
    with torch.no_grad():
        before = _r2(dmm.encode(x_test)[0], z_test)
    pvae.fit(dmm, x, num_epochs=15, batch_size=32, learning_rate=1e-2, seed=0, progress=False,
             diagnostics_every=None)
    with torch.no_grad():
        r2 = _r2(dmm.encode(x_test)[0], z_test)
    print(f"R^2 {r2:.3f} (before training {before:.3f})")
    # measured 0.94 after 15 epochs (0.66 after one); held-out trials
    assert r2 >= 0.8 and r2 > before, (r2, before)


def test_fit_trains_each_program_with_the_objective_it_declares():
    """An SSVAE trains with "enum_elbo" by default (with "elbo" its classifier got no
    gradient and stayed at chance); a relaxed-categorical VAE refuses importance
    weights, in train mode as in eval mode (the check used to depend on the mode)."""
    torch.manual_seed(0)
    protos = torch.rand(3, 20) < 0.5
    y = torch.arange(300) % 3
    x = (protos[y] ^ (torch.rand(300, 20) < 0.1)).float()
    labelled = torch.where(torch.arange(300) % 5 == 0, y, -1)
    ssvae = SemiSupervisedVAE(20, num_classes=3, latent_dim=2, hidden_dims=(32,))
    pvae.fit(ssvae, (x, labelled), num_epochs=30, batch_size=50, progress=False, seed=0, diagnostics_every=None)
    with torch.no_grad():
        accuracy = (ssvae.predict(x) == y).float().mean().item()
    assert accuracy > 0.9  # chance is 1/3: the sampled-label "elbo" gave 0.34
    with pytest.raises(ValueError, match="trains correctly with objective 'enum_elbo'"):
        pvae.fit(ssvae, (x, labelled), num_epochs=1, objective="elbo", progress=False)
    relaxed = RelaxedCategoricalVAE(20, num_categorical=2, num_categories=3, hidden_dims=(16,))
    for mode in (True, False):
        relaxed.train(mode)
        with pytest.raises(ValueError, match="not 'iwae'"):
            pvae.fit(relaxed, x, num_epochs=1, objective="iwae", progress=False)
        assert relaxed.training is mode
    # an Objective instance is the user's choice; fit checks it as it will train, in train mode
    for mode in (True, False):
        relaxed.train(mode)
        pvae.fit(relaxed, x[:40], num_epochs=1, objective=make_objective("iwae", num_particles=2), progress=False,
                 diagnostics_every=None)
