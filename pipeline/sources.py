"""Reading raw interactions into one canonical, validated shape.

Every reader returns a DataFrame with the columns of :data:`CANONICAL` plus ``reject_reason``
(null for good rows) and ``source_file``, so that no row is ever dropped silently: rows with a
reason are written to ``rejected/`` by the prepare job and counted in the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import PrepareConfig

CANONICAL = ("user_id", "item_id", "value", "timestamp")
FORMATS = ("auto", "csv", "parquet", "movielens", "recbole")
CORRUPT = "_corrupt_record"


class InputError(ValueError):
    """The input cannot be read as interactions; the message names the file and what to fix."""


@dataclass(frozen=True)
class Layout:
    """Where the four canonical columns come from in one concrete input."""

    fmt: str  # csv | parquet
    paths: tuple[str, ...]
    user_col: str
    item_col: str
    value_col: Optional[str]
    timestamp_col: Optional[str]
    delimiter: str = ","
    header: bool = True
    column_names: Optional[tuple[str, ...]] = None  # for header-less text files
    source_format: str = ""  # what the input is: csv | parquet | movielens | recbole


MOVIELENS_FILES = {
    "u.data": dict(delimiter="\t", header=False),
    "ratings.dat": dict(delimiter="::", header=False),
    "ratings.csv": dict(delimiter=",", header=True),
}
MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def resolve_layout(path: str, fmt: str, config: PrepareConfig) -> Layout:
    """Work out format, files and column names for ``path`` (``fmt='auto'`` infers them)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {path} does not exist")
    if fmt == "auto":
        fmt = _infer_format(p)
    if fmt == "movielens":
        file = _find_movielens_file(p)
        return Layout("csv", (str(file),), *MOVIELENS_COLUMNS, column_names=MOVIELENS_COLUMNS, source_format=fmt,
                      **MOVIELENS_FILES[file.name])
    if fmt == "recbole":
        files = _files(p, (".inter",))
        return Layout("csv", files, *_recbole_columns(files[0], config), delimiter="\t", header=True,
                      source_format=fmt)
    if fmt == "parquet":
        return Layout("parquet", _files(p, (".parquet",)), config.user_col, config.item_col,
                      config.value_col, config.timestamp_col, source_format=fmt)
    files = _files(p, (".csv", ".tsv", ".txt", ".data"))
    delimiter = "\t" if files[0].endswith(".tsv") and config.csv_delimiter == "," else config.csv_delimiter
    return Layout("csv", files, config.user_col, config.item_col, config.value_col,
                  config.timestamp_col, delimiter=delimiter, header=config.csv_header, source_format="csv")


def _infer_format(p: Path) -> str:
    names = {p.name} if p.is_file() else {c.name for c in p.iterdir()}
    if names & set(MOVIELENS_FILES):
        return "movielens"
    suffixes = {Path(n).suffix for n in names}
    if ".inter" in suffixes:
        return "recbole"
    if ".parquet" in suffixes or (p.is_dir() and any(p.glob("*.parquet"))):
        return "parquet"
    if suffixes & {".csv", ".tsv"}:
        return "csv"
    what = "file" if p.is_file() else "directory"
    raise InputError(f"cannot tell the format of {what} {p} (found: {', '.join(sorted(names))[:200] or 'nothing'}); "
                     f"pass --format csv|parquet|movielens|recbole")


def _find_movielens_file(p: Path) -> Path:
    if p.is_file():
        if p.name not in MOVIELENS_FILES:
            raise InputError(f"{p} is not a MovieLens ratings file ({', '.join(MOVIELENS_FILES)})")
        return p
    for name in MOVIELENS_FILES:
        if (p / name).is_file():
            return p / name
    raise InputError(f"directory {p} holds no MovieLens ratings file ({', '.join(MOVIELENS_FILES)})")


def _files(p: Path, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    if p.is_file():
        return (str(p),)
    found = sorted(str(c) for c in p.rglob("*") if c.is_file() and c.suffix in suffixes
                   and not c.name.startswith(("_", ".")))
    if not found:
        raise InputError(f"directory {p} is not a dataset: it holds no {'/'.join(suffixes)} files")
    return tuple(found)


def _recbole_columns(file: str, config: PrepareConfig) -> tuple[str, str, Optional[str], Optional[str]]:
    """RecBole atomic files name columns ``name:type``; map them to user/item/value/timestamp."""
    with open(file, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names = {h.split(":")[0]: h for h in header}
    def pick(*candidates: Optional[str]) -> Optional[str]:
        return next((names[c] for c in candidates if c and c in names), None)
    user = pick(config.user_col, "user_id")
    item = pick(config.item_col, "item_id")
    if user is None or item is None:
        raise InputError(f"{file}: RecBole header {header} has no user_id/item_id columns")
    return user, item, pick(config.value_col, "rating"), pick(config.timestamp_col, "timestamp")


def read_interactions(spark: SparkSession, layout: Layout) -> DataFrame:
    """Canonical rows ``user_id, item_id, value, timestamp, reject_reason, source_file, raw``."""
    raw = _read_raw(spark, layout)
    columns = set(raw.columns)
    needed = [c for c in (layout.user_col, layout.item_col, layout.value_col, layout.timestamp_col) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        shown = sorted(columns - {CORRUPT})
        raise InputError(f"{layout.paths[0]}: missing column(s) {missing}; the input has {shown}. "
                         f"Set prepare.user_col/item_col/value_col/timestamp_col (value/timestamp may be null).")
    types = dict(raw.dtypes)
    user = _id_text(F.col(f"`{layout.user_col}`"), types[layout.user_col])
    item = _id_text(F.col(f"`{layout.item_col}`"), types[layout.item_col])
    value_raw = F.col(f"`{layout.value_col}`") if layout.value_col else F.lit(1.0)
    value = value_raw.cast("double")
    ts_raw = F.col(f"`{layout.timestamp_col}`") if layout.timestamp_col else F.lit(None)
    timestamp = F.coalesce(ts_raw.cast("double"), F.unix_timestamp(ts_raw.cast("string")).cast("double"))
    corrupt = F.col(CORRUPT) if CORRUPT in columns else F.lit(None).cast("string")
    reason = (F.when(corrupt.isNotNull(), F.lit("malformed_row"))
              .when(_not_utf8(user) | _not_utf8(item), F.lit("id_not_utf8"))
              .when(user.isNull() | (user == ""), F.lit("missing_user"))
              .when(item.isNull() | (item == ""), F.lit("missing_item"))
              .when(value_raw.isNull(), F.lit("missing_value"))
              .when(value.isNull(), F.lit("value_not_numeric"))
              .when(F.isnan(value) | (F.abs(value) == float("inf")), F.lit("value_not_finite"))
              .when(value < 0, F.lit("value_negative"))
              .when(ts_raw.isNotNull() & timestamp.isNull(), F.lit("timestamp_unparsable")))
    return raw.select(
        user.alias("user_id"), item.alias("item_id"), value.alias("value"), timestamp.alias("timestamp"),
        reason.alias("reject_reason"), F.input_file_name().alias("source_file"),
        _raw_text(raw, layout, corrupt).alias("raw"))


def _id_text(column: Column, dtype: str) -> Column:
    """An id column as trimmed text; integral floats as integers (``10.0`` -> ``"10"``, the id a
    client sends), NaN as missing. Other types keep Spark's string form."""
    if dtype in ("float", "double"):
        integral = (column == F.floor(column)) & (F.abs(column) < 2.0 ** 53)
        column = (F.when(F.isnan(column), F.lit(None).cast("string"))
                  .when(integral, column.cast("long").cast("string")).otherwise(column.cast("string")))
    return F.trim(column.cast("string"))


def _not_utf8(text: Column) -> Column:
    """Whether an id held bytes that are not UTF-8: the CSV reader (and a decode of raw bytes)
    turns them into U+FFFD, which would merge distinct ids into one."""
    return F.decode(text.cast("binary"), "UTF-8").contains("\ufffd")


def input_columns(spark: SparkSession, layout: Layout) -> set[str]:
    """The column names ``layout``'s input has (its header or Parquet schema; no rows are read)."""
    return set(_read_raw(spark, layout).columns) - {CORRUPT}


def _raw_text(raw: DataFrame, layout: Layout, corrupt: Column) -> Column:
    """The row as it was written, for ``rejected/``."""
    cols = [c for c in raw.columns if c != CORRUPT]
    joined = F.concat_ws(layout.delimiter, *[F.coalesce(F.col(f"`{c}`").cast("string"), F.lit("")) for c in cols])
    return F.coalesce(corrupt, joined)


def _read_raw(spark: SparkSession, layout: Layout) -> DataFrame:
    if layout.fmt == "parquet":
        return spark.read.parquet(*layout.paths)
    names = layout.column_names or _header_names(layout)
    # With column pruning the parser tokenizes only the columns a query uses, and a row with too
    # few or too many fields is then not flagged as malformed when some column goes unused.
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names]
                          + [T.StructField(CORRUPT, T.StringType())])
    frame = (spark.read.option("header", layout.header).option("sep", layout.delimiter)
             .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
             .option("enforceSchema", False).schema(schema).csv(list(layout.paths)))
    return frame


def _header_names(layout: Layout) -> tuple[str, ...]:
    """Column names of a text input: its header line (checked to be the same in every file)."""
    if not layout.header:
        raise InputError(f"{layout.paths[0]}: header-less CSV needs prepare.csv_header=true or --format movielens")
    headers = {}
    for path in layout.paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            line = handle.readline().rstrip("\r\n")
        if not line:
            raise InputError(f"{path} is empty: no header line and no rows")
        headers[path] = tuple(h.strip() for h in line.split(layout.delimiter))
    first = layout.paths[0]
    for path, names in headers.items():
        if names != headers[first]:
            raise InputError(f"{path}: header {list(names)} differs from {first}'s {list(headers[first])}")
    return headers[first]
