"""The count simulator's truth, and single-cell counts in and out of AnnData."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pvae.data import from_anndata, read_counts, simulate_counts, write_latent
from pvae.inputs import DataError

anndata = pytest.importorskip("anndata")
sparse = pytest.importorskip("scipy.sparse")


# -- the simulator -------------------------------------------------------------
def test_simulator_is_seeded_and_its_moments_match_the_recipe():
    a = simulate_counts(3000, 200, 3, 4, seed=5, library_loc=7.0, library_scale=0.2, dispersion=4.0)
    b = simulate_counts(3000, 200, 3, 4, seed=5, library_loc=7.0, library_scale=0.2, dispersion=4.0)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.batch, b.batch)
    assert a.counts.shape == (3000, 200) and a.batch.dtype == torch.long
    assert set(a.batch.tolist()) == {0, 1, 2} and set(a.cell_type.tolist()) == {0, 1, 2, 3}
    assert torch.equal(a.counts, a.counts.round()) and (a.counts >= 0).all()
    # means sum to the library; the library is log-normal(7, 0.2^2): mean e^(7 + 0.02)
    torch.testing.assert_close(a.mean.sum(1), a.library)
    assert a.library.mean().item() == pytest.approx(math.exp(7.02), rel=0.02)
    # E[x] = mu and Var[x] = mu + mu^2 / r: standardised residuals have mean 0, variance 1
    r = (a.counts.double() - a.mean.double()) / (a.mean.double() + a.mean.double() ** 2 / 4.0).sqrt()
    assert abs(r.mean().item()) < 0.01 and r.var().item() == pytest.approx(1.0, abs=0.03)
    # a gene outside every type's DE set differs between batches by the batch factors alone
    assert (a.de_factors == 1).float().mean().item() == pytest.approx(0.9, abs=0.03)


def test_simulator_zero_inflation_and_settings_checks():
    plain = simulate_counts(500, 100, 2, 2, seed=0)
    zi = simulate_counts(500, 100, 2, 2, seed=0, zero_inflation=0.3)
    zero, zero_zi = ((c == 0).float().mean().item() for c in (plain.counts, zi.counts))
    assert zero_zi == pytest.approx(zero + 0.3 * (1 - zero), abs=0.02)
    for bad in ({"de_prob": 1.5}, {"dispersion": 0}, {"batch_scale": -1}, {"num_batches": 0}):
        with pytest.raises(ValueError):
            simulate_counts(10, 5, **bad)


# -- AnnData -------------------------------------------------------------------
def _adata(n=30, genes=6, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n, genes)).astype(np.float32)
    adata = anndata.AnnData(X=np.log1p(counts))
    adata.layers["counts"] = sparse.csr_matrix(counts)
    adata.obs["batch"] = np.array(["b", "a", "c"])[np.arange(n) % 3]
    adata.obs["cell_type"] = np.array(["T", "B"])[np.arange(n) % 2]
    adata.var_names = [f"g{i}" for i in range(genes)]
    return adata, counts


def test_anndata_round_trip_in_memory_and_on_disk(tmp_path):
    adata, counts = _adata()
    data = from_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    assert np.array_equal(data.counts.numpy(), counts)
    assert data.batch_categories == ("a", "b", "c") and data.label_categories == ("B", "T")
    assert data.batch.tolist()[:3] == [1, 0, 2] and data.labels.tolist()[:2] == [1, 0]
    assert data.genes == tuple(f"g{i}" for i in range(6)) and data.args[0] is data.counts
    z = torch.randn(30, 2)
    write_latent(adata, z)
    assert np.array_equal(adata.obsm["X_pvae"], z.numpy())
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    again = from_anndata(str(path), batch_key="batch", labels_key="cell_type")
    assert torch.equal(again.counts, data.counts) and torch.equal(again.batch, data.batch)
    assert np.array_equal(anndata.read_h5ad(path).obsm["X_pvae"], z.numpy())
    # a backed file reads only the rows asked for
    adata_x = anndata.AnnData(X=counts)
    adata_x.write_h5ad(tmp_path / "x.h5ad")
    backed = anndata.read_h5ad(tmp_path / "x.h5ad", backed="r")
    assert np.array_equal(read_counts(backed, slice(5, 9), layer=None).numpy(), counts[5:9])


def test_new_data_keeps_the_training_codes_and_refuses_unseen_batches():
    adata, _ = _adata()
    train = from_anndata(adata)
    later = adata[adata.obs["batch"] != "a"].copy()
    again = from_anndata(later, batch_categories=train.batch_categories)
    assert set(again.batch.tolist()) == {1, 2}  # "b", "c" keep their training codes
    new = adata.copy()
    new.obs["batch"] = new.obs["batch"].replace({"c": "d"})
    with pytest.raises(DataError, match=r"\['d'\] not among the 3 known"):
        from_anndata(new, batch_categories=train.batch_categories)


def test_bad_anndata_input_gets_clear_errors():
    adata, _ = _adata()
    with pytest.raises(DataError, match="no column 'sample'.*'batch'"):
        from_anndata(adata, batch_key="sample")
    with pytest.raises(DataError, match="no layer 'raw'.*'counts'"):
        from_anndata(adata, layer="raw")
    with pytest.raises(DataError, match="raw counts"):
        from_anndata(adata, layer=None)  # X holds log1p counts
    with pytest.raises(DataError, match="one row per cell"):
        write_latent(adata, np.zeros((3, 2)))
    one = from_anndata(adata, batch_key=None)
    assert one.batch_categories == ("0",) and int(one.batch.max()) == 0


@pytest.mark.parametrize("fmt", ["sparse", "dense"])
def test_backed_files_read_in_full_and_in_any_row_order(tmp_path, fmt):
    """A backed sparse matrix read whole (rows=None) used to fail as a 0-d "shape ()" matrix, and
    unsorted rows of a backed dense one hit h5py's "increasing order" error."""
    _, counts = _adata(n=20, genes=5, seed=3)
    adata = anndata.AnnData(X=sparse.csr_matrix(counts) if fmt == "sparse" else counts)
    adata.obs["batch"] = np.array(["a", "b"])[np.arange(20) % 2]
    adata.write_h5ad(tmp_path / "c.h5ad")
    backed = anndata.read_h5ad(tmp_path / "c.h5ad", backed="r")
    assert np.array_equal(read_counts(backed, layer=None).numpy(), counts)
    data = from_anndata(backed, layer=None)
    assert np.array_equal(data.counts.numpy(), counts) and data.batch.tolist() == [0, 1] * 10
    for rows in ([5, 1], [7, 2, 7, 0], np.array([19, -20]), [], np.arange(20) % 3 == 0):
        want = counts[np.asarray(rows, dtype=bool if isinstance(rows, np.ndarray) and rows.dtype == bool else int)]
        got = read_counts(backed, rows, layer=None)
        assert got.shape == want.shape and np.array_equal(got.numpy(), want), rows
    with pytest.raises(IndexError, match="0..19|-20..19"):
        read_counts(backed, [3, 20], layer=None)


@pytest.mark.parametrize("key", ["batch", "cell_type"])
@pytest.mark.parametrize("missing", ["categorical", "object"])
def test_missing_batch_or_label_is_refused_not_a_category_named_nan(key, missing):
    adata, _ = _adata()
    values = list(adata.obs[key])
    values[4] = None if missing == "categorical" else np.nan
    adata.obs[key] = pd.Categorical(values) if missing == "categorical" else np.array(values, dtype=object)
    with pytest.raises(DataError, match=rf"adata.obs\['{key}'\] has no (batch|label) for 1 of 30 cells.*'4'"):
        from_anndata(adata, labels_key="cell_type")
    adata.obs[key] = adata.obs[key].astype(str).replace({"None": "nan"})  # the string "nan" is a real name
    data = from_anndata(adata, labels_key="cell_type")
    categories = data.batch_categories if key == "batch" else data.label_categories
    assert "nan" in categories
