"""Single-cell counts in and out of AnnData (the ``[anndata]`` extra).

:func:`from_anndata` reads a count matrix (a layer, or ``X``; dense, sparse or
backed on disk), the batch of each cell as integer codes and, optionally, its
labels, as :class:`CountData` (or, with ``stream=True``, a
:class:`~pvae.data.CountDataset` that reads a backed file's rows batch by
batch); :func:`write_latent` stores an embedding in
``adata.obsm`` (``"X_pvae"``, where scvi-tools puts ``"X_scVI"``).
:func:`read_counts` reads any rows of the matrix, the one reader behind both,
so a streaming loader can take a backed file a block of rows at a time.

Missing values are refused, never guessed: a count that is not a
non-negative whole number, and a cell whose batch (label) is missing
(NaN or None in ``adata.obs``), raise a :class:`~pvae.inputs.DataError`
rather than becoming a silent extra batch named ``"nan"``.

Batch codes follow the sorted batch names unless ``batch_categories`` are
given: pass the training data's ``CountData.batch_categories`` when reading
new data for a trained model, so that codes mean the same batches, and a batch
the model never saw is an error rather than a silent relabelling.

Reference: I. Virshup, S. Rybakov, F. J. Theis, P. Angerer, F. A. Wolf.
anndata: Access and store annotated data matrices. JOSS 9, 2024.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..inputs import DataError
from .streaming import CountDataset

__all__ = ["CountData", "from_anndata", "read_counts", "write_latent"]

INSTALL_HINT = 'pip install "pvae-pyro[anndata]"  (or: pip install anndata)'


def require_anndata() -> Any:
    """Import :mod:`anndata`, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module("anndata")
    except ImportError as err:
        raise ImportError(f"pvae.data.from_anndata needs the package 'anndata' ({err}). Try: {INSTALL_HINT}") from err


@dataclass(frozen=True, eq=False)
class CountData:
    """Counts of cells with their batches (and labels), ready for a count program.

    :ivar torch.Tensor counts: ``(cells, genes)`` counts (float, non-negative integers).
    :ivar torch.Tensor batch: ``(cells,)`` int64 codes into ``batch_categories``.
    :ivar labels: ``(cells,)`` int64 codes into ``label_categories``, or None.
    :ivar tuple batch_categories: the batch name of each code.
    :ivar label_categories: the label name of each code, or None.
    :ivar tuple genes: gene names (``adata.var_names``).
    """

    counts: torch.Tensor
    batch: torch.Tensor
    labels: torch.Tensor | None
    batch_categories: tuple[str, ...]
    label_categories: tuple[str, ...] | None
    genes: tuple[str, ...]

    @property
    def args(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts, batch)``: the positional data of :class:`~pvae.models.CountVAE`
        (``pvae.fit(model, data.args)``)."""
        return self.counts, self.batch


def _matrix(adata: Any, layer: str | None) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        have = sorted(adata.layers.keys())
        raise DataError(
            f"adata has no layer {layer!r}; its layers are {have}. Try layer=None to read adata.X"
            + (f", or layer={have[0]!r}." if have else ".")
        )
    return adata.layers[layer]


def _row_index(rows: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """Integer row indices (a bool mask, or negative indices counting from the end) as int64 in 0..n-1."""
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    index = np.asarray(rows)
    if index.dtype == bool:
        if index.shape != (n,):
            raise IndexError(f"a boolean row mask must have shape ({n},) (one per cell), got {index.shape}.")
        return np.flatnonzero(index)
    if index.size == 0:
        return np.zeros(0, dtype=np.int64)
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise IndexError(f"rows must be a 1-D sequence of integer indices, a bool mask or a slice, got {rows!r}.")
    index = index.astype(np.int64)
    if index.min() < -n or index.max() >= n:
        raise IndexError(f"row indices must lie in -{n}..{n - 1} for {n} cells, "
                         f"got {int(index.min())}..{int(index.max())}.")
    return np.where(index < 0, index + n, index)


def read_counts(adata: Any, rows: Sequence[int] | slice | None = None, layer: str | None = "counts",
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows of the count matrix as a dense float tensor, checked to be counts.

    Dense arrays, SciPy sparse matrices and backed (on-disk) matrices, dense or
    sparse, all read the same way; only the requested rows are read, and they
    come back in the order asked (a backed file is read in increasing row
    order, then reordered; repeated rows are read once).

    :param adata: an ``anndata.AnnData`` (backed or in memory).
    :param rows: integer row indices (in any order, negative ones counting from
        the end), a bool mask of the cells, or a slice; None: all cells.
    :param str layer: a key of ``adata.layers``, or None for ``adata.X``.
        Default ``"counts"``, where scvi-tools' users keep raw counts.
    :param dtype: Default ``torch.get_default_dtype()``.
    :raises DataError: for a missing layer, or entries that are not
        non-negative whole numbers (normalised or log-transformed data).
    :raises IndexError: for row indices out of range.
    """
    block = _matrix(adata, layer)
    inverse = None
    if rows is None:
        if not isinstance(block, np.ndarray) and hasattr(block, "to_memory"):
            block = block.to_memory()  # a backed sparse matrix: np.asarray of it is a 0-d object array
    elif isinstance(rows, slice):
        block = block[rows]
    else:
        index = _row_index(rows, int(adata.n_obs))
        if index.size > 1 and not (np.diff(index) > 0).all():
            # backed (HDF5) matrices read only strictly increasing rows: read those, then reorder
            index, inverse = np.unique(index, return_inverse=True)
        block = block[index]
    if hasattr(block, "toarray"):
        block = block.toarray()
    block = np.asarray(block)
    if block.ndim != 2:
        raise DataError(f"the count matrix must be 2-D (cells, genes), got shape {block.shape}.")
    if inverse is not None:
        block = block[inverse.reshape(-1)]
    if block.dtype.kind not in "biuf":
        raise DataError(f"the count matrix must be numeric, got dtype {block.dtype}.")
    bad = ~np.isfinite(block) | (block < 0) | (block != np.floor(block)) if block.dtype.kind == "f" else block < 0
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise DataError(
            f"{where} must hold raw counts (non-negative integers); found {int(bad.sum())} other entries, "
            f"e.g. [{i}, {j}] = {block[i, j]!r}. Normalised or log-transformed data are not counts: "
            "try the layer that keeps the raw counts."
        )
    return torch.as_tensor(block, dtype=dtype or torch.get_default_dtype())


def _codes(adata: Any, key: str, categories: Sequence[str] | None, what: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    if key not in adata.obs.columns:
        raise DataError(
            f"adata.obs has no column {key!r} for the {what}; its columns are {list(adata.obs.columns)}."
        )
    column = adata.obs[key]
    missing = column.isna().to_numpy()
    if missing.any():
        first = str(adata.obs_names[int(np.flatnonzero(missing)[0])])
        raise DataError(
            f"adata.obs[{key!r}] has no {what} for {int(missing.sum())} of {len(missing)} cells (missing values, "
            f"e.g. cell {first!r}); a missing {what} is not a {what} of its own. Try dropping those cells "
            f"(adata[adata.obs[{key!r}].notna()]) or naming their {what} explicitly."
        )
    values = column.astype(str).to_numpy()
    if categories is None:
        categories = tuple(sorted(set(values)))
    categories = tuple(str(c) for c in categories)
    index = {c: i for i, c in enumerate(categories)}
    unseen = sorted(set(values) - set(index))
    if unseen:
        raise DataError(
            f"adata.obs[{key!r}] has {what} values {unseen[:5]} not among the {len(categories)} known ones "
            f"{list(categories)[:10]}: a model cannot decode a {what} it never saw in training."
        )
    return torch.as_tensor(np.array([index[v] for v in values], dtype=np.int64)), categories


def from_anndata(
    adata: Any,
    layer: str | None = "counts",
    batch_key: str | None = "batch",
    labels_key: str | None = None,
    *,
    batch_categories: Sequence[str] | None = None,
    label_categories: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    stream: bool = False,
) -> CountData | CountDataset:
    """Read counts, batches and labels from an AnnData object.

    With ``stream=True`` nothing of the count matrix is read here: a
    :class:`~pvae.data.CountDataset` reads each batch's rows when a loader asks
    (``from_anndata(anndata.read_h5ad(path, backed="r"), stream=True).loader(256)``),
    for files larger than memory; codes and categories are as without it.

    :param adata: an ``anndata.AnnData``, or the path of an ``.h5ad`` file
        (read in full).
    :param str layer: a key of ``adata.layers``, or None for ``adata.X``.
        Default ``"counts"``.
    :param str batch_key: the ``adata.obs`` column of batches; None: one batch.
    :param str labels_key: an ``adata.obs`` column of labels (cell types), or None.
    :param batch_categories: the batch name of each code, e.g. a training set's
        ``CountData.batch_categories``; default the sorted names present.
    :param label_categories: likewise for the labels.
    :param dtype: of the counts. Default ``torch.get_default_dtype()``.
    :param bool stream: return a :class:`~pvae.data.CountDataset` that reads rows on
        demand (for a backed file) instead of reading the matrix. Default False.
    :raises DataError: for a missing layer or column, non-count entries, a cell
        without a batch (label), i.e. a missing value (NaN, None) in the column, or a
        batch (label) not among ``batch_categories`` (``label_categories``).
    """
    anndata = require_anndata()
    if not isinstance(adata, anndata.AnnData):
        adata = anndata.read_h5ad(adata)
    _matrix(adata, layer)  # a missing layer fails here, streamed or not
    if batch_key is None:
        batch, batches = torch.zeros(adata.n_obs, dtype=torch.long), ("0",)
    else:
        batch, batches = _codes(adata, batch_key, batch_categories, "batch")
    labels = label_names = None
    if labels_key is not None:
        labels, label_names = _codes(adata, labels_key, label_categories, "label")
    if stream:
        return CountDataset(adata, layer, batch, labels, batches, label_names, dtype)
    counts = read_counts(adata, layer=layer, dtype=dtype)
    return CountData(counts=counts, batch=batch, labels=labels, batch_categories=batches,
                     label_categories=label_names, genes=tuple(str(g) for g in adata.var_names))


def write_latent(adata: Any, latent: Any, key: str = "X_pvae") -> None:
    """Store an embedding ``(cells, dim)`` in ``adata.obsm[key]`` (as scvi-tools stores ``"X_scVI"``).

    :param adata: the ``anndata.AnnData`` the cells came from.
    :param latent: ``(cells, dim)`` tensor or array, e.g.
        ``pvae.analysis.encode_mean(model, *data.args)``.
    :param str key: Default ``"X_pvae"``.
    :raises DataError: if the number of rows is not the number of cells.
    """
    z = np.asarray(latent.detach().cpu() if isinstance(latent, torch.Tensor) else latent)
    if z.ndim != 2 or z.shape[0] != adata.n_obs:
        raise DataError(f"latent must have shape ({adata.n_obs}, dim) (one row per cell), got {z.shape}.")
    adata.obsm[key] = z
