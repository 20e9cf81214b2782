"""ArrayDataset (pvae.data.streaming) in one process: what it reads, that it never changes
the user's data, and the order of its shuffled epochs. The memory measurements and the
Lightning path are in tests/test_lightning.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvae.data import ArrayDataset
from pvae.inputs import DataError, DataTypeError


def _epoch(loader) -> torch.Tensor:
    return torch.cat([batch[0] for batch in loader])


@pytest.mark.parametrize("mode", ["c", "r+"])
def test_streaming_never_discards_the_edits_made_to_a_writable_memory_map(tmp_path, mode):
    """A copy-on-write map ("c": edits in memory only, e.g. standardising in place) used to
    have its pages handed back (MADV_DONTNEED) after each batch, which threw the edits away:
    the user's array silently went back to the file's values, and epoch 2 trained on them."""
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((64, 4), dtype=np.float32))
    a = np.load(path, mmap_mode=mode)
    a[:] = 7.0
    ds = ArrayDataset(a)
    assert torch.equal(ds.__getitems__([0, 1])[0], torch.full((2, 4), 7.0))
    assert np.all(a == 7.0)  # every row of the user's array, not only the ones read
    epochs = [_epoch(ds.loader(batch_size=16, shuffle=True)) for _ in range(2)]
    assert all(torch.all(e == 7.0) for e in epochs)
    assert np.all(a == 7.0)
    if mode == "c":
        assert np.all(np.load(path) == 0.0)  # and the file itself is untouched


def test_read_only_memory_maps_still_hand_their_pages_back(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    np.save(path, x)
    calls = []
    real = ArrayDataset._read_mapped

    def spy(a, index):
        calls.append(a.mode)
        return real(a, index)

    monkeypatch.setattr(ArrayDataset, "_read_mapped", staticmethod(spy))
    for mode in ("r", "c", "r+"):
        rows = ArrayDataset(np.load(path, mmap_mode=mode)).__getitems__([5, 2])[0]
        assert np.array_equal(rows.numpy(), x[[5, 2]])
    assert calls == ["r"]  # the hand-back path, for the read-only map only


def test_array_dataset_reads_rows_of_a_dataframe_and_refuses_bad_input_with_a_data_error():
    pd = pytest.importorskip("pandas")
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    frame = pd.DataFrame(x, columns=list("abcd"), index=np.arange(100, 110))  # index labels are not positions
    labels = pd.Series(np.arange(10) % 3, index=np.arange(10)[::-1])
    ds = ArrayDataset(frame, labels)
    rows, codes = ds.__getitems__([2, 0, 7])
    assert rows.shape == (3, 4) and np.array_equal(rows.numpy(), x[[2, 0, 7]])  # rows, not columns
    assert codes.dtype == torch.long and codes.tolist() == [2, 0, 1]
    assert np.array_equal(_epoch(ds.loader(batch_size=3, shuffle=False)).numpy(), x)
    lists = ArrayDataset(x.tolist())  # nested lists convert too
    assert np.array_equal(lists.__getitems__([9])[0].numpy(), x[[9]])
    with pytest.raises(DataTypeError, match="non-numeric"):
        ArrayDataset(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    with pytest.raises(DataError, match="same number of rows"):
        ArrayDataset(frame, labels[:5])
    with pytest.raises(DataError, match="0-d"):
        ArrayDataset(np.float32(3.0))


def test_a_shuffled_epoch_reads_every_row_exactly_once_in_a_fresh_order():
    n, batch_size = 103, 10  # a partial last batch
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 2)
    ds = ArrayDataset(x, dtype=torch.float64)
    loader = ds.loader(batch_size=batch_size, shuffle=True)
    torch.manual_seed(0)
    first, second = _epoch(loader), _epoch(loader)
    for epoch in (first, second):
        assert epoch.shape == (n, 2) and torch.equal(epoch[:, 0], epoch[:, 1])
        assert sorted(epoch[:, 0].long().tolist()) == list(range(n))  # a permutation: no row twice, none left out
    assert not torch.equal(first, second) and not torch.equal(first[:, 0], x[:, 0])  # shuffled, afresh
    assert [len(b[0]) for b in loader] == [batch_size] * 10 + [3]
    # the global seed, or a generator, fixes the order
    torch.manual_seed(0)
    assert torch.equal(_epoch(loader), first)
    orders = [_epoch(ds.loader(batch_size=batch_size, generator=torch.Generator().manual_seed(5))) for _ in range(2)]
    assert torch.equal(orders[0], orders[1]) and sorted(orders[0][:, 0].long().tolist()) == list(range(n))
