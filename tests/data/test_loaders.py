"""Tests for pvae.data.loaders: real files where present, tiny hand-written files always."""

from __future__ import annotations

import csv
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pvae import DataError
from pvae.data import (
    CausalData,
    check_data,
    csv_header,
    ihdp_split,
    load_csv,
    load_digits,
    load_ihdp,
    load_mnist,
    mnist_10k_split,
)

# The repo is cloned at X; the shared reference data sit beside it at X/../shared.
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
IHDP_DIR = SHARED / "ihdp"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST test IDX files not found in {MNIST_DIR}",
)
needs_ihdp = pytest.mark.skipif(
    not (IHDP_DIR / "ihdp_npci_1.csv").is_file(), reason=f"IHDP CSVs not found in {IHDP_DIR}"
)


# ---------------------------------------------------------------- digits
def test_digits_shape_range_labels():
    ds = load_digits()
    assert ds.x.shape == (1797, 64) and ds.x.dtype == torch.float32
    assert len(ds) == 1797 and ds.name == "digits"
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0, (ds.x.min(), ds.x.max())
    assert ds.y.dtype == torch.int64 and sorted(ds.y.unique().tolist()) == list(range(10))


def test_digits_binarized():
    ds = load_digits(binarize=True)
    values = set(ds.x.unique().tolist())
    assert values == {0.0, 1.0}, values
    assert torch.equal(ds.x, (load_digits().x > 0.5).float())


# ---------------------------------------------------------------- MNIST, real file
@needs_mnist
def test_mnist_real_test_file():
    ds = load_mnist(MNIST_DIR)
    assert ds.x.shape == (10000, 784) and ds.x.dtype == torch.float32
    assert ds.name == "mnist-test"
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    # the published class counts of the MNIST test set (LeCun et al.; e.g. torchvision's MNIST(train=False))
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(ds.y, minlength=10).tolist() == counts
    assert ds.x.sum(1).min() > 0 and len(torch.unique(ds.x[:100], dim=0)) == 100  # no blank or repeated images
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        first_label = f.read(9)[8]  # 8 header bytes: magic, count
    assert int(ds.y[0]) == first_label
    with gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        first_image = np.frombuffer(f.read(16 + 784)[16:], dtype=np.uint8)
    assert torch.allclose(ds.x[0], torch.tensor(first_image / 255.0, dtype=torch.float32))


@needs_mnist
def test_mnist_10k_split_sizes_and_binary():
    train, test = mnist_10k_split(MNIST_DIR)
    assert train.x.shape == (8000, 784) and test.x.shape == (2000, 784)
    assert train.y.shape == (8000,) and test.y.shape == (2000,)
    assert set(torch.cat([train.x, test.x]).unique().tolist()) == {0.0, 1.0}
    full = load_mnist(MNIST_DIR, binarize="static")
    assert torch.equal(test.x, full.x[8000:]) and torch.equal(train.y, full.y[:8000])


# ---------------------------------------------------------------- MNIST, tiny files
def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True,
               image_magic: int = 2051, drop: int = 0) -> None:
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n, rows, cols = images.shape
    img = struct.pack(">IIII", image_magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    with opener(folder / f"t10k-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(img[: len(img) - drop])
    with opener(folder / f"t10k-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 3, 2) * 20
    labels = np.array([7, 3])
    _write_idx(tmp_path, images, labels, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x.shape == (2, 6)
    assert torch.allclose(ds.x, torch.tensor(images.reshape(2, 6) / 255.0, dtype=torch.float32))
    assert ds.y.tolist() == [7, 3] and ds.y.dtype == torch.int64
    binary = load_mnist(tmp_path, binarize="static")
    assert torch.equal(binary.x, (ds.x > 0.5).float())


def test_idx_bad_magic(tmp_path):
    _write_idx(tmp_path, np.zeros((2, 3, 2)), np.array([0, 1]), image_magic=2049)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz has magic number 2049, expected 2051"):
        load_mnist(tmp_path)


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path, np.zeros((2, 3, 2)), np.array([0, 1]), drop=5)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*need 12 data bytes.*got 7"):
        load_mnist(tmp_path)


def test_idx_empty(tmp_path):
    _write_idx(tmp_path, np.zeros((0, 3, 2)), np.array([]))
    with pytest.raises(ValueError, match=r"dims \(0, 3, 2\): expected every dimension >= 1"):
        load_mnist(tmp_path)


def test_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory.*Try passing path="):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*Try"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="binarize must be one of"):
        load_mnist(tmp_path, binarize="dynamic")


# ---------------------------------------------------------------- IHDP, real files
@needs_ihdp
def test_ihdp_real_file():
    data = load_ihdp(IHDP_DIR, replication=1)
    assert isinstance(data, CausalData) and data.name == "ihdp-1"
    assert data.x.shape == (747, 25) and len(data) == 747
    assert set(data.t.unique().tolist()) == {0.0, 1.0}
    assert set(data.x[:, 13].unique().tolist()) == {0.0, 1.0}
    with open(IHDP_DIR / "ihdp_npci_1.csv", newline="") as f:
        row0 = [float(v) for v in next(csv.reader(f))]
    assert data.true_ite[0].item() == pytest.approx(row0[4] - row0[3], rel=1e-6)
    assert data.y[0].item() == pytest.approx(row0[1], rel=1e-6)
    assert data.x[0, 13].item() == row0[5 + 13] - 1
    assert torch.equal(load_ihdp(IHDP_DIR / "ihdp_npci_1.csv").x, data.x)
    sub = data.subset(np.array([0, 2]))
    assert len(sub) == 2 and torch.equal(sub.mu1, data.mu1[[0, 2]])


def test_ihdp_split_protocol():
    train, valid, test = ihdp_split(747, replication=1)
    assert (len(train), len(valid), len(test)) == (470, 202, 75)
    assert np.array_equal(np.sort(np.concatenate([train, valid, test])), np.arange(747))
    perm = np.random.RandomState(1).permutation(747)
    assert np.array_equal(test, perm[:75]) and np.array_equal(valid, perm[75:277])
    again = ihdp_split(747, replication=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    assert not np.array_equal(test, ihdp_split(747, replication=2)[2])
    tr, va, te = ihdp_split(100, replication=0)
    assert (len(tr), len(va), len(te)) == (63, 27, 10)


# ---------------------------------------------------------------- IHDP, tiny files
def _ihdp_row(t: float = 1.0, ncols: int = 30) -> list[str]:
    row = [t, 1.0, 2.0, 0.5, 1.5] + [0.0] * 25
    row[5 + 13] = 2.0  # x14 raw coding {1, 2}
    return [str(v) for v in row[:ncols]]


def _write_csv(file: Path, rows: list[list[str]]) -> Path:
    file.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return file


def test_ihdp_tiny_csv_ok(tmp_path):
    data = load_ihdp(_write_csv(tmp_path / "tiny.csv", [_ihdp_row(1.0), _ihdp_row(0.0)]))
    assert data.x.shape == (2, 25) and data.t.tolist() == [1.0, 0.0]
    assert data.x[:, 13].tolist() == [1.0, 1.0] and data.true_ite.tolist() == [1.0, 1.0]


def test_ihdp_bad_csv(tmp_path):
    bad_t = _write_csv(tmp_path / "bad_t.csv", [_ihdp_row(1.0), _ihdp_row(2.0)])
    with pytest.raises(ValueError, match=r"bad_t\.csv.*'treatment' must be binary.*2\.0 at row 1"):
        load_ihdp(bad_t)
    short = _write_csv(tmp_path / "short.csv", [_ihdp_row(ncols=29)])
    with pytest.raises(ValueError, match=r"short\.csv, line 1: expected 30 columns.*got 29"):
        load_ihdp(short)
    text = _write_csv(tmp_path / "text.csv", [_ihdp_row(), ["abc"] + _ihdp_row()[1:]])
    with pytest.raises(ValueError, match=r"text\.csv, line 2: cannot parse"):
        load_ihdp(text)
    nan_row = _ihdp_row()
    nan_row[3] = "nan"
    with pytest.raises(ValueError, match=r"column 'mu0' is NaN at row 0"):
        load_ihdp(_write_csv(tmp_path / "nan.csv", [nan_row]))
    with pytest.raises(FileNotFoundError, match=r"ihdp_npci_3\.csv.*Try"):
        load_ihdp(tmp_path, replication=3)


# ---------------------------------------------------------------- check_data
def test_check_data_errors_and_passes():
    with pytest.raises(ValueError, match=r"x expected shape \(n, d\), got shape \(5,\)"):
        check_data(torch.zeros(5))
    with pytest.raises(ValueError, match="is empty"):
        check_data(torch.zeros(0, 3))
    x = torch.ones(3, 4)
    x[1, 2] = float("nan")
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"data holds 2 NaN or infinite value\(s\), first at index \(1, 2\).*Try passing mask="):
        check_data(x, name="data")
    out = check_data(x, allow_nan=True)
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.isnan(out).sum() == 2
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"1 infinite value\(s\), first at index \(0, 0\)"):
        check_data(x, allow_nan=True)
    ints = check_data(torch.arange(6).reshape(3, 2).t())
    assert ints.dtype == torch.float32 and ints.is_contiguous() and ints.shape == (2, 3)


# ---------------------------------------------------------------- byte-order marks (Excel's "CSV UTF-8")
BOM = "\ufeff".encode("utf-8")  # EF BB BF


def test_load_csv_byte_order_mark_is_neither_data_loss_nor_a_header(tmp_path):
    headerless = tmp_path / "bom.csv"
    headerless.write_bytes(BOM + b"1,2\n3,4\n5,6\n")
    assert load_csv(headerless).x.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]  # row (1, 2) kept
    header = tmp_path / "bom_header.csv"
    header.write_bytes(BOM + b"a,b\n1,NA\n")
    data = load_csv(header)
    assert data.x.shape == (1, 2) and data.x[0, 0] == 1.0 and torch.isnan(data.x[0, 1])
    assert data.columns == ("a", "b") and load_csv(headerless).columns is None  # the BOM is not in a name


def test_ihdp_csv_with_byte_order_mark(tmp_path):
    plain = _write_csv(tmp_path / "plain.csv", [_ihdp_row(1.0), _ihdp_row(0.0)])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(BOM + plain.read_bytes())
    a, b = load_ihdp(plain), load_ihdp(bom)
    assert torch.equal(a.x, b.x) and torch.equal(a.t, b.t) and torch.equal(a.y, b.y)


def test_load_csv_reads_chosen_columns_and_leaves_text_columns_alone(tmp_path):
    table = tmp_path / "patients.csv"
    table.write_text("id,age,t,visit,y\nP01,31,1,2024-01-02,5.5\nP02,,0,2024-02-03,NA\n")
    assert csv_header(table) == ("id", "age", "t", "visit", "y")
    data = load_csv(table, columns=["y", 1, "t"])  # by name or 0-based position, in this order
    assert data.columns == ("y", "age", "t")
    torch.testing.assert_close(data.x, torch.tensor([[5.5, 31.0, 1.0], [math.nan, math.nan, 0.0]]), equal_nan=True)
    with pytest.raises(DataError, match=r"line 2, column 1: 'P01' is not a number.*columns=\[\.\.\.\] without"):
        load_csv(table)
    with pytest.raises(DataError, match=r"no column named 'sex': its columns are \['id', 'age'"):
        load_csv(table, columns=["sex"])
    with pytest.raises(DataError, match="twice"):
        load_csv(table, columns=["t", 2])
    with pytest.raises(DataError, match=r"not a position .* 5 columns \(0 to 4\)"):
        load_csv(table, columns=[5])
    headerless = tmp_path / "plain.csv"
    headerless.write_text("1,2\n3,4\n")
    assert csv_header(headerless) is None and load_csv(headerless, columns=[1]).x.tolist() == [[2.0], [4.0]]
    with pytest.raises(DataError, match="it has no header row"):
        load_csv(headerless, columns=["a"])
