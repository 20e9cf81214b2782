"""CountVAE (scVI's program): the batch effect is real, and the model removes it.

Small case (fixed seeds): 1500 training cells x 200 genes from
``simulate_counts(..., num_batches=3, num_cell_types=4, de_prob=0.2)``, an NB
model with latent 5, one hidden layer of 64 and the dispersion held at the
truth (see the fixture), 100 epochs. Measured when the test was written: a
logistic regression predicts the batch from log1p counts with 3-fold
accuracy 1.00; from the latent means 0.36 and from the batch-corrected
expression (reference batch 0) 0.43, against chance 1/3; batch mixing
entropy 0.96; kNN cell-type accuracy 1.00. On 200 held-out cells the Pearson
residuals of the normal ones have mean -0.01 and variance 0.99, and the
Pearson score finds the 15 rare cells with AUC 0.997. The thresholds below
leave room for seeds and platforms, not for a model that keeps the batch.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score

import pvae
from pvae.analysis import anomaly_scores, encode_mean, integration_metrics, pearson_residuals
from pvae.data import simulate_counts
from pvae.infer.traces import site_log_probs
from pvae.inputs import DataError, DataTypeError
from pvae.models import CountVAE, SupportError

GENES, BATCHES = 200, 3


def _batch_accuracy(features, batch) -> float:
    return float(cross_val_score(LogisticRegression(max_iter=2000), features, batch, cv=3).mean())


@pytest.fixture(scope="module")
def trained():
    """Trained on 1500 cells; 200 more held out, 15 of them made a rare population
    (10 well-expressed genes up 8-fold, counts redrawn from the new means)."""
    sim = simulate_counts(1700, GENES, BATCHES, 4, seed=0, de_prob=0.2)
    x, b = sim.counts[:1500], sim.batch[:1500]
    held, held_b = sim.counts[1500:].clone(), sim.batch[1500:]
    rare = torch.arange(15) * 13
    mean = sim.mean[1500:][rare].clone()
    mean[:, sim.mean.mean(0).argsort()[-40:-30]] *= 8.0
    g = np.random.default_rng(1)
    held[rare] = torch.as_tensor(g.poisson(g.gamma(sim.dispersion, mean.numpy() / sim.dispersion)), dtype=x.dtype)
    torch.manual_seed(0)
    model = CountVAE(GENES, num_batches=BATCHES, likelihood="nb", latent_dim=5, hidden_dims=(64,))
    # the dispersion at the truth, r = 5 (r = exp(raw)), and frozen: from r = 1 Adam needs
    # about log(5) / lr steps to get there, more than this small fit takes
    with torch.no_grad():
        model.likelihood.raw_total_count.fill_(float(np.log(sim.dispersion)))
    model.likelihood.raw_total_count.requires_grad_(False)
    pvae.fit(model, (x, b), num_epochs=100, batch_size=128, learning_rate=3e-3, seed=0, progress=False,
             diagnostics_every=None)
    return sim, x, b, (held, held_b, rare), model


def test_simulated_batch_effect_is_real_and_the_model_removes_most_of_it(trained):
    sim, x, b, _, model = trained
    assert _batch_accuracy(np.log1p(x.numpy()), b.numpy()) > 0.95
    z = encode_mean(model, x, b).numpy()
    assert _batch_accuracy(z, b.numpy()) < 0.5  # chance 1/3
    corrected = model.normalized_expression(x, b, reference_batch=0, library_size=1e4)
    assert _batch_accuracy(np.log1p(corrected.numpy()), b.numpy()) < 0.5
    m = integration_metrics(z, b, sim.cell_type[:1500], k=30)
    assert m.batch_mixing > 0.85 and m.knn_accuracy > 0.95, m


def test_decoder_mean_spends_the_library_and_expression_is_per_library(trained):
    _, x, b, _, model = trained
    z = encode_mean(model, x[:50], b[:50])
    lib = x[:50].sum(1)
    torch.testing.assert_close(model.decode(z, b[:50], lib).mean.sum(-1), lib)  # NB: sum_g l rho_g = l
    per_10k = model.normalized_expression(x[:50], b[:50], library_size=1e4)
    torch.testing.assert_close(per_10k.sum(-1), torch.full((50,), 1e4))
    # decoding under one reference batch changes the expression; the cells' own batch reproduces reconstruct()
    torch.testing.assert_close(model.normalized_expression(x[:50], b[:50]), model.reconstruct(x[:50], b[:50]))
    assert not torch.allclose(model.normalized_expression(x[:50], b[:50], reference_batch=0),
                              model.normalized_expression(x[:50], b[:50], reference_batch=1))


def test_pearson_residuals_are_standardised_and_flag_an_injected_rare_population(trained):
    _, _, _, (x, b, rare), model = trained
    r = pearson_residuals(model, x, b, num_samples=8)
    normal = torch.ones(len(x), dtype=torch.bool)
    normal[rare] = False
    assert abs(r[normal].mean().item()) < 0.1 and 0.75 < r[normal].var().item() < 1.25
    # exactly the law of total variance over the K = 8 draws z_k of the same seeded trace: the NB
    # variance mu + mu^2 / r (r = exp(raw_total_count) = 5, by hand) averaged over the draws,
    # plus the biased between-draw variance of mu; float32 rounding only (rtol 1e-4)
    cells, k = slice(0, 40), 8
    pyro.set_rng_seed(5)
    r_some = pearson_residuals(model, x[cells], b[cells], num_samples=k)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        trace = site_log_probs(model.model, model.guide, x[cells], b[cells], num_particles=k).guide_trace
        z = trace.nodes["z"]["value"]
        assert z.shape == (k, 40, 5)
        mu = model.decode(z, b[cells], x[cells].sum(1)).mean.double()  # (K, cells, genes)
    total_count = model.likelihood.raw_total_count.detach().double().exp()
    assert torch.allclose(total_count, torch.tensor(5.0, dtype=torch.float64))
    m = mu.mean(0)
    within, between = (mu + mu**2 / total_count).mean(0), ((mu - m) ** 2).mean(0)
    assert (between / within).max() > 0.05  # the between-draw term matters for some genes
    torch.testing.assert_close(r_some.double(), (x[cells].double() - m) / (within + between).sqrt(),
                               rtol=1e-4, atol=1e-5)
    scores = anomaly_scores(model, x, b, score="pearson", num_particles=8)
    assert roc_auc_score((~normal).numpy(), scores.numpy()) > 0.95


def test_zinb_gene_batch_program_trains_and_bounds_agree():
    sim = simulate_counts(300, 30, 2, 2, seed=3, zero_inflation=0.2)
    model = CountVAE(30, num_batches=2, likelihood="zinb", dispersion="gene-batch", latent_dim=2, hidden_dims=(16,))
    assert model.likelihood.raw_total_count.shape == (2, 30)
    # each cell gets its own batch's dispersions: set distinct rows r[s, g] = (2, 7)[s] (1 + g / 30)
    # (r = exp(raw) for the log-mean parameterisation) and check the program's log p(x | z) of 20
    # cells of both batches against the ZINB log-pmf written out here, at z drawn from the prior
    r = torch.tensor([2.0, 7.0])[:, None] * (1 + torch.arange(30.0) / 30)
    with torch.no_grad():
        model.likelihood.raw_total_count.copy_(r.log())
    x, s = sim.counts[:20], sim.batch[:20]
    assert 0 < int(s.sum()) < 20
    z = torch.randn(20, 2)
    with torch.no_grad():
        node = poutine.trace(poutine.condition(model.model, {"z": z})).get_trace(x, s).nodes["x"]
        ours = node["fn"].log_prob(x)
        zinb = node["fn"].base_dist  # Independent(ZeroInflatedNegativeBinomial)
        assert isinstance(zinb, dist.ZeroInflatedNegativeBinomial)
        torch.testing.assert_close(zinb.total_count, r[s])
        out = model.decoder(torch.cat([z, F.one_hot(s, 2).float()], -1)).double()
        mu = out[:, :30].log_softmax(-1).exp() * x.sum(1, keepdim=True).double()
        gate, rd, xd = torch.sigmoid(out[:, 30:]), r[s].double(), x.double()
        log_nb = (torch.lgamma(xd + rd) - torch.lgamma(rd) - torch.lgamma(xd + 1)
                  + rd * torch.log(rd / (rd + mu)) + xd * torch.log(mu / (rd + mu)))
        log_zinb = torch.where(xd == 0, torch.log(gate + (1 - gate) * log_nb.exp()), torch.log1p(-gate) + log_nb)
    # float32 sums of 30 terms, |log p| ~ 150: rounding ~1e-5 relative
    torch.testing.assert_close(ours.double(), log_zinb.sum(-1), rtol=1e-5, atol=1e-4)
    fit = pvae.fit(model, (sim.counts, sim.batch), num_epochs=3, batch_size=64, seed=0, progress=False,
                   diagnostics_every=None)
    assert np.isfinite(fit.history[-1]["loss"])
    with torch.no_grad():
        elbo = pvae.infer.elbo_terms(model, sim.counts, sim.batch, num_particles=4).elbo
        iwae = pvae.infer.iwae_bound(model, sim.counts, sim.batch, num_particles=64).value
    assert (iwae.mean() >= elbo.mean() - 0.5).item()  # the IWAE bound is the tighter (up to MC noise)
    # the program is static: pvae.fit captures its step (a fallback would warn, and warnings are errors here)
    captured = pvae.fit(model, (sim.counts, sim.batch), num_epochs=2, batch_size=64, seed=0, progress=False,
                        diagnostics_every=None, compile=True)
    assert np.isfinite(captured.history[-1]["loss"])


def test_fit_standardises_the_encoder_inputs_once(trained):
    _, x, _, _, model = trained
    torch.testing.assert_close(model.input_loc, x.log1p().mean(0))
    torch.testing.assert_close(model.input_scale, x.log1p().std(0).clamp(min=0.1))
    assert bool(model.inputs_standardized)
    loc = model.input_loc.clone()
    model.on_fit_start(x[:100] * 2)  # a second fit keeps the encoder's scaling
    assert torch.equal(model.input_loc, loc)
    # masked entries do not enter the statistics
    fresh = CountVAE(3, latent_dim=2, hidden_dims=(4,))
    xs = torch.tensor([[0.0, 1.0, 3.0], [1.0, 99.0, 3.0], [3.0, 1.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    fresh.standardize_inputs(xs, mask)
    assert fresh.input_loc[1].item() == pytest.approx(np.log(2.0))
    assert fresh.input_scale[1].item() == pytest.approx(0.1)  # constant gene: the floor


def test_bad_input_gets_clear_errors():
    model = CountVAE(4, num_batches=2, latent_dim=2, hidden_dims=(4,))
    x = torch.tensor([[1.0, 0.0, 2.0, 3.0], [0.0, 5.0, 1.0, 1.0]])
    with pyro.validation_enabled(True):
        with pytest.raises(SupportError, match="non-negative integers"):
            model.model(x + 0.5, torch.tensor([0, 1]))
        with pytest.raises(DataError, match="num_batches=2.*not seen in training"):
            model.model(x, torch.tensor([0, 2]))
        with pytest.raises(DataError, match="pass batch"):
            model.model(x)
        with pytest.raises(DataTypeError, match="integer tensor"):
            model.guide(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match="not seen in training"):  # pvae.fit validates before training
        pvae.fit(model, (x, torch.tensor([0, 3])), num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="likelihood must be"):
        CountVAE(4, likelihood="poisson")
    with pytest.raises(ValueError, match="dispersion must be"):
        CountVAE(4, dispersion="cell")


def _masked_traces(model, x, mask, batch=None):
    """Model traces with and without ``mask`` at the same z (one guide trace, replayed)."""
    guide_tr = poutine.trace(model.guide).get_trace(x, batch, mask)
    masked = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, batch, mask)
    plain = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, batch)
    return guide_tr, masked, plain


def test_masked_library_is_spent_on_the_observed_genes_and_unmasked_rows_keep_their_bits():
    # with a mask the library sums the observed genes: the NB means of the observed genes
    # must add up to it (they added up to l * sum_observed rho, half of it here; audit 3,
    # finding 3), a fully observed row must keep the unmasked bits, and a row with nothing
    # observed must give finite gradients
    torch.manual_seed(0)
    genes = 10
    model = CountVAE(genes, num_batches=2, latent_dim=2, hidden_dims=(8,), likelihood="nb")
    x = torch.poisson(torch.full((4, genes), 20.0))
    batch = torch.tensor([0, 1, 0, 1])
    mask = torch.ones(4, genes, dtype=torch.bool)
    mask[0, 5:] = False  # half missing
    mask[2, 1:] = False  # one gene observed
    mask[3] = False  # nothing observed (row 1 fully observed)
    _, masked, plain = _masked_traces(model, x, mask, batch)
    mean = masked.nodes["x"]["fn"].mean
    observed_library = (x * mask).sum(-1)
    assert torch.allclose((mean * mask).sum(-1)[:3], observed_library[:3], rtol=1e-5)
    # the maths of the docstring: mu = l rho / sum_observed rho, rho the unmasked proportions
    rho = plain.nodes["x"]["fn"].mean / x.sum(-1, keepdim=True)
    expected = observed_library.clamp(min=1).unsqueeze(-1) * rho / (rho * mask).sum(-1, keepdim=True)
    assert torch.allclose(mean[:3], expected[:3], rtol=1e-5)
    assert torch.allclose(mean[3], rho[3], rtol=1e-5)  # nothing observed: library 1, mu = rho
    assert torch.equal(mean[1], plain.nodes["x"]["fn"].mean[1])  # fully observed: same bits
    # decode / reconstruct with the mask spread the observed library the same way
    z = masked.nodes["z"]["value"]
    assert torch.allclose(model.decode(z, batch, observed_library.clamp(min=1), mask).mean, mean)
    recon = model.reconstruct(x, batch, mask)
    assert torch.allclose((recon * mask).sum(-1)[:3], observed_library[:3], rtol=1e-5)
    # gradients stay finite, the all-missing row included
    guide_tr = poutine.trace(model.guide).get_trace(x, batch, mask)
    loss = -poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, batch, mask).log_prob_sum()
    loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    # a mask of all True is the unmasked program, bit for bit
    full = torch.ones_like(mask)
    _, masked_full, plain_full = _masked_traces(model, x, full, batch)
    assert torch.equal(masked_full.nodes["x"]["fn"].mean, plain_full.nodes["x"]["fn"].mean)
    masked_full.compute_log_prob()
    plain_full.compute_log_prob()
    assert torch.equal(masked_full.nodes["x"]["log_prob"], plain_full.nodes["x"]["log_prob"])


def test_normalized_expression_takes_a_mask_and_names_it_for_nan_data():
    torch.manual_seed(1)
    genes = 6
    model = CountVAE(genes, latent_dim=2, hidden_dims=(8,), likelihood="nb")
    x = torch.poisson(torch.full((5, genes), 5.0))
    # unmasked: the decoder mean at the encoder mean with the observed library, unchanged
    loc, _ = model.encode(x)
    expected = model.decode(loc, None, x.sum(-1).clamp(min=1)).mean
    assert torch.equal(model.normalized_expression(x), expected)
    assert torch.equal(model.normalized_expression(x, mask=torch.ones_like(x, dtype=torch.bool)), expected)
    # NaN-marked missing entries: a clear error without a mask, the observed library with one
    xm = x.clone()
    xm[0, 0] = xm[2, 3] = float("nan")
    with pytest.raises(DataError, match=r"x has 2 NaN entries: pass mask=~torch.isnan\(x\)"):
        model.normalized_expression(xm)
    mask = ~xm.isnan()
    expression = model.normalized_expression(xm, mask=mask)
    assert bool(torch.isfinite(expression).all())
    observed_library = torch.nan_to_num(xm).sum(-1)
    assert torch.allclose((expression * mask).sum(-1), observed_library, rtol=1e-5)
    per_10k = model.normalized_expression(xm, library_size=1e4, mask=mask)
    assert torch.allclose(per_10k.sum(-1), torch.full((5,), 1e4), rtol=1e-5)
    with pytest.raises(DataError, match="mask must have the shape of x"):
        model.normalized_expression(xm, mask=mask[:, :3])
