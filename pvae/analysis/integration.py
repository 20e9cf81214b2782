"""How well an embedding integrates batches and keeps biology (scib's measures).

For an embedding :math:`Z` of cells (latent means, PCA scores, anything
``(cells, dim)``), with batch labels :math:`s` and cell-type labels :math:`k`:

* **batch mixing** (:func:`batch_mixing_entropy`): for each cell, the entropy
  of the batch labels among its :math:`K` nearest neighbours, over
  :math:`\\log B`, averaged over cells. 1 when every neighbourhood holds the
  batches in equal shares, 0 when every neighbourhood is one batch (Haghverdi
  et al. 2018; Lopez et al. 2018 report it for scVI).
* **batch ASW** (:func:`batch_asw`): within each cell type, the silhouette of
  the batch labels, :math:`1 - |s(i)|` averaged over the type's cells, then
  over types (Luecken et al. 2022, scib). 1: batches indistinguishable inside
  every type; 0: separated.
* **cell-type ASW** (:func:`cell_type_asw`): the silhouette of the cell-type
  labels rescaled to [0, 1], :math:`(s + 1) / 2` (scib). Higher: types apart.
* **kNN cell-type accuracy** (:func:`knn_accuracy`): leave-one-out accuracy
  of the majority cell type among each cell's :math:`K` nearest neighbours.

The silhouette of cell :math:`i` with mean distance :math:`a(i)` to its own
group and :math:`b(i)` to the nearest other group is
:math:`s(i) = (b - a) / \\max(a, b)` (Rousseeuw 1987), by scikit-learn.

References

1. M. D. Luecken et al. Benchmarking atlas-level data integration in
   single-cell genomics. Nature Methods 19, 2022 (scib: batch ASW, cell-type ASW).
2. L. Haghverdi, A. T. L. Lun, M. D. Morgan, J. C. Marioni. Batch effects in
   single-cell RNA-sequencing data are corrected by matching mutual nearest
   neighbors. Nature Biotechnology 36, 2018 (entropy of batch mixing).
3. R. Lopez et al. Deep generative modeling for single-cell transcriptomics.
   Nature Methods 15, 2018.
4. P. J. Rousseeuw. Silhouettes. J. Comput. Appl. Math. 20, 1987.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import silhouette_samples, silhouette_score
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "IntegrationMetrics",
    "batch_asw",
    "batch_mixing_entropy",
    "cell_type_asw",
    "integration_metrics",
    "knn_accuracy",
]


def _as_arrays(embedding: Any, *labels: Any) -> tuple[np.ndarray, ...]:
    z = np.asarray(embedding.detach().cpu() if hasattr(embedding, "detach") else embedding, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embedding must be 2-D (cells, dim), got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError("embedding has NaN or infinite entries.")
    out = [z]
    for lab in labels:
        lab = np.asarray(lab.detach().cpu() if hasattr(lab, "detach") else lab)
        if lab.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},) (one per cell), got {lab.shape}.")
        out.append(np.unique(lab, return_inverse=True)[1])
    return tuple(out)


def _neighbours(z: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(cells, k)`` of each cell's k nearest other cells."""
    if not 1 <= k < z.shape[0]:
        raise ValueError(f"k must lie in 1..{z.shape[0] - 1} (cells - 1), got {k!r}.")
    index = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)
    # drop each cell itself (not always column 0 when points coincide)
    rows = np.arange(z.shape[0])[:, None]
    keep = index != rows
    keep[keep.sum(1) > k, -1] = False  # a cell not found among its own neighbours: drop the farthest
    return index[keep].reshape(z.shape[0], k)


def batch_mixing_entropy(embedding: Any, batch: Any, k: int = 50) -> float:
    """Mean normalised entropy of the batch labels among each cell's ``k`` nearest neighbours.

    .. math::

        E = \\frac{1}{N} \\sum_i \\frac{-\\sum_b p_{ib} \\log p_{ib}}{\\log B}, \\qquad
        p_{ib} = \\frac{|\\{j \\in N_k(i) : s_j = b\\}|}{k},

    in [0, 1]: 1 for neighbourhoods with every batch in equal shares, 0 for
    neighbourhoods of one batch. With batches of unequal sizes, or random
    labels, the value stays below 1 (a plug-in entropy of k draws is biased
    down by about :math:`(B-1) / (2 k \\log B)`).

    :param embedding: ``(cells, dim)``.
    :param batch: ``(cells,)`` batch labels (any hashable values).
    :param int k: neighbours (the cell itself excluded). Default 50.
    """
    z, s = _as_arrays(embedding, batch)
    num_batches = int(s.max()) + 1
    if num_batches < 2:
        raise ValueError("batch mixing needs at least two batches.")
    nbr = s[_neighbours(z, k)]
    p = np.stack([(nbr == b).mean(1) for b in range(num_batches)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return float(h.mean() / np.log(num_batches))


def batch_asw(embedding: Any, batch: Any, cell_type: Any) -> float:
    """scib's batch ASW: :math:`\\frac{1}{K} \\sum_k \\frac{1}{|C_k|} \\sum_{i \\in C_k} (1 - |s_\\text{batch}(i)|)`.

    The silhouette of the batch labels is taken among the cells of each cell
    type :math:`C_k`. As scib does, a type is skipped (left out of the mean
    over types) when its silhouette is undefined: when its cells come from one
    batch only, or from as many batches as it has cells (every batch a single
    cell, e.g. a rare type of 3 cells from 3 batches). 1: inside every type the
    batches overlap; 0: they are apart.

    :param embedding: ``(cells, dim)``.
    :param batch: ``(cells,)`` batch labels.
    :param cell_type: ``(cells,)`` cell-type labels.
    :raises ValueError: when every type is skipped (no type has cells of at
        least two batches and more cells than batches).
    """
    z, s, k = _as_arrays(embedding, batch, cell_type)
    scores = []
    for t in range(int(k.max()) + 1):
        inside = k == t
        if not _asw_defined(s[inside]):
            continue
        scores.append(float((1 - np.abs(silhouette_samples(z[inside], s[inside]))).mean()))
    if not scores:
        raise ValueError("batch ASW needs a cell type with cells from at least two batches and more cells "
                         "than batches; every type here has one batch, or one cell per batch.")
    return float(np.mean(scores))


def _asw_defined(batches: np.ndarray) -> bool:
    """Whether one type's batch silhouette is defined: 2 <= batches <= cells - 1 (scikit-learn, scib)."""
    return 2 <= len(np.unique(batches)) < len(batches)


def _subsample(s: np.ndarray, t: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Indices of a random subset of ``max_cells`` cells, topped up (a few cells over ``max_cells``,
    appended) where the subset lost what a measure needs and the full data have: every batch and
    every cell type, one type whose batch ASW is defined, and more cells than types."""
    rng = np.random.default_rng(seed)
    n = len(s)
    keep = rng.choice(n, size=max_cells, replace=False)
    chosen = np.zeros(n, dtype=bool)
    chosen[keep] = True
    added: list[int] = []

    def add(candidates: np.ndarray) -> None:
        i = int(candidates[rng.integers(len(candidates))])
        chosen[i] = True
        added.append(i)

    for labels in (s, t):
        for value in np.setdiff1d(labels, labels[chosen]):
            add(np.flatnonzero(labels == value))
    types = [u for u in np.unique(t) if _asw_defined(s[t == u])]
    if types and not any(_asw_defined(s[chosen & (t == u)]) for u in types):
        u = max(types, key=lambda u: int((chosen & (t == u)).sum()))
        while not _asw_defined(s[chosen & (t == u)]):
            spare = ~chosen & (t == u)
            have = np.unique(s[chosen & (t == u)])
            # a second batch first; then a second cell of a batch already in
            pick = spare & (~np.isin(s, have) if len(have) < 2 else np.isin(s, have))
            add(np.flatnonzero(pick if pick.any() else spare))
    while chosen.sum() <= len(np.unique(t)) < n:  # a silhouette needs more cells than labels
        add(np.flatnonzero(~chosen))
    return np.concatenate([keep, np.asarray(added, dtype=keep.dtype)])


def cell_type_asw(embedding: Any, cell_type: Any) -> float:
    """Cell-type silhouette rescaled to [0, 1]: :math:`(\\bar s + 1) / 2` (scib).

    :param embedding: ``(cells, dim)``.
    :param cell_type: ``(cells,)`` cell-type labels (at least two types).
    """
    z, k = _as_arrays(embedding, cell_type)
    if k.max() < 1:
        raise ValueError("cell-type ASW needs at least two cell types.")
    return float((silhouette_score(z, k) + 1) / 2)


def knn_accuracy(embedding: Any, cell_type: Any, k: int = 15) -> float:
    """Leave-one-out accuracy of the majority label among each cell's ``k`` nearest neighbours.

    Ties go to the smallest label code.

    :param embedding: ``(cells, dim)``.
    :param cell_type: ``(cells,)`` labels.
    :param int k: neighbours (the cell itself excluded). Default 15.
    """
    z, y = _as_arrays(embedding, cell_type)
    votes = y[_neighbours(z, k)]
    counts = np.stack([(votes == c).sum(1) for c in range(int(y.max()) + 1)], axis=1)
    return float((counts.argmax(1) == y).mean())


@dataclass(frozen=True)
class IntegrationMetrics:
    """The four integration measures of one embedding (all in [0, 1], higher better).

    :ivar float batch_mixing: :func:`batch_mixing_entropy`.
    :ivar float batch_asw: :func:`batch_asw`.
    :ivar float cell_type_asw: :func:`cell_type_asw`.
    :ivar float knn_accuracy: :func:`knn_accuracy`.
    """

    batch_mixing: float
    batch_asw: float
    cell_type_asw: float
    knn_accuracy: float

    def to_dict(self) -> dict[str, float]:
        """The measures by name."""
        return asdict(self)


def integration_metrics(embedding: Any, batch: Any, cell_type: Any, k: int = 50,
                        k_accuracy: int = 15, max_cells: int | None = 10000,
                        seed: int = 0) -> IntegrationMetrics:
    """All four measures of an embedding.

    :param embedding: ``(cells, dim)``.
    :param batch: ``(cells,)`` batch labels.
    :param cell_type: ``(cells,)`` cell-type labels.
    :param int k: neighbours of the batch mixing entropy. Default 50.
    :param int k_accuracy: neighbours of the kNN accuracy. Default 15.
    :param int max_cells: evaluate on a random subset of this many cells (the
        silhouettes cost :math:`O(N^2)`); None: all. Default 10000. Where the
        random subset lacks something a measure needs that the full data have
        (a batch, a cell type, a type whose batch ASW is defined), a few cells
        are added to it, so that subsampling never makes a measure fail.
    :param int seed: of the subset.
    :raises ValueError: when a measure is undefined on the full data (e.g. one
        batch), or for a ``k`` (``k_accuracy``) not below the number of cells evaluated.
    """
    z, s, t = _as_arrays(embedding, batch, cell_type)
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer))
                                  or max_cells < 1):
        raise ValueError(f"max_cells must be a positive integer or None, got {max_cells!r}.")
    if max_cells is not None and z.shape[0] > max_cells:
        keep = _subsample(s, t, int(max_cells), seed)
        z, s, t = z[keep], s[keep], t[keep]
    return IntegrationMetrics(
        batch_mixing=batch_mixing_entropy(z, s, k),
        batch_asw=batch_asw(z, s, t),
        cell_type_asw=cell_type_asw(z, t),
        knn_accuracy=knn_accuracy(z, t, k_accuracy),
    )
