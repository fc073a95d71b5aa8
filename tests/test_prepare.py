"""prepare() on small files through the shared SparkSession: contract, accounting, bad inputs."""
import json
import re
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import assert_prepared, write_lines

from pipeline.manifest import MANIFEST, read_manifest
from pipeline.output import MARKER
from pipeline.prepare import prepare
from pipeline.sources import InputError
from pipeline.synthetic import generate, write
from recoder_dist.config import PrepareConfig, SyntheticConfig

# Small row-group targets keep the writes quick and still give several groups per split.
SMALL = PrepareConfig(rating_threshold=3.5, binarize=False, duplicates="max", min_user_interactions=2,
                      validation_users=1, test_users=1, max_ranks=2, row_groups_per_rank=1,
                      min_rows_per_group=1, max_rows_per_group=1, seed=5)

# Six users with four items each (rating 5) over five items, every item liked by at least four
# users: whichever two users are held out, all their items stay seen in train.
BASKETS = {"u1": "i1 i2 i3 i4", "u2": "i2 i3 i4 i5", "u3": "i3 i4 i5 i1",
           "u4": "i4 i5 i1 i2", "u5": "i5 i1 i2 i3", "u6": "i1 i2 i3 i4"}
GOOD = [f"{u},{i},5,{t}" for t, (u, basket) in enumerate(BASKETS.items()) for i in basket.split()]
EXTRA = ["u1,i1,4,100",      # duplicate of (u1, i1): merged
         "u2,i9,2,101",      # at or below the threshold
         "u7,i1,5,102",      # u7's only interaction: user below the minimum count
         "u8,i2,5",          # malformed: three fields
         "u8,i3,abc,103"]    # value not numeric


@pytest.fixture(scope="module")
def handmade(spark, tmp_path_factory):
    """The hand-made CSV prepared once (29 rows, exact outcome known)."""
    folder = tmp_path_factory.mktemp("handmade")
    source = write_lines(folder / "ratings_in.csv", ["user_id,item_id,rating,timestamp", *GOOD, *EXTRA])
    manifest = prepare(spark, str(source), str(folder / "out"), "auto", SMALL)
    return source, folder / "out", manifest


@pytest.fixture(scope="module")
def synthetic(spark, tmp_path_factory):
    """A seeded synthetic CSV (as jobs/generate.py writes it), prepared with the default's rules."""
    folder = tmp_path_factory.mktemp("synthetic")
    frame = generate(SyntheticConfig(num_users=300, num_items=120, mean_interactions=25))
    source = write(frame, folder / "synthetic.csv")
    config = PrepareConfig(rating_threshold=3.5, binarize=True, duplicates="max", min_user_interactions=5,
                           validation_users=30, test_users=30, max_ranks=4, row_groups_per_rank=2,
                           min_rows_per_group=1, max_rows_per_group=20)
    manifest = prepare(spark, str(source), str(folder / "out"), "auto", config)
    return frame, folder / "out", manifest


def test_handmade_exact_counts(handmade):
    source, out, manifest = handmade
    tables = assert_prepared(out)
    assert manifest == read_manifest(out)
    assert manifest["interactions"] == {"input": 29, "kept": 24, "dropped": {
        "at_or_below_threshold": 1, "duplicate_merged": 1, "heldout_user_under_2_items": 0,
        "item_below_min_count": 0, "malformed_row": 1, "unseen_item_in_heldout_user": 0,
        "user_below_min_count": 1, "value_not_numeric": 1}}
    assert manifest["num_items"] == 5
    assert manifest["num_users"] == {"train": 4, "validation": 1, "test": 1, "dropped": 0}
    assert manifest["nnz"] == {"train": {"items": 16}, "validation": {"items": 3, "heldout_items": 1},
                               "test": {"items": 3, "heldout_items": 1}}
    # one row group per user of train (max_rows_per_group=1), and per held-out user
    assert manifest["row_groups"] == {"train": 4, "validation": 1, "test": 1}
    assert manifest["source"]["format"] == "csv" and manifest["source"]["files"] == 1  # inferred from "auto"
    assert manifest["source"]["path"] == str(source)
    assert manifest["schema_version"] == 1 and manifest["config"]["seed"] == 5
    assert manifest["filter_rounds"] == 1

    users = tables["users"]
    assert sorted(users["user_id"]) == [f"u{n}" for n in range(1, 7)]  # u7 filtered, u8 rejected
    assert sorted(tables["items"]["item_id"]) == ["i1", "i2", "i3", "i4", "i5"]
    # values are the original ratings (binarize off), the duplicate kept its maximum
    by_user = dict(zip(users["user_idx"], users["user_id"]))
    item_id = tables["items"]["item_id"].tolist()
    rows = {by_user[u]: sorted(item_id[i] for i in items)
            for u, items in zip(tables["train"]["user_idx"], tables["train"]["items"])}
    for user, items in rows.items():
        assert items == sorted(BASKETS[user].split())
    assert {v for values in tables["train"]["values"] for v in values} == {5.0}
    # held-out users are split 3 fold-in + 1 held-out, all of their basket
    for split in ("validation", "test"):
        row = tables[split].iloc[0]
        user = by_user[row["user_idx"]]
        assert sorted(item_id[i] for i in [*row["items"], *row["heldout_items"]]) == sorted(BASKETS[user].split())


def test_handmade_rejected_rows_are_kept_with_reasons(handmade):
    _, out, _ = handmade
    rejected = pq.read_table(out / "rejected").to_pandas().sort_values("reject_reason")
    assert rejected["reject_reason"].tolist() == ["malformed_row", "value_not_numeric"]
    assert rejected["raw"].tolist() == ["u8,i2,5", "u8,i3,abc,103"]
    assert rejected["source_file"].str.endswith("ratings_in.csv").all()
    assert not list(out.parent.glob(".out.*"))  # no temporary folder left


def test_synthetic_contract_and_row_groups(synthetic):
    frame, out, manifest = synthetic
    tables = assert_prepared(out)
    assert manifest["interactions"]["input"] == len(frame)
    assert manifest["num_users"]["validation"] == 30 and manifest["num_users"]["test"] == 30
    # train users (~200) need 8 groups for 4 ranks x 2, and 20 rows per group at most: 10+
    assert manifest["row_groups"]["train"] >= 10
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in (out / "train").glob("*.parquet")]
    assert len(sizes) == manifest["row_groups"]["train"] and max(sizes) <= 20 + 5  # one group per file
    # the ratings above 3.5 of every kept user, binarized
    kept = frame[frame.rating > 3.5]
    per_user = kept.groupby("user_id").size()
    users = tables["users"]
    assert set(users["user_id"]) == {str(u) for u in per_user[per_user >= 5].index}
    assert manifest["interactions"]["dropped"]["at_or_below_threshold"] == int((frame.rating <= 3.5).sum())
    assert manifest["interactions"]["dropped"]["user_below_min_count"] == int(per_user[per_user < 5].sum())
    assert {v for values in tables["train"]["values"] for v in values} == {1.0}
    # train users' items re-mapped to original ids equal their kept ratings
    item_id = tables["items"]["item_id"].tolist()
    by_user = dict(zip(users["user_idx"], users["user_id"]))
    kept_sets = kept.groupby("user_id")["item_id"].apply(lambda s: sorted(map(str, s)))
    for idx, items in zip(tables["train"]["user_idx"][:50], tables["train"]["items"][:50]):
        assert sorted(item_id[i] for i in items) == kept_sets[int(by_user[idx])]


def test_unseen_items_and_too_small_heldout_users(spark, tmp_path):
    # Every user likes a, plus two items nobody else has: held out, such a user keeps only a.
    lines = ["user_id,item_id,rating,timestamp"]
    for n in range(6):
        lines += [f"u{n},a,5,1", f"u{n},x{n},5,2", f"u{n},y{n},5,3"]
    source = write_lines(tmp_path / "in.csv", lines)
    manifest = prepare(spark, str(source), str(tmp_path / "out"), "auto", SMALL)
    assert manifest["interactions"]["dropped"] == {
        "at_or_below_threshold": 0, "duplicate_merged": 0, "heldout_user_under_2_items": 2,
        "item_below_min_count": 0, "unseen_item_in_heldout_user": 4, "user_below_min_count": 0}
    assert manifest["num_users"] == {"train": 4, "validation": 0, "test": 0, "dropped": 2}
    assert manifest["num_items"] == 1 + 4 * 2
    assert manifest["nnz"]["train"] == {"items": 12}
    assert manifest["nnz"]["validation"] == {"items": 0, "heldout_items": 0}
    tables = assert_prepared(tmp_path / "out")
    assert len(tables["validation"]) == 0 and len(tables["test"]) == 0


def test_parquet_input_with_string_values(spark, tmp_path):
    frame = pd.DataFrame({"user_id": [1] * 3 + [2] * 3 + [3] * 3 + [4, 4],
                          "item_id": [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2],
                          "rating": ["5", "4.5", "4", "5", "5", "5", "5", "4", "5", "high", "NaN"],
                          "timestamp": list(range(11))})
    frame.to_parquet(tmp_path / "ratings.parquet")
    manifest = prepare(spark, str(tmp_path / "ratings.parquet"), str(tmp_path / "out"), "auto", SMALL)
    assert manifest["interactions"]["input"] == 11 and manifest["interactions"]["kept"] == 9
    assert manifest["interactions"]["dropped"]["value_not_numeric"] == 1
    assert manifest["interactions"]["dropped"]["value_not_finite"] == 1
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pandas()
    assert sorted(rejected["reject_reason"]) == ["value_not_finite", "value_not_numeric"]
    assert assert_prepared(tmp_path / "out")["manifest"]["num_items"] == 3


def good_rows():
    return [line.split(",") for line in GOOD]


@pytest.mark.parametrize("name", ["u.data", "ratings.dat", "ratings.csv", "ml.inter", "ratings.parquet"])
def test_every_format_is_inferred_and_prepared_alike(spark, tmp_path, name):
    folder = tmp_path / "raw"
    if name == "u.data":
        write_lines(folder / name, ["\t".join(r) for r in good_rows()])
    elif name == "ratings.dat":
        write_lines(folder / name, ["::".join(r) for r in good_rows()])
    elif name == "ratings.csv":
        write_lines(folder / name, ["userId,movieId,rating,timestamp", *GOOD])
    elif name == "ml.inter":
        write_lines(folder / name, ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                    *("\t".join(r) for r in good_rows())])
    else:
        folder.mkdir()
        pd.DataFrame(good_rows(), columns=["user_id", "item_id", "rating", "timestamp"]).astype(
            {"rating": float, "timestamp": int}).to_parquet(folder / name)
    manifest = prepare(spark, str(folder), str(tmp_path / "out"), "auto", SMALL)
    assert manifest["interactions"] == {"input": 24, "kept": 24, "dropped": {
        "at_or_below_threshold": 0, "duplicate_merged": 0, "heldout_user_under_2_items": 0,
        "item_below_min_count": 0, "unseen_item_in_heldout_user": 0, "user_below_min_count": 0}}
    assert (manifest["num_items"], manifest["num_users"]) == (5, {"train": 4, "validation": 1, "test": 1,
                                                                  "dropped": 0})
    tables = assert_prepared(tmp_path / "out")
    assert sorted(tables["users"]["user_id"]) == sorted(BASKETS)
    assert sorted(tables["items"]["item_id"]) == ["i1", "i2", "i3", "i4", "i5"]


# --- bad inputs: clear errors, nothing left behind ------------------------------------------

def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("lines, message", [
    ([], "is empty: no header line and no rows"),
    (["user_id,item_id,rating,timestamp"], "the input holds no interactions"),
    (["user_id,item_id,rating,timestamp", "1,2,abc,3", ",2,5,3", "1,2,-1,3"], "none of the 3 rows is valid"),
    (["user,item,rating,timestamp", "1,2,5,3"], "missing column(s) ['user_id', 'item_id']; the input has "
                                                "['item', 'rating', 'timestamp', 'user']"),
    (["user_id,item_id,rating,timestamp", "1,2,5,3", "1,3,1,3"], "no users are left after the rating threshold"),
])
def test_bad_csv_inputs(spark, tmp_path, lines, message):
    source = tmp_path / "in.csv"
    source.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(InputError, match=re.escape(message)):
        prepare(spark, str(source), str(tmp_path / "out"), "auto", SMALL)
    assert_nothing_written(tmp_path / "out")


def test_directory_that_is_not_a_dataset(spark, tmp_path):
    folder = tmp_path / "notes"
    write_lines(folder / "readme.md", ["hello"])
    with pytest.raises(InputError, match="cannot tell the format of directory"):
        prepare(spark, str(folder), str(tmp_path / "out"), "auto", SMALL)
    with pytest.raises(InputError, match="is not a dataset: it holds no .parquet files"):
        prepare(spark, str(folder), str(tmp_path / "out"), "parquet", SMALL)
    with pytest.raises(InputError, match="does not exist"):
        prepare(spark, str(tmp_path / "absent"), str(tmp_path / "out"), "auto", SMALL)
    assert_nothing_written(tmp_path / "out")


def test_existing_output_needs_overwrite(spark, handmade, synthetic, tmp_path):
    source, done, _ = handmade
    out = tmp_path / "out"
    shutil.copytree(synthetic[1], out)  # an existing prepared dataset (the synthetic one)
    before = read_manifest(out)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        prepare(spark, str(source), str(out), "auto", SMALL)
    assert read_manifest(out) == before

    stale = tmp_path / ".out.stage-here-1-0badf00d"  # left by a killed job (a dead PID on this host)
    write_lines(stale / "train" / "part-0.parquet", ["junk"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    (stale / MARKER).write_text(json.dumps({"project": "recoder-dist", "kind": "prepared-dataset",
                                            "state": "staging", "host": socket.gethostname(), "pid": dead.pid}))
    manifest = prepare(spark, str(source), str(out), "auto", SMALL, overwrite=True)
    assert not stale.exists()
    assert read_manifest(out) == manifest and manifest["interactions"]["input"] == 29
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp / .old folders left
    assert len(list((out / "train").glob("*.parquet"))) == 4  # none of the synthetic's files remain
    assert_prepared(out)


def test_output_that_is_not_a_dataset_is_never_replaced(spark, handmade, tmp_path):
    source = handmade[0]
    precious = write_lines(tmp_path / "home" / "thesis.tex", ["do not delete"]).parent
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="exists"):
            prepare(spark, str(source), str(precious), "auto", SMALL, overwrite=overwrite)
    with pytest.raises(FileExistsError, match="was not written by recoder-dist .no .recoder-output.json.; refusing to "
                                              "replace it even with --overwrite"):
        prepare(spark, str(source), str(precious), "auto", SMALL, overwrite=True)
    with pytest.raises(FileExistsError, match="was not written by recoder-dist"):
        prepare(spark, str(source), str(precious / "thesis.tex"), "auto", SMALL, overwrite=True)
    (precious / "manifest.json").write_text("{}")  # a file name anyone can have is no proof
    with pytest.raises(FileExistsError, match="was not written by recoder-dist"):
        prepare(spark, str(source), str(precious), "auto", SMALL, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "do not delete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_overwrite_never_deletes_the_input(spark, handmade, tmp_path):
    """``--input D --output D`` (or D/raw.csv) where D is an earlier dataset holding the raw CSV."""
    source, done, _ = handmade
    data = tmp_path / "data"
    shutil.copytree(done, data)
    raw = shutil.copy(source, data / "ratings.csv")
    for given in (data, raw):
        with pytest.raises(FileExistsError, match=f"output {data} holds the input .*refusing to replace it"):
            prepare(spark, str(given), str(data), "csv", SMALL, overwrite=True)
    assert Path(raw).read_bytes() == source.read_bytes() and read_manifest(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_run_keeps_the_previous_dataset(spark, handmade, tmp_path):
    _, done, _ = handmade
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = read_manifest(out)
    bad = write_lines(tmp_path / "bad.csv", ["user_id,item_id,rating,timestamp", "1,2,x,3"])
    with pytest.raises(InputError, match="none of the 1 rows is valid"):
        prepare(spark, str(bad), str(out), "auto", SMALL, overwrite=True)
    assert read_manifest(out) == before and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out"]


def test_manifest_records_the_config(handmade):
    manifest = handmade[2]
    assert manifest["config"] == {**manifest["config"], **{k: getattr(SMALL, k) for k in
                                                           ("rating_threshold", "min_user_interactions",
                                                            "max_ranks", "max_rows_per_group")}}
    assert replace(SMALL) == PrepareConfig(**manifest["config"])


def test_ids_that_are_not_utf8_are_rejected_with_a_reason_not_merged(spark, tmp_path):
    """Two users whose ids differ only in invalid bytes: U+FFFD would make them one (a duplicate)."""
    good = "".join(f"{line}\n" for line in ["user_id,item_id,rating,timestamp", *GOOD]).encode()
    source = tmp_path / "in.csv"
    source.write_bytes(good + b"u\xff9,i1,5,1\nu\xfe9,i1,5,2\n")
    manifest = prepare(spark, str(source), str(tmp_path / "out"), "auto", SMALL)
    dropped = manifest["interactions"]["dropped"]
    assert dropped["id_not_utf8"] == 2 and dropped["duplicate_merged"] == 0
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pandas()
    assert rejected["reject_reason"].tolist() == ["id_not_utf8", "id_not_utf8"]
    assert manifest["interactions"]["input"] == len(GOOD) + 2
