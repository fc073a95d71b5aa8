"""The prepare job's pure transforms on small hand-made frames (exact numbers)."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from pipeline import transform

PAIRS = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("item_id", T.StringType()),
                      T.StructField("value", T.DoubleType())])
RAW = T.StructType([*PAIRS.fields, T.StructField("timestamp", T.DoubleType())])
INDEXED = T.StructType([T.StructField("user_idx", T.LongType()), T.StructField("item_idx", T.IntegerType()),
                        T.StructField("value", T.DoubleType())])


def as_dict(frame, key=("user_id", "item_id"), value="value"):
    return {tuple(r[k] for k in key): r[value] for r in frame.collect()}


# --- merge_duplicates -----------------------------------------------------------------------

DUPLICATES = [("u1", "a", 1.0, 10.0), ("u1", "a", 3.0, 5.0), ("u1", "a", 2.0, 20.0),
              ("u1", "b", 4.0, None),
              ("u1", "c", 8.0, 1.0), ("u1", "c", 7.0, None),
              ("u2", "a", 5.0, 1.0)]


@pytest.mark.parametrize("how, expected", [
    ("sum", {("u1", "a"): 6.0, ("u1", "b"): 4.0, ("u1", "c"): 15.0, ("u2", "a"): 5.0}),
    ("max", {("u1", "a"): 3.0, ("u1", "b"): 4.0, ("u1", "c"): 8.0, ("u2", "a"): 5.0}),
    # latest timestamp wins; a missing timestamp counts as oldest
    ("last", {("u1", "a"): 2.0, ("u1", "b"): 4.0, ("u1", "c"): 8.0, ("u2", "a"): 5.0}),
])
def test_merge_duplicates(spark, how, expected):
    merged = transform.merge_duplicates(spark.createDataFrame(DUPLICATES, RAW), how)
    assert merged.columns == ["user_id", "item_id", "value", "rows"]
    assert as_dict(merged) == expected
    assert as_dict(merged, value="rows") == {("u1", "a"): 3, ("u1", "b"): 1, ("u1", "c"): 2, ("u2", "a"): 1}


def test_merge_duplicates_by_extra_keys(spark):
    rows = spark.createDataFrame([("bad", None, None, 1.0, None), ("bad", None, None, None, None),
                                  ("odd", None, None, 2.0, None), (None, "u", "a", 3.0, 1.0),
                                  (None, "u", "a", 4.0, 2.0)],
                                 "reason string, user_id string, item_id string, value double, timestamp double")
    merged = transform.merge_duplicates(rows, "sum", keys=("reason", "user_id", "item_id"))
    assert as_dict(merged, key=("reason", "user_id", "item_id"), value="rows") == {
        ("bad", None, None): 2, ("odd", None, None): 1, (None, "u", "a"): 2}
    assert as_dict(merged, key=("reason", "user_id", "item_id"))[(None, "u", "a")] == 7.0


def test_merge_duplicates_rejects_unknown_policy(spark):
    with pytest.raises(ValueError, match="unknown duplicates policy 'first'"):
        transform.merge_duplicates(spark.createDataFrame(DUPLICATES, RAW), "first")


# --- apply_threshold ------------------------------------------------------------------------

def test_apply_threshold(spark):
    pairs = spark.createDataFrame([("u", "a", 0.0), ("u", "b", 1.0), ("u", "c", 3.5), ("u", "d", 4.0),
                                   ("v", "a", 5.0)], PAIRS)
    assert as_dict(transform.apply_threshold(pairs, 3.5, False)) == {("u", "d"): 4.0, ("v", "a"): 5.0}
    assert as_dict(transform.apply_threshold(pairs, 3.5, True)) == {("u", "d"): 1.0, ("v", "a"): 1.0}
    # threshold 0 keeps every positive value, drops zeros
    assert as_dict(transform.apply_threshold(pairs, 0.0, False)) == {
        ("u", "b"): 1.0, ("u", "c"): 3.5, ("u", "d"): 4.0, ("v", "a"): 5.0}


# --- filter_min_counts ----------------------------------------------------------------------

# u4 has one item (c): dropping it leaves c with one user (u3), dropping c leaves u3 with one
# item (a), which only the second round's user rule removes.
CASCADE = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c"), ("u4", "c")]


def cascade(spark):
    return spark.createDataFrame([(u, i, 1.0) for u, i in CASCADE], PAIRS)


def test_filter_min_counts_iterates_until_stable(spark):
    result = transform.filter_min_counts(cascade(spark), min_user=2, min_item=2, max_rounds=10)
    assert sorted(tuple(r) for r in result.pairs.select("user_id", "item_id").collect()) == [
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert (result.dropped_by_user_count, result.dropped_by_item_count, result.rounds) == (2, 1, 2)


def test_filter_min_counts_single_rules(spark):
    only_users = transform.filter_min_counts(cascade(spark), min_user=2, min_item=1, max_rounds=10)
    assert only_users.pairs.count() == 6
    assert (only_users.dropped_by_user_count, only_users.dropped_by_item_count, only_users.rounds) == (1, 0, 1)
    only_items = transform.filter_min_counts(cascade(spark), min_user=1, min_item=3, max_rounds=10)
    assert sorted(r["item_id"] for r in only_items.pairs.collect()) == ["a", "a", "a"]
    assert (only_items.dropped_by_user_count, only_items.dropped_by_item_count, only_items.rounds) == (0, 4, 1)
    nothing = transform.filter_min_counts(cascade(spark), min_user=1, min_item=1, max_rounds=10)
    assert (nothing.pairs.count(), nothing.dropped_by_user_count, nothing.dropped_by_item_count,
            nothing.rounds) == (7, 0, 0, 0)


def test_filter_min_counts_can_empty_everything(spark):
    result = transform.filter_min_counts(cascade(spark), min_user=3, min_item=1, max_rounds=10)
    assert (result.pairs.count(), result.dropped_by_user_count) == (0, 7)


def test_filter_min_counts_gives_up_after_max_rounds(spark):
    with pytest.raises(ValueError, match="did not converge in 1 rounds"):
        transform.filter_min_counts(cascade(spark), min_user=2, min_item=2, max_rounds=1)


# --- split_users ----------------------------------------------------------------------------

USERS = pd.Series([f"user{n:03d}" for n in range(100)])


def test_split_users_fractions_and_counts():
    users = transform.split_users(USERS, 0.1, 0.2, seed=1)
    assert list(users.columns) == ["user_idx", "user_id", "split"]
    assert users["user_idx"].tolist() == list(range(100)) and users["user_idx"].dtype == np.int64
    assert users["split"].value_counts().to_dict() == {"train": 70, "test": 20, "validation": 10}
    assert sorted(users["user_id"]) == sorted(USERS)  # every user exactly once: splits are disjoint
    counted = transform.split_users(USERS, 5, 7, seed=1)
    assert counted["split"].value_counts().to_dict() == {"train": 88, "test": 7, "validation": 5}
    # validation first, then test, then train along user_idx
    assert counted["split"].tolist() == ["validation"] * 5 + ["test"] * 7 + ["train"] * 88


def test_split_users_is_seeded_and_ignores_input_order():
    first = transform.split_users(USERS, 0.1, 0.1, seed=3)
    shuffled = USERS.sample(frac=1.0, random_state=0).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, transform.split_users(shuffled, 0.1, 0.1, seed=3))
    other = transform.split_users(USERS, 0.1, 0.1, seed=4)
    assert set(first.loc[first.split == "validation", "user_id"]) != set(other.loc[other.split == "validation", "user_id"])
    assert first["user_id"].tolist() != other["user_id"].tolist()


def test_split_users_needs_train_users():
    with pytest.raises(ValueError, match="5 validation \\+ 5 test users leave no train users out of 10"):
        transform.split_users(USERS[:10], 5, 5, seed=0)



@pytest.mark.parametrize("validation, test, message", [
    (0, 5, "prepare.validation_users=0 gives 0 of the 100 users: a held-out split needs at least one user"),
    (5, 0.001, "prepare.test_users=0.001 gives 0 of the 100 users"),
    (2.5, 5, "prepare.validation_users=2.5 is neither a fraction in .0, 1. nor a whole count"),
])
def test_split_users_refuses_empty_or_fractional_counts(validation, test, message):
    with pytest.raises(ValueError, match=message):
        transform.split_users(USERS, validation, test, seed=0)


# --- index_items ----------------------------------------------------------------------------

def test_index_items_dense_by_popularity(spark):
    train = spark.createDataFrame([("u1", "a", 1.0), ("u2", "a", 1.0), ("u3", "a", 1.0),
                                   ("u1", "c", 1.0), ("u2", "c", 1.0), ("u3", "c", 1.0),
                                   ("u1", "d", 1.0), ("u2", "d", 1.0), ("u4", "b", 1.0)], PAIRS)
    items = transform.index_items(train)
    assert list(items.columns) == ["item_idx", "item_id", "count"]
    assert items.values.tolist() == [[0, "a", 3], [1, "c", 3], [2, "d", 2], [3, "b", 1]]
    assert items["item_idx"].dtype == np.int32 and items["count"].dtype == np.int64


def test_index_items_only_sees_train_users(spark):
    pairs = spark.createDataFrame([("t", "a", 1.0), ("t", "b", 1.0), ("h", "c", 1.0), ("h", "a", 1.0)], PAIRS)
    split = spark.createDataFrame([("t", "train"), ("h", "test")], ["user_id", "split"])
    items = transform.index_items(pairs.join(split, "user_id").where("split = 'train'"))
    assert items["item_id"].tolist() == ["a", "b"]  # c only occurs for a held-out user


# --- user_rows / fold_in_rows ---------------------------------------------------------------

def test_user_rows_sorted_and_aligned(spark):
    indexed = spark.createDataFrame([(7, 5, 0.5), (7, 1, 1.5), (7, 3, 2.5), (2, 9, 4.0), (2, 0, 3.0)], INDEXED)
    grouped = transform.user_rows(indexed)
    assert [(f.name, f.dataType.simpleString()) for f in grouped.schema.fields] == [
        ("user_idx", "bigint"), ("items", "array<int>"), ("values", "array<float>")]
    assert sorted(tuple(r) for r in grouped.collect()) == [(2, [0, 9], [3.0, 4.0]), (7, [1, 3, 5], [1.5, 2.5, 0.5])]


def heldout_users(spark, sizes=range(2, 23)):
    """User u has ``sizes[u]`` items; the value of (u, i) is u * 1000 + i, so alignment is visible."""
    data = [(u, i * 3, float(u * 1000 + i * 3)) for u, n in enumerate(sizes) for i in range(n)]
    return spark.createDataFrame(data, INDEXED), dict(enumerate(sizes))


def test_fold_in_rows_split_each_user(spark):
    indexed, sizes = heldout_users(spark)
    frame = transform.fold_in_rows(indexed, 0.2, seed=11)
    assert [(f.name, f.dataType.simpleString()) for f in frame.schema.fields] == [
        ("user_idx", "bigint"), ("items", "array<int>"), ("values", "array<float>"),
        ("heldout_items", "array<int>"), ("heldout_values", "array<float>")]
    got = {r["user_idx"]: r for r in frame.collect()}
    assert set(got) == set(sizes)
    for user, n in sizes.items():
        row = got[user]
        fold, held = row["items"], row["heldout_items"]
        assert len(held) == max(1, round(0.2 * n)), (user, n)
        assert set(fold) | set(held) == {i * 3 for i in range(n)}
        assert not set(fold) & set(held)
        assert fold == sorted(fold) and held == sorted(held)
        assert row["values"] == [user * 1000 + i for i in fold]
        assert row["heldout_values"] == [user * 1000 + i for i in held]


def test_fold_in_rows_seeded(spark):
    indexed, _ = heldout_users(spark)
    def held(seed):
        return {r["user_idx"]: r["heldout_items"] for r in transform.fold_in_rows(indexed, 0.2, seed).collect()}
    first = held(11)
    assert held(11) == first
    other = held(12)
    assert sum(first[u] != other[u] for u in first) >= 10  # most of the 21 users differ


def test_fold_in_rows_keeps_a_fold_in_item(spark):
    # round(0.8 * 2) = 2 would hold out both items of a 2-item user
    indexed, sizes = heldout_users(spark, sizes=[2, 3, 10])
    got = {r["user_idx"]: r for r in transform.fold_in_rows(indexed, 0.8, seed=0).collect()}
    assert {u: (len(r["items"]), len(r["heldout_items"])) for u, r in got.items()} == {0: (1, 1), 1: (1, 2), 2: (2, 8)}


# --- num_row_groups -------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    ((1000, 4, 2, 1, 100), 10),         # more groups than ranks * groups_per_rank, to cap the size
    ((1000, 4, 2, 1, 1000), 8),         # enough for 4 ranks x 2 groups
    ((1000, 4, 2, 200, 1000), 4),       # 2 per rank would make groups of 125 < 200: 1 per rank
    ((1000, 4, 8, 100, 1000), 8),       # up to 2 per rank keeps groups >= 100
    ((100, 4, 2, 500, 1000), 4),        # still one group per rank however small
    ((4_832, 8, 4, 500, 10000), 8),     # ML-1M-sized train with conf/default.yaml: 8 groups of 604
    ((5, 64, 4, 1, 10000), 5),          # never more groups than rows
    ((0, 64, 4, 500, 10000), 1),
    ((138_000, 64, 4, 500, 10000), 256),
    ((110_789, 64, 4, 500, 10000), 192),  # ML-20M-sized train: 3 per rank, groups of 577
    ((3_000_000, 64, 4, 500, 10000), 300),
])
def test_num_row_groups(args, expected):
    assert transform.num_row_groups(*args) == expected
