"""SequenceVAE: the categorical likelihood per position, the weighted ELBO, DeepSequence's
structured output layer, decoder dropout, sampling and training, bad input."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch import nn

import pvae
from pvae.infer import ElboObjective
from pvae.inputs import DataError
from pvae.models import SequenceVAE, SupportError, make_likelihood, mlp
from pvae.models.sequence import SequenceLogits

L, A = 5, 21


def _codes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, A, (n, L), generator=torch.Generator().manual_seed(seed))


def _structured(**kw) -> SequenceVAE:
    kw = {"latent_dim": 3, "hidden_dims": (8,), "rank": 4, "sparsity_group_size": 2, "temperature": True, **kw}
    return SequenceVAE(L, **kw)


# 1 -- the likelihood ------------------------------------------------------------------------
def test_the_likelihood_sums_log_softmax_over_positions_and_the_fast_path_changes_nothing():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 6, L, A, generator=g)  # (particles, batch, L, A)
    x = torch.randint(0, A, (6, L), generator=g)
    by_hand = logits.log_softmax(-1).gather(-1, x.expand(4, 6, L).unsqueeze(-1)).squeeze(-1).sum(-1)
    lik = make_likelihood("categorical", L, cardinalities=[A] * L)
    lp = lik(logits.flatten(-2)).to_event(1).log_prob(x)
    assert lp.shape == (4, 6) and torch.allclose(lp, by_hand, atol=1e-5)
    lik._uniform = False  # the general path, padding and index_copy: the same values, to the bit
    assert torch.equal(lik(logits.flatten(-2)).to_event(1).log_prob(x), lp)
    # the program's decoder goes through it: log p(x | z) from SequenceVAE.logits by hand
    vae = _structured()
    z = torch.randn(6, 3, generator=g)
    own = vae.logits(z).log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)
    assert vae.decode(z).event_shape == (L,) and torch.allclose(vae.decode(z).log_prob(x), own, atol=1e-5)


# 2 -- weights: the training loss is -sum_i w_i ELBO_i; per-datum bounds ignore them ----------
def test_the_weighted_loss_is_minus_the_weighted_sum_of_per_datum_elbos():
    vae, x = _structured(), _codes(7)
    w = torch.rand(7, generator=torch.Generator().manual_seed(2)) * 2 + 0.1
    pyro.set_rng_seed(3)
    loss = ElboObjective(num_particles=3)(vae.model, vae.guide, (x, w), {}).loss
    pyro.set_rng_seed(3)  # max_plate_nesting given: no extra run draws before the particles
    per_datum = pvae.infer.elbo(vae, x, num_particles=3, max_plate_nesting=1)
    assert torch.allclose(loss, -(w * per_datum).sum(), rtol=1e-5), (loss, -(w * per_datum).sum())
    pyro.set_rng_seed(3)
    assert not torch.allclose(ElboObjective(num_particles=3)(vae.model, vae.guide, (x,), {}).loss, loss)
    # per-datum bounds are the same with and without weights, under the same seed
    for bound in (lambda *a: pvae.infer.elbo(vae, *a, num_particles=3),
                  lambda *a: pvae.infer.iwae_bound(vae, *a, num_particles=5).value,
                  lambda *a: pvae.infer.log_evidence(vae, *a, num_particles=5).log_evidence.value):
        pyro.set_rng_seed(4)
        plain = bound(x)
        pyro.set_rng_seed(4)
        assert torch.equal(bound(x, w), plain)
    # importance-weighted objectives cannot honour per-datum weights, and say so
    with pytest.raises(ValueError, match="per-element weights are not supported.*objective='elbo'"):
        pvae.fit(vae, (x, w), num_epochs=1, objective="iwae", num_particles=2, progress=False)


# 3 -- DeepSequence's output layer in closed form ------------------------------------------------
def test_structured_output_layer_is_the_product_of_its_parts():
    g = torch.Generator().manual_seed(5)
    H, C, group = 6, 4, 3
    head = SequenceLogits(H, L, A, rank=C, sparsity_group_size=group, temperature=True)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    V, D, S = head.weight, head.dictionary, head.gate_logits  # (L, C, H), (C, A), (L, H / group)
    assert V.shape == (L, C, H) and D.shape == (C, A) and S.shape == (L, H // group)
    gates = torch.sigmoid(S)[:, torch.arange(H) // group]  # unit k shares the gate of its group
    W = torch.einsum("ca,lck->lak", D, V) * gates[:, None, :]
    assert torch.allclose(head.full_weight(), W, atol=1e-5)
    h = torch.randn(2, 3, H, generator=g)
    tau = math.log1p(math.exp(float(head.raw_temperature.detach())))
    by_hand = tau * (torch.einsum("lak,bnk->bnla", W, h) + head.bias)
    assert torch.allclose(head(h), by_hand.flatten(-2), atol=1e-4)
    # a dictionary of rank A set to the identity, no gates, no temperature: the dense layer
    dense, factored = SequenceLogits(H, L, A), SequenceLogits(H, L, A, rank=A)
    with torch.no_grad():
        factored.weight.copy_(dense.weight)
        factored.dictionary.copy_(torch.eye(A))
        factored.bias.copy_(dense.bias)
    assert torch.allclose(factored(h), dense(h), atol=1e-6)
    assert torch.allclose(dense(h), nn.functional.linear(h, dense.weight.flatten(0, 1), dense.bias.flatten()))
    # gates start at 1/2, the temperature at 1; the temperature scales every logit
    fresh = SequenceLogits(H, L, A, sparsity_group_size=group, temperature=True)
    assert torch.equal(torch.sigmoid(fresh.gate_logits), torch.full((L, H // group), 0.5))
    assert float(fresh.temperature().detach()) == pytest.approx(1.0)
    before = fresh(h)
    with torch.no_grad():
        fresh.raw_temperature.fill_(math.log(math.expm1(2.5)))
    assert torch.allclose(fresh(h), 2.5 * before, atol=1e-5)
    with pytest.raises(ValueError, match="sparsity_group_size must divide the decoder's last hidden width 6"):
        SequenceLogits(H, L, A, sparsity_group_size=4)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        SequenceVAE(L, rank=0)


# 4 -- dropout: on in train(), off in eval() and after fit ------------------------------------------
def test_decoder_dropout_is_active_in_train_mode_only():
    assert not any(isinstance(m, nn.Dropout) for m in mlp(4, (8, 8)).modules())  # default: none
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        mlp(4, (8,), dropout=1.0)
    vae, x = SequenceVAE(L, latent_dim=3, hidden_dims=(16, 16), dropout=0.5), _codes(32)
    assert sum(isinstance(m, nn.Dropout) for m in vae.decoder.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in vae.encoder_body.modules())
    z = torch.randn(4, 3)
    vae.train()
    assert not torch.equal(vae.logits(z), vae.logits(z))
    assert torch.equal(vae.encode(x)[0], vae.encode(x)[0])  # the encoder has none
    vae.eval()
    assert torch.equal(vae.logits(z), vae.logits(z))
    # fit trains with dropout and leaves the program in eval mode: a deterministic decoder
    pvae.fit(vae, (x, torch.ones(32)), num_epochs=2, batch_size=16, progress=False, diagnostics_every=None)
    assert not vae.training
    pyro.set_rng_seed(6)
    a = pvae.infer.log_evidence(vae, x[:4], num_particles=8)
    pyro.set_rng_seed(6)
    b = pvae.infer.log_evidence(vae, x[:4], num_particles=8)
    assert torch.equal(a.log_evidence.value, b.log_evidence.value)


# 5 -- samples, reconstructions, training -------------------------------------------------------------
def _family(n: int, g: torch.Generator) -> torch.Tensor:
    """Four positions over five letters; position 1 is position 0 plus 2 (mod 5)."""
    x = torch.randint(0, 5, (n, 4), generator=g)
    x[:, 1] = (x[:, 0] + 2) % 5
    return x


def test_samples_are_codes_and_fit_learns_a_dependency_between_positions():
    vae = _structured()
    for mean in (False, True):
        s = vae.sample(50, mean=mean)
        assert s.dtype == torch.int64 and s.shape == (50, L) and int(s.min()) >= 0 and int(s.max()) < A
    rec = vae.reconstruct(_codes(6))
    assert rec.dtype == torch.int64 and rec.shape == (6, L)
    assert torch.equal(rec, vae.logits(vae.encode(_codes(6))[0]).argmax(-1))

    g = torch.Generator().manual_seed(0)
    x, test = _family(400, g), _family(200, g)
    w = torch.rand(400, generator=g) + 0.5
    pyro.set_rng_seed(0)
    vae = SequenceVAE(4, alphabet_size=5, latent_dim=2, hidden_dims=(32,))

    def held_out() -> float:
        pyro.set_rng_seed(1)
        with torch.no_grad():
            return float(pvae.infer.elbo(vae, test, num_particles=20).mean())

    before = held_out()
    # compile=True: the step is captured (a CaptureWarning would be an error here)
    pvae.fit(vae, (x, w), num_epochs=40, batch_size=50, learning_rate=1e-2, progress=False, seed=0, compile=True)
    after = held_out()
    # independent uniform letters: -4 log 5 = -6.44 nats; with the dependency learned: -3 log 5 = -4.83
    assert after > before + 0.8 and after > -6.0, (before, after)  # measured -6.86 -> -5.50
    s = vae.sample(1000)
    agree = float(((s[:, 0] + 2) % 5 == s[:, 1]).float().mean())
    assert agree > 0.5, agree  # chance: 0.2; measured 0.70


# 6 -- bad input -----------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors():
    vae, x = _structured(), _codes(8)
    w = torch.rand(8) + 0.1
    bad = x.clone()
    bad[2, 3] = A
    with pytest.raises(SupportError, match=r"needs x in integers 0..cardinality-1 \(cardinality 21 .*x\[2, 3\] = 21"):
        pvae.infer.elbo(vae, bad)
    with pytest.raises(SupportError, match=r"x\[0, 0\] = -1"):
        vae.model(torch.full((2, L), -1))
    with pytest.raises(DataError, match=r"shape \(batch, 5\), got shape \(8, 4\).*SequenceVAE\(msa.length\)"):
        pvae.infer.elbo(vae, x[:, :4])
    onehot = nn.functional.one_hot(x, A)
    for given in (onehot, onehot.flatten(1).float()):  # a one-hot, as it is or flattened
        with pytest.raises(DataError, match="a one-hot: pass integer codes, e.g. msa.codes"):
            pvae.infer.elbo(vae, given)
    with pytest.raises(DataError, match="x must hold integer codes, got dtype torch.float32"):
        vae.guide(x.float())
    with pytest.raises(DataError, match=r"weights must be non-negative.*weights\[1\] = -0.5"):
        pvae.fit(vae, (x, torch.tensor([1.0, -0.5, 1, 1, 1, 1, 1, 1])), num_epochs=1, progress=False)
    with pytest.raises(DataError, match=r"weights must be non-negative, finite and non-zero.*weights\[0\] = 0"):
        vae.model(x, torch.zeros(8))
    with pytest.raises(DataError, match=r"weights must have shape \(8,\), one per sequence of x, got \(8, 1\)"):
        vae.guide(x, w[:, None])
    with pytest.raises(ValueError, match="dropout must be a probability"):
        SequenceVAE(L, dropout=-0.1)


# -- the autoregressive (GRU) decoder ------------------------------------------------
def _gru_vae(**kwargs):
    pyro.set_rng_seed(0)
    return SequenceVAE(5, alphabet_size=4, latent_dim=2, hidden_dims=(8,), decoder="gru", **kwargs)


def test_gru_log_prob_is_the_chain_rule_of_its_steps():
    """log p(x | z) by teacher forcing equals the sum of the letter-by-letter
    log-probabilities that generation uses, and the decoder normalises: summed
    over all 4**3 sequences of a 3-letter model, p(x | z) is 1."""
    vae = SequenceVAE(3, alphabet_size=4, latent_dim=2, hidden_dims=(8,), decoder="gru")
    z = torch.randn(2, 2)
    every = torch.cartesian_prod(*[torch.arange(4)] * 3)  # (64, 3)
    d = vae.decode(z.unsqueeze(1))  # batch (2, 1) broadcast against the 64 sequences
    logp = d.log_prob(every)
    assert logp.shape == (2, 64)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(2), atol=1e-5)
    dec = vae.decoder
    h, prev, manual = dec._initial_state(z[:1]), torch.tensor([[4]]), 0.0
    x = every[37]
    for letter in x:
        out, h = dec.gru(dec._step_inputs(z[:1], prev), h)
        manual = manual + dec.output(out[:, 0]).log_softmax(-1)[0, letter]
        prev = letter.view(1, 1)
    assert torch.allclose(logp[0, 37], manual, atol=1e-5)


def test_gru_vae_trains_samples_and_bounds():
    vae = _gru_vae()
    x = torch.randint(0, 4, (16, 5))
    with torch.no_grad():
        bound = pvae.infer.elbo(vae.model, vae.guide, x, num_particles=3)
    assert bound.shape == (16,) and torch.isfinite(bound).all()
    # the sequences copy their first letter: the autoregressive decoder learns it
    x = torch.randint(0, 4, (64, 1)).expand(64, 5).contiguous()
    start = pvae.infer.elbo(vae.model, vae.guide, x, num_particles=3).mean().item()
    pvae.fit(vae, x, num_epochs=30, batch_size=32, learning_rate=1e-2, seed=0, diagnostics_every=None)
    with torch.no_grad():
        trained = pvae.infer.elbo(vae.model, vae.guide, x, num_particles=3).mean().item()
    assert trained > start + 3, (start, trained)  # 5 uniform letters cost 6.9 nats; copies cost log 4 = 1.4
    samples, greedy = vae.sample(7), vae.sample(7, mean=True)
    assert samples.shape == greedy.shape == (7, 5) and samples.dtype == torch.long
    assert int(samples.max()) < 4 and int(samples.min()) >= 0
    assert vae.reconstruct(x).shape == x.shape
    with pytest.raises(TypeError, match="needs decoder='mlp'"):
        vae.logits(torch.zeros(1, 2))


def test_gru_decoder_options_are_checked():
    with pytest.raises(ValueError, match="decoder must be 'mlp' or 'gru'"):
        SequenceVAE(5, decoder="lstm")
    with pytest.raises(ValueError, match="equal widths"):
        SequenceVAE(5, decoder="gru", decoder_hidden_dims=(8, 4))
    with pytest.raises(ValueError, match="takes none of them"):
        SequenceVAE(5, decoder="gru", rank=3)
    assert _gru_vae(decoder_hidden_dims=(6, 6)).decoder.num_layers == 2
