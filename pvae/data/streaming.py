"""Data larger than memory: datasets that read only the rows a batch asks for.

:class:`ArrayDataset` serves rows of arrays that may live on disk, such as a
memory-mapped NumPy file (``numpy.load(path, mmap_mode="r")``); a backed AnnData
file streams through :func:`pvae.data.from_anndata` with ``stream=True``
(:class:`CountDataset`). Both fetch a whole batch at once (``__getitems__``:
one sorted read per batch, not one per row) and come with :meth:`loader`, a
``torch.utils.data.DataLoader`` that :func:`pvae.fit` and the Lightning path
(:mod:`pvae.lightning`, which gives each process its shard) take as data.

Memory: the pages of a memory-mapped file that a process has read count in its
resident set until the kernel needs them back, so an epoch over a 2 GB file
would show a 2 GB process; and since a page fault maps the pages around the
one asked for (fault-around, 64 KiB, or the whole page-cache folio, up to 2 MiB
on recent kernels: measured on Linux 6.18), even one batch of 256 scattered
rows maps most of a 256 MB file. :class:`ArrayDataset` reads a ``numpy.memmap``
``RELEASE_ROWS`` (16) rows at a time and hands the pages back after each
group (``madvise(MADV_DONTNEED)``; the file stays in the page cache, so a
second epoch reads it from memory): the process holds about one batch and a
few tens of MiB of mapped pages, whatever the file's size.

Only read-only maps (``mmap_mode="r"``) are handed back. On a copy-on-write map
(``mmap_mode="c"``, used to standardise or impute in place without touching the
file) the edited pages exist nowhere else, and ``MADV_DONTNEED`` would throw the
user's edits away; writable maps (``"r+"``, ``"w+"``) are left alone too. Such
maps are read like any other array: their pages stay resident.
"""

from __future__ import annotations

import mmap
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ..inputs import DataError, as_data

__all__ = ["RELEASE_ROWS", "ArrayDataset", "CountDataset"]

#: rows of a memory map read between two hand-backs of its pages: a fault maps the page-cache
#: folio around the row (up to 2 MiB on kernels with large folios), so at most ~32 MiB mapped
RELEASE_ROWS = 16


def _identity(batch: Any) -> Any:
    return batch


class _IndexBatches(BatchSampler):
    """A ``BatchSampler`` whose batches are slices of one index tensor (8 bytes a row) rather
    than lists of Python integers (about 36 bytes a row: 300 MB for 8 million rows). The
    order is a ``RandomSampler``'s (the same generator, the same permutation); any other
    sampler (Lightning's ``DistributedSampler``) is batched as ``BatchSampler`` does."""

    def __iter__(self):
        sampler = self.sampler
        if not isinstance(sampler, (RandomSampler, SequentialSampler)) or \
                (isinstance(sampler, RandomSampler) and (sampler.replacement or sampler.num_samples != len(sampler.data_source))):
            yield from super().__iter__()
            return
        n = len(sampler.data_source)
        if isinstance(sampler, RandomSampler):
            generator = sampler.generator
            if generator is None:  # as RandomSampler draws its seed
                generator = torch.Generator()
                generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size].numpy()


class _BatchDataset(Dataset):
    """Rows fetched a batch at a time; :meth:`loader` builds the matching DataLoader."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _rows(self, index: np.ndarray) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The rows ``indices`` (in that order) of every array, read in increasing order."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row indices must lie in 0..{len(self) - 1}, got {int(index.min())}..{int(index.max())}.")
        order = np.argsort(index, kind="stable")
        rows = self._rows(index[order])
        inverse = torch.as_tensor(np.argsort(order, kind="stable"))
        return tuple(r.index_select(0, inverse) for r in rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(r[0] for r in self.__getitems__([int(i)]))

    def loader(self, batch_size: int = 128, shuffle: bool = True, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` of batches (tuples of tensors), one read per batch.

        :param int batch_size: rows per batch. Default 128.
        :param bool shuffle: a fresh random order every epoch. Default True.
        :param kwargs: more ``DataLoader`` options (``num_workers``, ``generator``, ...).
        """
        generator = kwargs.pop("generator", None)
        sampler = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        return DataLoader(self, batch_sampler=_IndexBatches(sampler, batch_size, False), collate_fn=_identity,
                          generator=generator, **kwargs)


class ArrayDataset(_BatchDataset):
    """Rows of arrays sharing their first dimension, read a batch at a time.

    Any array that supports NumPy fancy indexing works: in-memory arrays,
    ``numpy.load(path, mmap_mode="r")`` memory maps (their pages are handed back
    after every batch, see the module docstring; copy-on-write and writable maps
    are read without that, so edits made in memory are kept), h5py datasets.
    Anything else (a pandas DataFrame or Series, nested lists) is converted once
    with :func:`pvae.inputs.as_data`, in memory.

    Example::

        x = np.load("big.npy", mmap_mode="r")          # (n, features), never loaded
        pvae.fit(vae, ArrayDataset(x).loader(batch_size=256), num_epochs=1)

    :param arrays: one or more arrays ``(n, ...)`` (e.g. data and a mask).
    :param dtype: floating dtype of floating arrays. Default ``torch.get_default_dtype()``;
        integer and bool arrays keep theirs.
    :raises DataError: on no arrays, arrays of different lengths, a 0-d array, or
        values that are not numbers or bools.
    """

    def __init__(self, *arrays: Any, dtype: torch.dtype | None = None) -> None:
        if not arrays:
            raise DataError("ArrayDataset needs at least one array.")
        arrays = tuple(self._indexable(a, f"arrays[{i}]", dtype) for i, a in enumerate(arrays))
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise DataError(f"the arrays must have the same number of rows, got {[len(a) for a in arrays]}.")
        for i, a in enumerate(arrays):
            of = getattr(a, "dtype", np.float64)
            kind = "f" if isinstance(of, torch.dtype) and of.is_floating_point else (
                "i" if isinstance(of, torch.dtype) else np.dtype(of).kind)
            if kind not in "biuf":
                raise DataError(f"array {i} must be numeric or bool, got dtype {getattr(a, 'dtype', None)}.")
        self.arrays, self.dtype = arrays, dtype or torch.get_default_dtype()

    @staticmethod
    def _indexable(a: Any, name: str, dtype: torch.dtype | None) -> Any:
        """``a`` itself when rows can be read from it by NumPy fancy indexing (tensors, NumPy
        arrays and memory maps, h5py / zarr datasets); anything else converted with
        :func:`pvae.inputs.as_data` (a DataFrame's ``a[index]`` would select columns)."""
        pandas = type(a).__module__.partition(".")[0] == "pandas"
        lazy = isinstance(a, (torch.Tensor, np.ndarray)) or (
            not pandas and hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "__getitem__"))
        if not lazy:
            a = as_data(a, name, kind="any", dtype=dtype)
        if len(a.shape) == 0:
            raise DataError(f"{name} must have one row per data point, got a 0-d array. Try a 1-d or 2-d array.")
        return a

    def __len__(self) -> int:
        return len(self.arrays[0])

    def _rows(self, index: np.ndarray) -> tuple[torch.Tensor, ...]:
        out = []
        for a in self.arrays:
            if isinstance(a, torch.Tensor):
                t = a.index_select(0, torch.as_tensor(index, device=a.device))
            elif isinstance(getattr(a, "_mmap", None), mmap.mmap) and getattr(a, "mode", None) == "r":
                # read-only maps only: handing back the pages of a copy-on-write ("c") map
                # discards the user's in-memory edits, so others are read as plain arrays
                t = torch.from_numpy(self._read_mapped(a, index))
            else:
                t = torch.from_numpy(np.array(a[index]))
            out.append(t.to(self.dtype) if t.is_floating_point() else t)
        return tuple(out)

    @staticmethod
    def _read_mapped(a: np.memmap, index: np.ndarray) -> np.ndarray:
        """Rows of a read-only memory map, ``RELEASE_ROWS`` at a time, handing the mapped
        pages back after each group (see the module docstring). Never for a map opened
        with another mode: ``MADV_DONTNEED`` would discard a copy-on-write map's edits."""
        block = np.empty((len(index), *a.shape[1:]), dtype=a.dtype)
        for start in range(0, len(index), RELEASE_ROWS):
            block[start:start + RELEASE_ROWS] = a[index[start:start + RELEASE_ROWS]]
            a._mmap.madvise(mmap.MADV_DONTNEED)
        return block


class CountDataset(_BatchDataset):
    """Cells of an AnnData file streamed a batch at a time: ``(counts, batch)`` rows
    (and ``labels`` with ``labels_key``), as :func:`pvae.data.from_anndata` with
    ``stream=True`` returns it for a backed file (``anndata.read_h5ad(path, backed="r")``).

    Only the batch's rows of the count matrix are read
    (:func:`pvae.data.read_counts`, checked to be counts); batch and label codes
    (one integer per cell) are held in memory.

    :ivar tuple batch_categories: the batch name of each code.
    :ivar label_categories: the label name of each code, or None.
    :ivar tuple genes: gene names.
    """

    def __init__(self, adata: Any, layer: str | None, batch: torch.Tensor, labels: torch.Tensor | None,
                 batch_categories: tuple[str, ...], label_categories: tuple[str, ...] | None,
                 dtype: torch.dtype | None = None) -> None:
        self.adata, self.layer, self.dtype = adata, layer, dtype
        self.batch, self.labels = batch, labels
        self.batch_categories, self.label_categories = batch_categories, label_categories
        self.genes = tuple(str(g) for g in adata.var_names)

    def __len__(self) -> int:
        return int(self.adata.n_obs)

    def _rows(self, index: np.ndarray) -> tuple[torch.Tensor, ...]:
        from .single_cell import read_counts  # single_cell imports this module

        counts = read_counts(self.adata, index, layer=self.layer, dtype=self.dtype)
        rows = torch.as_tensor(index)
        codes = (self.batch[rows],) + (() if self.labels is None else (self.labels[rows],))
        return (counts, *codes)
