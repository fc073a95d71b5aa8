"""Reading raw inputs: format inference, canonical columns, and one reject reason per bad row."""
import re

import pandas as pd
import pytest
from conftest import write_lines

from pipeline.sources import InputError, read_interactions, resolve_layout
from recoder_dist.config import PrepareConfig

CANON = ["user_id", "item_id", "value", "timestamp", "reject_reason"]


def rows(frame):
    """Canonical rows sorted, as plain tuples (the projection the prepare job counts with)."""
    return sorted((tuple(r) for r in frame.select(*CANON).collect()), key=repr)


def read(spark, path, fmt="auto", **config):
    return read_interactions(spark, resolve_layout(str(path), fmt, PrepareConfig(**config)))


def test_each_bad_csv_row_gets_its_reason(spark, tmp_path):
    path = write_lines(tmp_path / "in.csv", [
        "user_id,item_id,rating,timestamp",
        "1,10,4.0,100",
        "1,11,abc,101",           # value_not_numeric
        "2,10,NaN,102",           # value_not_finite
        "2,11,-1,103",            # value_negative
        ",12,3,104",              # missing_user
        "3,13,5",                 # too few fields
        "3,14,5,105,extra",       # too many fields
        "4,,2,106",               # missing_item
        "4,15,,107",              # missing_value
        "5,16,3,notatime",        # timestamp_unparsable
        "5,17,3,2020-01-01 00:00:00",
        "6,18,inf,1",             # value_not_finite
        " 7 , 19 ,0,",            # ids trimmed, zero is a valid value, empty timestamp is null
    ])
    frame = read(spark, path)
    reasons = {r["reject_reason"]: r["count"] for r in frame.groupBy("reject_reason").count().collect()}
    assert reasons == {None: 3, "value_not_numeric": 1, "value_not_finite": 2, "value_negative": 1,
                       "missing_user": 1, "malformed_row": 2, "missing_item": 1, "missing_value": 1,
                       "timestamp_unparsable": 1}
    good = [r for r in rows(frame) if r[4] is None]
    assert good == [("1", "10", 4.0, 100.0, None), ("5", "17", 3.0, 1577836800.0, None),
                    ("7", "19", 0.0, None, None)]
    bad = frame.where("reject_reason = 'malformed_row'").select("raw", "source_file").collect()
    assert sorted(r["raw"] for r in bad) == ["3,13,5", "3,14,5,105,extra"]
    assert all(r["source_file"].endswith("in.csv") for r in bad)


def test_wrong_field_count_is_caught_when_a_column_goes_unused(spark, tmp_path):
    # Spark's CSV column pruning would tokenize only the used columns and miss these rows.
    path = write_lines(tmp_path / "in.csv", ["user_id,item_id,rating,timestamp,genre",
                                             "1,10,4,100,x", "3,13,5,100", "3,14,5,105,y,z"])
    frame = read(spark, path)
    counts = {r["reject_reason"]: r["count"]
              for r in frame.select(*CANON).groupBy("reject_reason").count().collect()}
    assert counts == {None: 1, "malformed_row": 2}


def test_value_and_timestamp_columns_are_optional(spark, tmp_path):
    path = write_lines(tmp_path / "in.csv", ["u,i", "a,x", "b,y"])
    frame = read(spark, path, user_col="u", item_col="i", value_col=None, timestamp_col=None)
    assert rows(frame) == [("a", "x", 1.0, None, None), ("b", "y", 1.0, None, None)]


def test_missing_column_names_it_and_lists_the_present_ones(spark, tmp_path):
    path = write_lines(tmp_path / "in.csv", ["user,item,rating,timestamp", "1,2,3,4"])
    with pytest.raises(InputError) as error:
        read(spark, path)
    message = str(error.value)
    assert "missing column(s) ['user_id', 'item_id']" in message
    assert "the input has ['item', 'rating', 'timestamp', 'user']" in message
    assert "prepare.user_col" in message


def test_missing_parquet_column(spark, tmp_path):
    pd.DataFrame({"user_id": [1], "item_id": [2], "score": [1.0]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(InputError, match=re.escape("missing column(s) ['rating', 'timestamp']; "
                                                   "the input has ['item_id', 'score', 'user_id']")):
        read(spark, tmp_path / "x.parquet")


def test_parquet_with_wrong_types_rejects_per_row(spark, tmp_path):
    pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [10, 20, 30, 40],
                  "rating": ["4.5", "abc", None, "-2"],
                  "timestamp": ["100", "2020-01-01 00:00:00", "x", "5"]}).to_parquet(tmp_path / "x.parquet")
    assert rows(read(spark, tmp_path / "x.parquet")) == [
        ("1", "10", 4.5, 100.0, None),
        ("2", "20", None, 1577836800.0, "value_not_numeric"),
        ("3", "30", None, None, "missing_value"),
        ("4", "40", -2.0, 5.0, "value_negative"),
    ]


def test_parquet_directory_of_parts(spark, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for n in range(2):
        pd.DataFrame({"user_id": [f"u{n}"], "item_id": [f"i{n}"], "rating": [float(n + 1)],
                      "timestamp": [n]}).to_parquet(folder / f"part-{n}.parquet")
    (folder / "_SUCCESS").write_text("")
    layout = resolve_layout(str(folder), "auto", PrepareConfig())
    assert layout.fmt == "parquet" and len(layout.paths) == 2
    assert rows(read_interactions(spark, layout)) == [("u0", "i0", 1.0, 0.0, None), ("u1", "i1", 2.0, 1.0, None)]


@pytest.mark.parametrize("name, lines", [
    ("u.data", ["1\t10\t4\t100", "2\t20\t3\t200"]),
    ("ratings.dat", ["1::10::4::100", "2::20::3::200"]),
    ("ratings.csv", ["userId,movieId,rating,timestamp", "1,10,4.0,100", "2,20,3.0,200"]),
])
def test_movielens_formats_are_inferred(spark, tmp_path, name, lines):
    path = write_lines(tmp_path / "ml" / name, lines)
    for target in (path, path.parent):  # the file itself or its folder
        layout = resolve_layout(str(target), "auto", PrepareConfig())
        assert (layout.fmt, layout.user_col, layout.item_col, layout.value_col) == ("csv", "userId", "movieId", "rating")
        assert layout.paths == (str(path),)
        assert rows(read_interactions(spark, layout)) == [("1", "10", 4.0, 100.0, None), ("2", "20", 3.0, 200.0, None)]


def test_recbole_inter_is_inferred(spark, tmp_path):
    path = write_lines(tmp_path / "ml-100k.inter", ["item_id:token\tuser_id:token\ttimestamp:float\trating:float",
                                                    "10\t1\t100\t4", "20\t2\t200\t3"])
    layout = resolve_layout(str(tmp_path), "auto", PrepareConfig())
    assert (layout.user_col, layout.item_col, layout.value_col, layout.timestamp_col, layout.delimiter) == \
        ("user_id:token", "item_id:token", "rating:float", "timestamp:float", "\t")
    assert layout.paths == (str(path),)
    assert rows(read_interactions(spark, layout)) == [("1", "10", 4.0, 100.0, None), ("2", "20", 3.0, 200.0, None)]


def test_tsv_and_generic_csv(spark, tmp_path):
    tsv = write_lines(tmp_path / "x.tsv", ["user_id\titem_id\trating\ttimestamp", "1\t2\t3\t4"])
    assert resolve_layout(str(tsv), "auto", PrepareConfig()).delimiter == "\t"
    assert rows(read(spark, tsv)) == [("1", "2", 3.0, 4.0, None)]
    semi = write_lines(tmp_path / "y.csv", ["user_id;item_id;rating;timestamp", "1;2;3;4"])
    assert rows(read(spark, semi, csv_delimiter=";")) == [("1", "2", 3.0, 4.0, None)]


@pytest.mark.parametrize("setup, fmt, message", [
    (lambda p: p / "absent.csv", "auto", "does not exist"),
    (lambda p: write_lines(p / "x.csv", ["a"]), "excel", "unknown --format 'excel'"),
    (lambda p: write_lines(p / "notes.txt", ["a"]).parent, "auto", "cannot tell the format of directory"),
    (lambda p: write_lines(p / "manifest.json", ["{}"]).parent, "csv", "is not a dataset: it holds no"),
    (lambda p: write_lines(p / "x.csv", ["a"]).parent, "parquet", "is not a dataset: it holds no .parquet files"),
    (lambda p: write_lines(p / "x.csv", ["a"]), "movielens", "is not a MovieLens ratings file"),
    (lambda p: write_lines(p / "x.csv", ["a"]).parent, "movielens", "holds no MovieLens ratings file"),
])
def test_inputs_that_are_not_datasets(tmp_path, setup, fmt, message):
    with pytest.raises(InputError, match=message):
        resolve_layout(str(setup(tmp_path)), fmt, PrepareConfig())


def test_empty_csv_file(spark, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InputError, match=re.escape(f"{path} is empty")):
        read(spark, path)


def test_csv_files_with_different_headers(spark, tmp_path):
    write_lines(tmp_path / "a.csv", ["user_id,item_id,rating,timestamp", "1,2,3,4"])
    write_lines(tmp_path / "b.csv", ["user_id,item_id,timestamp,rating", "1,2,4,3"])
    with pytest.raises(InputError, match="b.csv: header .* differs from .*a.csv"):
        read(spark, tmp_path)


def test_headerless_csv_needs_a_format(spark, tmp_path):
    path = write_lines(tmp_path / "x.csv", ["1,2,3,4"])
    with pytest.raises(InputError, match="header-less CSV"):
        read(spark, path, csv_header=False)


def test_ids_that_are_not_utf8_are_rejected_not_merged(spark, tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"user_id,item_id,rating,timestamp\n"
                     b"u\xff1,i1,5,1\n"         # two distinct invalid ids that U+FFFD would merge
                     b"u\xfe1,i1,5,2\n"
                     b"u2,i\xc3\x281,5,3\n"     # an invalid sequence in an item id
                     b"u\xc3\xa91,i1,5,4\n")    # valid UTF-8 (u\u00e91): kept
    frame = read(spark, path)
    reasons = {r["reject_reason"]: r["count"] for r in frame.groupBy("reject_reason").count().collect()}
    assert reasons == {None: 1, "id_not_utf8": 3}
    assert [r[:2] for r in rows(frame) if r[4] is None] == [("u\u00e91", "i1")]


def test_integral_float_ids_are_written_as_integers(spark, tmp_path):
    pd.DataFrame({"user_id": [10.0, 11.0, float("nan"), 2.5, -3.0], "item_id": [1.0, 2.0, 3.0, 4.0, 5.0],
                  "rating": [5.0] * 5, "timestamp": [1.0] * 5}).to_parquet(tmp_path / "x.parquet")
    assert {(r[0], r[1], r[4]) for r in rows(read(spark, tmp_path / "x.parquet"))} == {
        ("10", "1", None), ("11", "2", None), (None, "3", "missing_user"), ("2.5", "4", None), ("-3", "5", None)}
