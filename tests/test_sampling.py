import numpy as np
import pytest
import torch

from recoder_dist.sampling import Batch, UserRows, make_batches, retarget, sample_targets

NUM_ITEMS = 50


def random_rows(num_users: int, seed: int = 0) -> UserRows:
    rng = np.random.default_rng(seed)
    item_lists = [np.sort(rng.choice(NUM_ITEMS, size=rng.integers(1, 8), replace=False))
                  for _ in range(num_users)]
    value_lists = [rng.random(len(x)).astype(np.float32) + 0.5 for x in item_lists]
    return UserRows.from_lists(np.arange(100, 100 + num_users), item_lists, value_lists)


def test_from_lists_slice_concat_roundtrip():
    rows = UserRows.from_lists([7, 8, 9], [[1, 2], [], [3, 4, 5]], [[1.0, 2.0], [], [3, 4, 5]])
    assert len(rows) == 3
    assert rows.offsets.tolist() == [0, 2, 2, 5]
    assert rows.items.dtype == np.int64 and rows.values.dtype == np.float32
    tail = rows.slice(1, 3)
    assert tail.user_idx.tolist() == [8, 9]
    assert tail.offsets.tolist() == [0, 0, 3]
    assert tail.items.tolist() == [3, 4, 5]
    assert rows.slice(2, 99).items.tolist() == [3, 4, 5]
    joined = UserRows.concat([rows.slice(0, 1), tail])
    for name in ("user_idx", "offsets", "items", "values"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(rows, name))
    assert UserRows.from_lists([1], [[4]]).values.tolist() == [1.0]


def test_user_rows_rejects_inconsistent_offsets():
    with pytest.raises(ValueError, match="offsets end at 3"):
        UserRows(np.array([0]), np.array([0, 3]), np.array([1, 2]), np.array([1.0, 1.0]))


def test_sample_targets_union_only_is_exact():
    items = np.array([5, 3, 5, 9, 3])
    out = sample_targets(items, NUM_ITEMS, 0, np.random.default_rng(0))
    assert out.tolist() == [3, 5, 9]
    assert out.dtype == np.int64


@pytest.mark.parametrize("seed", range(5))
def test_sample_targets_negatives_are_new_distinct_and_uniform_support(seed):
    positives = np.array([0, 1, 2, 10, 11, 49])
    out = sample_targets(positives, NUM_ITEMS, 20, np.random.default_rng(seed))
    assert len(out) == len(positives) + 20
    assert np.all(np.diff(out) > 0)  # sorted, no duplicates
    assert set(positives) <= set(out.tolist())
    assert out.min() >= 0 and out.max() < NUM_ITEMS


def test_sample_targets_covers_all_non_positives():
    positives = np.array([0, 3, 4, 9])
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        negatives = set(sample_targets(positives, 10, 2, rng).tolist()) - set(positives.tolist())
        assert len(negatives) == 2
        seen |= negatives
    assert seen == {1, 2, 5, 6, 7, 8}


def test_sample_targets_caps_at_catalogue():
    out = sample_targets(np.array([1, 3]), 5, 100, np.random.default_rng(0))
    assert out.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [5, -1])
def test_sample_targets_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 5\)"):  # a negative id must not wrap around
        sample_targets(np.array([1, bad]), 5, 0, np.random.default_rng(0))


def dense(batch: Batch, width: int) -> torch.Tensor:
    out = torch.zeros(batch.num_users, width)
    out[batch.rows, batch.target_cols] = batch.values
    return out


# the union and the target columns are computed with arrays over the catalogue when it is small
# next to a group's interactions, by sorting and searching when it is large: both must agree
@pytest.mark.parametrize("num_items", [NUM_ITEMS, 10**7])
def test_make_batches_groups_share_exact_union(num_items):
    rows = random_rows(23)
    batches = list(make_batches(rows, batch_size=4, num_sampling_users=8, num_items=num_items,
                                rng=np.random.default_rng(0)))
    assert [b.num_users for b in batches] == [4, 4, 4, 4, 4, 3]  # ceil(23 / 4)
    for g, group_batches in enumerate([batches[0:2], batches[2:4], batches[4:6]]):
        group = rows.slice(8 * g, 8 * g + 8)
        expected = np.unique(group.items)
        for b in group_batches:
            assert b.target_items is group_batches[0].target_items
            assert b.target_items.tolist() == expected.tolist()
    # the interactions round-trip through target_cols, in order
    items = torch.cat([b.target_items[b.target_cols] for b in batches])
    assert items.tolist() == rows.items.tolist()
    assert torch.cat([b.values for b in batches]).tolist() == rows.values.tolist()
    first = rows.slice(0, 4)
    assert batches[0].offsets.tolist() == first.offsets.tolist()
    expected_rows = np.repeat(np.arange(4), np.diff(first.offsets))
    assert batches[0].rows.tolist() == expected_rows.tolist()


def test_make_batches_negatives_shared_and_outside_union():
    rows = random_rows(16, seed=3)
    batches = list(make_batches(rows, batch_size=4, num_sampling_users=8, num_items=NUM_ITEMS,
                                num_neg_samples=5, rng=np.random.default_rng(0)))
    for g in range(2):
        union = set(rows.slice(8 * g, 8 * g + 8).items.tolist())
        targets = batches[2 * g].target_items
        assert torch.equal(targets, batches[2 * g + 1].target_items)
        assert len(targets) == len(union) + 5
        assert union <= set(targets.tolist())


def test_make_batches_default_group_is_batch():
    rows = random_rows(6)
    batches = list(make_batches(rows, batch_size=3, num_sampling_users=0, num_items=NUM_ITEMS))
    assert batches[1].target_items.tolist() == np.unique(rows.slice(3, 6).items).tolist()


def test_make_batches_rejects_group_not_multiple_of_batch():
    with pytest.raises(ValueError, match="multiple"):
        next(make_batches(random_rows(6), batch_size=4, num_sampling_users=6,
                          num_items=NUM_ITEMS))


def test_make_batches_full_mode():
    rows = random_rows(5)
    batches = list(make_batches(rows, batch_size=2, num_sampling_users=4, num_items=NUM_ITEMS,
                                num_neg_samples=3, full=True))
    assert len(batches) == 3
    for b in batches:
        assert b.target_items is None
        assert torch.equal(b.target_cols, b.items)
    np.testing.assert_array_equal(torch.cat([b.items for b in batches]).numpy(), rows.items)


def test_retarget_to_superset_keeps_dense_targets():
    rows = random_rows(4, seed=5)
    batch = next(make_batches(rows, batch_size=4, num_sampling_users=4, num_items=NUM_ITEMS))
    extra = torch.tensor([i for i in range(NUM_ITEMS) if i % 3 == 0], dtype=torch.int64)
    superset = torch.unique(torch.cat([batch.target_items, extra]))
    moved = retarget(batch, superset)
    assert moved.target_items is superset
    assert torch.equal(superset[moved.target_cols], batch.items)
    # the same dense matrix restricted to the old columns
    assert torch.equal(dense(moved, len(superset))[:, torch.searchsorted(superset,
                                                                         batch.target_items)],
                       dense(batch, len(batch.target_items)))
    assert moved.offsets is batch.offsets and moved.values is batch.values


def test_retarget_rejects_missing_item():
    batch = next(make_batches(UserRows.from_lists([0], [[2, 7]]), 1, 1, NUM_ITEMS))
    with pytest.raises(ValueError, match=r"missing from target_items, e.g. \[7\]"):
        retarget(batch, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="missing"):
        retarget(batch, torch.tensor([2, 3, 9]))
    with pytest.raises(ValueError, match="sorted"):
        retarget(batch, torch.tensor([7, 2]))


def test_batch_to_moves_every_tensor_and_keeps_full_mode():
    rows = random_rows(3)
    for full in (False, True):
        batch = next(make_batches(rows, 3, 3, NUM_ITEMS, full=full))
        moved = batch.to("cpu")
        assert moved.num_users == 3
        assert (moved.target_items is None) == full
        assert torch.equal(moved.target_cols, batch.target_cols)
