"""CSR row arithmetic against direct per-row loops, for numpy arrays and torch tensors."""
import numpy as np
import pytest
import torch

from recoder_dist.csr import entry_rows, offsets_of, take_rows

LENGTHS = [3, 0, 2, 1, 0, 4]


def test_offsets_of_lengths_start_at_zero_and_add_up():
    expected = [0]
    for n in LENGTHS:
        expected.append(expected[-1] + n)
    got = offsets_of(np.array(LENGTHS, dtype=np.int32))
    assert got.dtype == np.int64 and got.tolist() == expected
    got = offsets_of(torch.tensor(LENGTHS, dtype=torch.int32))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64 and got.tolist() == expected
    assert offsets_of(np.zeros(0, dtype=np.int64)).tolist() == [0]
    assert offsets_of(torch.zeros(0, dtype=torch.int64)).tolist() == [0]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_entry_rows_names_the_row_of_every_entry(kind):
    expected = [row for row, n in enumerate(LENGTHS) for _ in range(n)]
    offsets = offsets_of(np.array(LENGTHS))
    if kind == "torch":
        offsets = torch.from_numpy(offsets)
        assert entry_rows(offsets, nnz=sum(LENGTHS)).tolist() == expected
    got = entry_rows(offsets)
    assert got.tolist() == expected and got.dtype in (np.int64, torch.int64)


def test_take_rows_gathers_rows_in_the_order_asked_repeats_included():
    offsets = offsets_of(np.array(LENGTHS))
    flat = np.arange(100, 100 + offsets[-1])  # entry values that name their old position
    rows = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(LENGTHS))]
    pick = np.array([5, 0, 1, 5, 3])
    new, index = take_rows(offsets, pick)
    assert new.tolist() == offsets_of(np.array([LENGTHS[p] for p in pick])).tolist()
    assert [flat[index][new[i]:new[i + 1]].tolist() for i in range(len(pick))] == [rows[p] for p in pick]
    empty, none = take_rows(offsets, np.zeros(0, dtype=np.int64))
    assert empty.tolist() == [0] and none.size == 0
