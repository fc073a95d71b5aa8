"""spark-submit jobs/prepare.py --input PATH --output DIR [options] [section.key=value ...]

Reads raw interactions (CSV, Parquet, MovieLens, RecBole), filters, indexes and splits them,
and writes the prepared dataset (one row per user, id maps, manifest) that the trainer reads.
Runs on the master spark-submit sets (``--master``, or ``spark.master`` in its properties file
or ``$SPARK_CONF_DIR``); ``local[*]`` when none is set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # spark-submit from a checkout

from pipeline.manifest import DatasetError  # noqa: E402
from pipeline.sources import FORMATS, InputError  # noqa: E402
from pipeline.spark import start_job_logging  # noqa: E402
from recoder_dist.config import ConfigError, load_config, parse_command_line  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/prepare.py", description=__doc__.split("\n\n", 1)[1],
        epilog="Example: spark-submit jobs/prepare.py --input ml-20m/ratings.csv --output data/ml-20m "
               "--config conf/ml-20m.yaml prepare.min_user_interactions=10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="file or directory of raw interactions")
    parser.add_argument("--output", required=True, help="directory to create (a local or shared path)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="input format; auto infers it from names and extensions (default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    return parse_command_line(parser, argv, overrides_help="config overrides, e.g. prepare.rating_threshold=3.5")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stderr = start_job_logging()
    try:
        config = load_config(args.config, args.overrides)
        from pipeline.output import check_output
        from pipeline.prepare import KIND, prepare
        check_output(Path(args.output).resolve(), KIND, args.overwrite, [args.input])  # before Spark starts
        from pipeline.spark import spark_session
        spark = spark_session("recoder-prepare")
        manifest = prepare(spark, args.input, args.output, args.format, config.prepare, args.overwrite)
    except (ConfigError, InputError, DatasetError, FileExistsError, ValueError) as error:
        print(f"prepare: error: {error}", file=stderr)
        return 2
    summary = {k: manifest[k] for k in ("num_items", "num_users", "nnz", "interactions")}
    print(json.dumps({"output": str(Path(args.output).resolve()), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
