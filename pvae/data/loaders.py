"""Offline loaders for the real data sets pvae's tests and benchmarks use.

Nothing here downloads: scikit-learn's digits ship with scikit-learn, and MNIST
(IDX files) and IHDP (CSV files) are read from a path the caller gives. Every
loader returns a frozen dataclass of float32 tensors, checked on the way in, so
that a bad file fails here, with its name, rather than deep inside a fit.

References

1. LeCun, Bottou, Bengio, Haffner (1998). Gradient-based learning applied to
   document recognition. (MNIST and the IDX format.)
2. Hill (2011). Bayesian nonparametric modeling for causal inference. (IHDP.)
3. Louizos, Shalit, Mooij, Sontag, Zemel, Welling (2017). Causal effect
   inference with deep latent-variable models. (The IHDP npci replications
   and the 63/27/10 split protocol.)
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ..inputs import DataError, as_data

__all__ = [
    "IHDP_COLUMNS",
    "CausalData",
    "Dataset",
    "check_data",
    "ihdp_split",
    "load_csv",
    "load_digits",
    "load_ihdp",
    "load_mnist",
    "mnist_10k_split",
]

IHDP_COLUMNS: tuple[str, ...] = ("treatment", "y_factual", "y_cfactual", "mu0", "mu1") + tuple(
    f"x{i}" for i in range(1, 26)
)
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim
_BINARIZE = (None, "static")
_MISSING_TOKENS = {"", "na", "nan", "n/a", "null"}


def check_data(x: torch.Tensor, *, name: str = "x", allow_nan: bool = False) -> torch.Tensor:
    """Check a data matrix and return it as a contiguous float32 tensor.

    :param torch.Tensor x: data of shape ``(n, d)``: one row per data point.
    :param str name: the argument's name, used in error messages. Default ``"x"``.
    :param bool allow_nan: let NaN entries (missing values) through; infinities
        are always rejected. Default False.
    :returns: ``x`` as a float32 contiguous tensor of shape ``(n, d)``.
    :rtype: torch.Tensor
    :raises DataError: if ``x`` is not 2-D, is empty, or holds non-finite values
        (:class:`~pvae.inputs.DataTypeError` if it holds no numbers).
    """
    x = as_data(x, name, dtype=torch.float32)
    if x.dim() != 2:
        raise DataError(
            f"{name} expected shape (n, d), got shape {tuple(x.shape)}. "
            f"Try {name}.reshape(len({name}), -1) to flatten each data point."
        )
    if x.numel() == 0:
        raise DataError(f"{name} is empty: expected shape (n, d) with n, d >= 1, got {tuple(x.shape)}.")
    x = x.contiguous()
    bad = torch.isinf(x) if allow_nan else ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        what = "infinite" if allow_nan else "NaN or infinite"
        raise DataError(
            f"{name} holds {int(bad.sum())} {what} value(s), first at index {first}; expected "
            f"finite values. Try passing mask=... (True = observed) to a function that supports "
            f"missing data, or drop or impute those entries."
        )
    return x


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data matrix with optional labels.

    :param torch.Tensor x: float32 features of shape ``(n, d)`` (images flattened).
    :param y: int64 labels of shape ``(n,)``, or None.
    :type y: torch.Tensor or None
    :param str name: a short identifier such as ``"mnist-test"``.
    :param columns: the names of ``x``'s columns (a CSV's header row), or None.
    :type columns: tuple[str, ...] or None
    """

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.y is not None and self.y.shape != (len(self.x),):
            raise DataError(
                f"Dataset {self.name!r}: y expected shape ({len(self.x)},), got {tuple(self.y.shape)}."
            )

    def __len__(self) -> int:
        return len(self.x)


def _check_binarize(binarize: object) -> None:
    if binarize not in _BINARIZE:
        raise ValueError(f"binarize must be one of {_BINARIZE}, got {binarize!r}.")


def _is_number(cell: str) -> bool:
    if cell.strip().lower() in _MISSING_TOKENS:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_rows(file: Path, first_only: bool = False) -> tuple[tuple[str, ...] | None, list[tuple[int, list[str]]], int]:
    """The header (None without one), the non-blank data rows with their line
    numbers, and the file's width (its first row's). ``first_only``: read no
    further than the first non-blank row (enough for the header)."""
    if not file.is_file():
        raise FileNotFoundError(f"CSV file not found: {file}. Try the path of an existing numeric CSV file.")
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            rows = ((i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row))
            lines = list(itertools.islice(rows, 1) if first_only else rows)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{file} is not a readable CSV text file ({err}). Try a UTF-8 numeric CSV.") from None
    width = len(lines[0][1]) if lines else 0  # the header's width, when there is one
    header = None
    if lines and not all(_is_number(c) for c in lines[0][1]):
        header = tuple(c.strip() for c in lines[0][1])
        lines = lines[1:]
    return header, lines, width


def csv_header(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The names in a CSV file's header row, as :func:`load_csv` reads it (its first
    row, when any cell of it is not a number), or None when the file has none.

    :param path: the CSV file.
    :type path: str or os.PathLike
    :raises FileNotFoundError: if the file is missing.
    :raises DataError: on a file that is not text.
    """
    return _csv_rows(Path(path), first_only=True)[0]


def load_csv(path: str | os.PathLike, columns: Sequence[int | str] | None = None) -> Dataset:
    """Load a numeric CSV file as a data matrix (one row per data point).

    The file is UTF-8 text, with or without a byte-order mark (Excel's "CSV
    UTF-8" writes one). The first row is taken as a header when any of its
    cells is not a number. Empty cells and ``NA``, ``NaN``, ``N/A``, ``null`` (any case) are missing
    values and become NaN: pass ``mask=~torch.isnan(x)`` to the program.
    With ``columns``, only those columns are read, in that order, so other
    columns may hold text (identifiers, dates); such a file needs a header row.

    :param path: the CSV file.
    :type path: str or os.PathLike
    :param columns: the columns to read, by header name or 0-based position.
        Default None: all of them.
    :returns: a :class:`Dataset` with float32 ``x`` of shape ``(n, d)``, no
        labels, named after the file, with the header's names of its columns as
        ``columns`` (None without a header).
    :rtype: Dataset
    :raises FileNotFoundError: if the file is missing.
    :raises DataError: on a file that is not text, no data rows, a ragged row,
        a cell that is not a number, an infinite value (naming the line and
        column), or an unknown, repeated or out-of-range column in ``columns``.
    """
    file = Path(path)
    header, lines, width = _csv_rows(file)
    if not lines:
        raise DataError(f"{file} holds no data rows. Try a CSV with one numeric row per data point.")
    chosen = list(range(width)) if columns is None else [_csv_column(file, c, header, width) for c in columns]
    if len(set(chosen)) != len(chosen):
        raise DataError(f"columns {list(columns or ())} name a column of {file} twice. Try each column once.")
    values = []
    for line_no, row in lines:
        if len(row) != width:
            raise DataError(
                f"{file}, line {line_no}: expected {width} columns (as in the first row), got {len(row)}. "
                "Try the same number of cells in every row (empty cells for missing values)."
            )
        cells = [row[j] for j in chosen]
        for col, cell in zip(chosen, cells):
            if not _is_number(cell):
                raise DataError(
                    f"{file}, line {line_no}, column {col + 1}: {cell.strip()!r} is not a number. "
                    "Try a numeric CSV (an optional header row, empty or NaN cells for missing values)"
                    + (", or columns=[...] without that column." if header is not None else ".")
                )
        values.append([math.nan if c.strip().lower() in _MISSING_TOKENS else float(c) for c in cells])
    x = check_data(torch.tensor(values, dtype=torch.float64).reshape(len(values), len(chosen)), name=str(file),
                   allow_nan=True)
    names = None if header is None else tuple(header[j] for j in chosen)
    return Dataset(x, None, file.stem, names)


def _csv_column(file: Path, column: int | str, header: tuple[str, ...] | None, width: int) -> int:
    """The 0-based position of ``column`` (a header name or a position) in ``file``."""
    if isinstance(column, str):
        if header is None or column not in header:
            known = f"its columns are {list(header)}" if header is not None else "it has no header row"
            raise DataError(f"{file} has no column named {column!r}: {known}. Try one of those names.")
        if header.count(column) > 1:
            raise DataError(f"{file} has {header.count(column)} columns named {column!r}. Try its position.")
        return header.index(column)
    if isinstance(column, bool) or not isinstance(column, numbers.Integral) or not 0 <= column < width:
        raise DataError(f"column {column!r} is not a position in {file}, which has {width} columns (0 to "
                        f"{width - 1}). Try a header name or a 0-based position.")
    return int(column)


def load_digits(binarize: bool = False, threshold: float = 0.5) -> Dataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (offline).

    :param bool binarize: return ``(x > threshold)`` as 0/1 floats. Default False.
    :param float threshold: binarisation threshold on the [0, 1] scale. Default 0.5.
    :returns: a :class:`Dataset` named ``"digits"`` with ``x`` of shape
        ``(1797, 64)`` in [0, 1] (pixel counts divided by 16) and ``y`` of shape
        ``(1797,)`` in 0..9.
    :rtype: Dataset
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    data, target = _sk_load_digits(return_X_y=True)
    x = torch.as_tensor(data, dtype=torch.float32) / 16.0
    if binarize:
        x = (x > threshold).float()
    return Dataset(x=x, y=torch.as_tensor(target, dtype=torch.int64), name="digits")


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file not found: expected {folder / (stem + '.gz')} (or the un-gzipped "
        f"{stem}). Try passing path= the folder holding the IDX files, e.g. ../shared/data/mnist."
    )


def _read_idx(file: Path, kind: Literal["images", "labels"]) -> np.ndarray:
    """Read one IDX file as a uint8 array of shape ``(n, rows, cols)`` or ``(n,)``."""
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {file}: {e}. Try re-copying the file.") from e
    magic = _IDX_MAGIC[kind]
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"IDX file {file} is truncated: expected a header of {header} bytes, got {len(raw)}."
        )
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(
            f"IDX file {file} has magic number {got}, expected {magic} ({kind}). "
            f"Try the matching *-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte file."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if 0 in dims:
        raise DataError(f"IDX file {file} has dims {dims}: expected every dimension >= 1.")
    want = math.prod(dims)
    if len(raw) - header != want:
        raise DataError(
            f"IDX file {file} has the wrong size: dims {dims} need {want} data bytes after the "
            f"header, got {len(raw) - header}. The file is truncated or corrupt; try re-copying it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(
    path: str | os.PathLike,
    split: Literal["train", "test"] = "test",
    binarize: Literal[None, "static"] = None,
    threshold: float = 0.5,
) -> Dataset:
    """Read MNIST from its IDX files (gzipped or not) in the folder ``path``.

    :param path: folder holding ``t10k-images-idx3-ubyte.gz`` and
        ``t10k-labels-idx1-ubyte.gz`` (``train-...`` for the training split).
    :type path: str or os.PathLike
    :param str split: ``"train"`` or ``"test"``. Default ``"test"``.
    :param binarize: None for grey values in [0, 1] (pixel / 255), or
        ``"static"`` for the fixed 0/1 image ``pixel / 255 > threshold``. Default None.
    :param float threshold: static binarisation threshold. Default 0.5.
    :returns: a :class:`Dataset` named ``"mnist-<split>"`` with ``x`` of shape
        ``(n, 784)`` float32 and ``y`` of shape ``(n,)`` int64 (n = 10000 for test).
    :rtype: Dataset
    :raises FileNotFoundError: if the folder or one of its two files is missing.
    :raises ValueError: if a file's header, dimensions or size are wrong.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of ('train', 'test'), got {split!r}.")
    _check_binarize(binarize)
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MNIST folder not found: {folder.resolve()} is not a directory. "
            f"Try passing path= the folder holding the IDX files, e.g. ../shared/data/mnist."
        )
    prefix = "t10k" if split == "test" else "train"
    images_file = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_file, "images")
    labels = _read_idx(labels_file, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} "
            f"labels; expected equal counts. Try files from the same MNIST split."
        )
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    if binarize == "static":
        x = (x > threshold).float()
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x=x, y=y, name=f"mnist-{split}")


def mnist_10k_split(
    path: str | os.PathLike, binarize: Literal[None, "static"] = "static", threshold: float = 0.5
) -> tuple[Dataset, Dataset]:
    """The "MNIST-10k split": the official 10k test file cut into 8000 / 2000.

    Only the test file is available offline, so benchmarks train on its first
    8000 images and test on its last 2000.

    :param path: folder holding the ``t10k-*`` IDX files.
    :type path: str or os.PathLike
    :param binarize: ``"static"`` (``pixel / 255 > threshold``) or None. Default ``"static"``.
    :param float threshold: static binarisation threshold. Default 0.5.
    :returns: ``(train, test)`` datasets with ``x`` of shapes ``(8000, 784)`` and ``(2000, 784)``.
    :rtype: tuple[Dataset, Dataset]
    """
    full = load_mnist(path, split="test", binarize=binarize, threshold=threshold)
    if len(full) != 10000:
        raise DataError(f"MNIST-10k split expected 10000 test images, got {len(full)}.")
    train = Dataset(x=full.x[:8000], y=full.y[:8000], name="mnist10k-train")
    test = Dataset(x=full.x[8000:], y=full.y[8000:], name="mnist10k-test")
    return train, test


@dataclass(frozen=True, eq=False)
class CausalData:
    """Covariates, treatment and (counter)factual outcomes of a causal benchmark.

    :param torch.Tensor x: covariates of shape ``(n, 25)``.
    :param torch.Tensor t: binary treatment of shape ``(n,)``.
    :param torch.Tensor y: factual outcome of shape ``(n,)``.
    :param torch.Tensor y_cf: counterfactual outcome of shape ``(n,)``.
    :param torch.Tensor mu0: noiseless outcome under control, shape ``(n,)``.
    :param torch.Tensor mu1: noiseless outcome under treatment, shape ``(n,)``.
    :param str name: e.g. ``"ihdp-1"``.
    """

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    y_cf: torch.Tensor
    mu0: torch.Tensor
    mu1: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        n = len(self.x)
        for field in ("t", "y", "y_cf", "mu0", "mu1"):
            shape = tuple(getattr(self, field).shape)
            if shape != (n,):
                raise DataError(f"CausalData {self.name!r}: {field} expected shape ({n},), got {shape}.")

    @property
    def true_ite(self) -> torch.Tensor:
        """True individual treatment effects ``mu1 - mu0``, shape ``(n,)``."""
        return self.mu1 - self.mu0

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray | torch.Tensor | slice) -> CausalData:
        """Rows ``index`` (integer indices, a bool mask or a slice) as a new :class:`CausalData`."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return CausalData(
            x=self.x[index], t=self.t[index], y=self.y[index], y_cf=self.y_cf[index],
            mu0=self.mu0[index], mu1=self.mu1[index], name=self.name,
        )


def _read_ihdp_csv(file: Path) -> np.ndarray:
    rows = []
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(IHDP_COLUMNS):
                    raise DataError(
                        f"{file}, line {line_no}: expected {len(IHDP_COLUMNS)} columns "
                        f"({IHDP_COLUMNS[0]}, ..., x25), got {len(row)}. Try an ihdp_npci_<r>.csv file."
                    )
                try:
                    rows.append([float(cell) for cell in row])
                except ValueError as e:
                    raise DataError(
                        f"{file}, line {line_no}: cannot parse a number ({e}). "
                        f"Try a headerless numeric CSV."
                    ) from None
    except (UnicodeDecodeError, csv.Error) as err:  # binary junk, NUL bytes, a runaway quoted field
        raise DataError(f"{file} is not a readable CSV text file ({err}). Try a UTF-8 ihdp_npci_<r>.csv file.") from None
    if not rows:
        raise DataError(f"{file} holds no rows: expected 747 rows of {len(IHDP_COLUMNS)} numbers.")
    return np.asarray(rows, dtype=np.float64)


def load_ihdp(path: str | os.PathLike, replication: int = 1) -> CausalData:
    """Load one IHDP npci replication (Hill 2011; Louizos et al. 2017).

    The CSV has no header and 30 columns: ``treatment, y_factual, y_cfactual,
    mu0, mu1, x1, ..., x25``. Covariate ``x14`` is coded {1, 2} in the file and
    shifted to {0, 1} here, as the CEVAE reference code does.

    :param path: a CSV file, or a folder holding ``ihdp_npci_<replication>.csv``.
    :type path: str or os.PathLike
    :param int replication: replication number (1..10 in the standard set),
        used when ``path`` is a folder. Default 1.
    :returns: a :class:`CausalData` named ``"ihdp-<replication>"`` (or the
        file's stem) with ``x`` of shape ``(747, 25)``.
    :rtype: CausalData
    :raises FileNotFoundError: if the file is missing.
    :raises ValueError: on parse errors, a wrong column count, NaN or infinite values, a
        non-binary treatment or ``x14`` outside {1, 2}.
    """
    file = Path(path)
    if file.is_dir():
        file = file / f"ihdp_npci_{replication}.csv"
        name = f"ihdp-{replication}"
    else:
        name = file.stem
    if not file.is_file():
        raise FileNotFoundError(
            f"IHDP file not found: {file.resolve()}. Try passing path= the folder holding "
            f"ihdp_npci_1.csv ... ihdp_npci_10.csv (e.g. ../shared/data/ihdp) or a CSV file."
        )
    data = _read_ihdp_csv(file)
    nan = np.isnan(data)
    if nan.any():
        row, col = (int(i) for i in np.argwhere(nan)[0])
        raise DataError(
            f"{file}: column {IHDP_COLUMNS[col]!r} is NaN at row {row} and "
            f"{int(nan.sum()) - 1} other entries; expected no missing values. Try imputing them."
        )
    big = np.abs(data) > np.finfo(np.float32).max  # inf, or infinite once read as float32
    if big.any():
        row, col = (int(i) for i in np.argwhere(big)[0])
        raise DataError(
            f"{file}: column {IHDP_COLUMNS[col]!r} holds {float(data[row, col])} at row {row}; expected "
            f"finite values (within float32 range). Try the unmodified npci CSV."
        )
    t, x = data[:, 0], data[:, 5:].copy()
    if not np.isin(t, (0.0, 1.0)).all():
        row = int(np.flatnonzero(~np.isin(t, (0.0, 1.0)))[0])
        raise DataError(
            f"{file}: column 'treatment' must be binary {{0, 1}}, got {float(t[row])} at row {row}. "
            f"Try checking the column order (treatment first)."
        )
    x14 = x[:, 13]
    if not np.isin(x14, (1.0, 2.0)).all():
        raise DataError(
            f"{file}: column 'x14' expected the raw coding {{1, 2}}, got values "
            f"{np.unique(x14).tolist()[:5]}. Try the unmodified npci CSV."
        )
    x[:, 13] -= 1.0

    def col(j: int) -> torch.Tensor:
        return torch.as_tensor(data[:, j], dtype=torch.float32)

    return CausalData(
        x=torch.as_tensor(x, dtype=torch.float32), t=col(0), y=col(1), y_cf=col(2),
        mu0=col(3), mu1=col(4), name=name,
    )


def ihdp_split(n: int, replication: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices by the IHDP 63/27/10 protocol.

    ``perm = np.random.RandomState(replication).permutation(n)``; the first
    ``n_test = round(0.10 n)`` entries are test, the next ``n_valid =
    round(0.27 n)`` validation and the rest training (rounding half up). For
    ``n = 747`` this is exactly the published protocol: 75 test, 202
    validation, 470 training.

    :param int n: number of rows, e.g. 747.
    :param int replication: the replication number, used as the seed.
    :returns: ``(train, valid, test)`` int64 index arrays of shapes
        ``(n - n_valid - n_test,)``, ``(n_valid,)``, ``(n_test,)``.
    :rtype: tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 10:
        raise ValueError(f"n expected an integer >= 10 (rows to split), got {n!r}.")
    if isinstance(replication, bool) or not isinstance(replication, (int, np.integer)) or replication < 0:
        raise ValueError(f"replication expected a non-negative integer seed, got {replication!r}.")
    perm = np.random.RandomState(int(replication)).permutation(int(n)).astype(np.int64)
    n_test = int(math.floor(0.10 * n + 0.5))
    n_valid = int(math.floor(0.27 * n + 0.5))
    return perm[n_test + n_valid :], perm[n_test : n_test + n_valid], perm[:n_test]
