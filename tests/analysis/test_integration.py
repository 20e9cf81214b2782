"""Integration measures on constructed embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvae.analysis import (
    batch_asw,
    batch_mixing_entropy,
    cell_type_asw,
    integration_metrics,
    knn_accuracy,
)


def _separated(n_per=60, groups=3, dim=4, seed=0):
    """Tight clusters, one per group, 100 apart."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(groups), n_per)
    centres = 100.0 * np.eye(groups, dim)
    return centres[labels] + 0.01 * rng.normal(size=(len(labels), dim)), labels


def test_separated_batches_give_zero_mixing_and_zero_batch_asw():
    z, batch = _separated()
    cell_type = np.tile(np.arange(2), len(batch) // 2)  # every type in every batch
    assert batch_mixing_entropy(z, batch, k=10) == 0.0
    assert batch_asw(z, batch, cell_type) < 0.01


def test_duplicated_batches_are_mixed():
    """Every position occupied once by each of B batches. With neighbours
    excluding the cell, its k = B - 1 nearest are its copies (distance 0), one of
    every other batch; and the batch silhouette is exactly -1/n (n cells per
    batch): b(i) = S / n, a(i) = S / (n - 1) for S the summed distance to the rest."""
    rng = np.random.default_rng(1)
    n, batches = 40, 3
    base = rng.normal(size=(n, 5))
    z = np.concatenate([base] * batches)
    batch = np.repeat(np.arange(batches), n)
    cell_type = np.zeros(len(batch), dtype=int)
    # neighbours of a cell: the B - 1 copies from the other batches -> entropy log(B - 1) / log B
    assert batch_mixing_entropy(z, batch, k=batches - 1) == pytest.approx(np.log(batches - 1) / np.log(batches))
    assert batch_asw(z, batch, cell_type) == pytest.approx(1 - 1 / n, abs=1e-9)


def test_random_batch_labels_mix_up_to_the_plug_in_entropy_bias():
    """Labels independent of position: each neighbourhood is a multinomial sample of
    k labels, whose plug-in entropy is biased down by about (B - 1) / (2 k) nats."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 3))
    batch = rng.integers(3, size=3000)
    k = 60
    bias = (3 - 1) / (2 * k * np.log(3))
    assert batch_mixing_entropy(z, batch, k=k) == pytest.approx(1 - bias, abs=0.01)


def test_cell_type_measures_on_separated_and_random_labels():
    z, types = _separated(groups=4, n_per=50)
    assert cell_type_asw(z, types) > 0.999
    assert knn_accuracy(z, types, k=5) == 1.0
    rng = np.random.default_rng(3)
    random = rng.integers(4, size=len(types))
    assert abs(cell_type_asw(z, random) - 0.5) < 0.05  # silhouette ~ 0 -> 0.5
    assert abs(knn_accuracy(z, random, k=15) - 0.25) < 0.08


def test_integration_metrics_accepts_tensors_and_string_labels_and_subsamples():
    z, types = _separated(groups=2, n_per=100)
    batch = np.array(["a", "b"] * 100)
    m = integration_metrics(torch.as_tensor(z), batch, types.astype(str), k=10, max_cells=150)
    assert set(m.to_dict()) == {"batch_mixing", "batch_asw", "cell_type_asw", "knn_accuracy"}
    assert m.knn_accuracy == 1.0 and m.cell_type_asw > 0.99 and m.batch_mixing > 0.8


def test_bad_input_is_refused():
    z, labels = _separated()
    with pytest.raises(ValueError, match="one per cell"):
        batch_mixing_entropy(z, labels[:-1])
    with pytest.raises(ValueError, match="two batches"):
        batch_mixing_entropy(z, np.zeros(len(labels)))
    with pytest.raises(ValueError, match="k must lie"):
        knn_accuracy(z, labels, k=len(labels))
    with pytest.raises(ValueError, match="NaN"):
        cell_type_asw(np.full_like(z, np.nan), labels)


def test_batch_asw_skips_a_type_with_one_cell_per_batch_as_scib_does():
    """A rare type of 3 cells from 3 batches has no batch silhouette (scikit-learn needs
    2 <= batches <= cells - 1); it used to crash the whole measure."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(63, 4))
    batch = np.array(["a", "b"] * 30 + ["a", "b", "c"])
    ctype = np.array(["T"] * 60 + ["R"] * 3)
    assert batch_asw(z, batch, ctype) == batch_asw(z[:60], batch[:60], ctype[:60])  # R left out
    m = integration_metrics(z, batch, ctype, k=10)
    assert m.batch_asw == batch_asw(z[:60], batch[:60], ctype[:60])
    with pytest.raises(ValueError, match="more cells than batches"):
        batch_asw(z[60:], batch[60:], ctype[60:])  # the rare type alone: nothing left


def _rare_batch_data(n=1000):
    """Batch "b" holds 2 of n cells, both of a rare type "R" (5 cells): a random tenth of the
    cells usually misses batch b, and with it every type whose batch ASW is defined."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, 3))
    ctype = np.array(["T"] * (n - 5) + ["R"] * 5)
    batch = np.array(["a"] * (n - 2) + ["b"] * 2)
    return z, batch, ctype


@pytest.mark.parametrize("seed", range(6))
def test_subsampling_never_makes_integration_metrics_fail(seed):
    z, batch, ctype = _rare_batch_data()
    m = integration_metrics(z, batch, ctype, k=10, max_cells=100, seed=seed)
    for name, value in m.to_dict().items():
        assert 0.0 <= value <= 1.0, (name, value)
    with pytest.raises(ValueError, match="two batches"):  # undefined on the full data: still an error
        integration_metrics(z, np.array(["a"] * len(z)), ctype, k=10, max_cells=100, seed=seed)


def test_subsample_is_the_plain_random_subset_when_nothing_is_missing():
    z, types = _separated(groups=2, n_per=100)
    batch = np.array(["a", "b"] * 100)
    keep = np.random.default_rng(7).choice(200, size=150, replace=False)
    sub = integration_metrics(z, batch, types, k=10, max_cells=150, seed=7)
    assert sub == integration_metrics(z[keep], batch[keep], types[keep], k=10, max_cells=None)
