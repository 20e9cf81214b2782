"""MIG and DCI on constructed codes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvae.analysis import dci, disentanglement, mutual_information_gap
from pvae.models import CountVAE, VAE


def _factors(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(3, size=n), rng.integers(8, size=n), rng.integers(10, size=n)], axis=1)


def test_a_permuted_copy_of_the_factors_is_disentangled():
    v = _factors()
    rng = np.random.default_rng(1)
    codes = v[:, [2, 0, 1]] + 0.01 * rng.normal(size=v.shape)  # each factor in one dimension
    codes = np.concatenate([codes, rng.normal(size=(len(v), 2))], axis=1)  # and two dimensions of noise
    mig, gaps, mi = mutual_information_gap(codes, v)
    assert mig > 0.95 and (gaps > 0.95).all()
    assert list(mi.argmax(0)) == [1, 2, 0]
    for importance in ("lasso", "gbt"):
        s = dci(codes, v, importance=importance)
        assert s.disentanglement > 0.9 and s.completeness > 0.9, (importance, s)
    # trees predict every factor from its dimension; a linear map of one scalar cannot separate 10 classes
    assert dci(codes, v, importance="gbt").informativeness > 0.99


def test_a_random_code_is_not():
    v = _factors()
    codes = np.random.default_rng(2).normal(size=(len(v), 4))
    mig, gaps, _ = mutual_information_gap(codes, v)
    assert mig < 0.03
    s = dci(codes, v, importance="gbt")
    assert s.informativeness < 0.45  # chance accuracies 1/3, 1/8, 1/10


def test_two_factors_in_one_dimension_and_one_factor_in_two():
    v = _factors()[:, :2].astype(float)
    rng = np.random.default_rng(3)

    def noise():
        return 0.01 * rng.normal(size=len(v))

    # one dimension holds both factors (others noise): that dimension is not disentangled
    mixed = np.stack([v[:, 0] + 3 * v[:, 1] + noise(), rng.normal(size=len(v)), rng.normal(size=len(v))], 1)
    assert dci(mixed, v, importance="gbt").disentanglement < 0.6
    # one factor split over two dimensions: that factor is not complete, and MIG sees no gap for it
    split = np.stack([v[:, 0] + noise(), v[:, 1] + noise(), v[:, 1] + noise()], 1)
    s = dci(split, v, importance="gbt")
    assert s.completeness < 0.8
    _, gaps, _ = mutual_information_gap(split, v)
    assert gaps[0] > 0.9 and gaps[1] < 0.1


def test_disentanglement_reads_a_programs_encoder_means_and_bad_input_is_refused():
    vae = VAE(6, latent_dim=3, hidden_dims=(8,), likelihood="normal")
    x = torch.randn(500, 6)
    v = _factors(500)
    res = disentanglement(vae, x, v, batch_size=128)
    assert res.codes.shape == (500, 3) and res.mutual_information.shape == (3, 3)
    # the codes are the encoder's means (loc, not scale), joined over 4 chunks of <= 128 rows
    # in order; one pass over all rows differs only by float32 rounding of the matmuls
    with torch.no_grad():
        loc, scale = vae.encode(x)
    assert not torch.allclose(loc, scale)
    np.testing.assert_allclose(res.codes, loc.numpy(), rtol=1e-5, atol=1e-6)
    mig, gaps, mi = mutual_information_gap(res.codes, v)
    assert res.mig == mig and np.array_equal(res.mig_per_factor, gaps) and np.array_equal(res.mutual_information, mi)
    assert np.array_equal(res.best_dimension, mi.argmax(0))
    # further arguments of encode (a batch code per row) are chunked with the rows
    counts = CountVAE(6, num_batches=2, latent_dim=2, hidden_dims=(8,))
    xc, batch = torch.poisson(torch.full((300, 6), 3.0)), torch.arange(300) % 2
    res = disentanglement(counts, xc, v[:300], batch, batch_size=128)
    with torch.no_grad():
        np.testing.assert_allclose(res.codes, counts.encode(xc, batch)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert set(res.summary()) == {"mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"}
    with pytest.raises(ValueError, match="one row per datum"):
        mutual_information_gap(np.zeros((10, 2)), v)
    with pytest.raises(ValueError, match="constant"):
        mutual_information_gap(np.random.default_rng(0).normal(size=(10, 2)), np.zeros((10, 1)))
    with pytest.raises(ValueError, match="importance"):
        dci(np.zeros((10, 2)), v[:10], importance="forest")
