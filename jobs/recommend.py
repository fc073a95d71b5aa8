"""spark-submit jobs/recommend.py --model models:/NAME@ALIAS (--data DIR --split S | --histories PATH) --output DIR

Top-k recommendations for every user of a prepared split (fold-in items as history), or for
raw user histories given as a CSV/Parquet of (user, item) rows, from a registered model.
Writes ``<output>/recommendations`` (Parquet: user_id, recommended, scores, unknown_items).
Runs on the master spark-submit sets (``--master``, or ``spark.master`` in its properties file
or ``$SPARK_CONF_DIR``); ``local[*]`` when none is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # spark-submit from a checkout

from pipeline.manifest import DatasetError  # noqa: E402
from pipeline.sources import FORMATS, InputError  # noqa: E402
from pipeline.spark import start_job_logging  # noqa: E402
from recoder_dist.config import ConfigError, load_config, parse_command_line  # noqa: E402
from recoder_dist.mlflow_uri import resolve_tracking_uri  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spark-submit jobs/recommend.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: spark-submit jobs/recommend.py --model models:/recoder@champion "
                                            "--data data/default --split test --k 100 --output out/recs")
    parser.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/recoder@champion")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="prepared dataset (jobs/prepare.py output)")
    source.add_argument("--histories", help="CSV/Parquet of (user, item[, value]) rows to score")
    parser.add_argument("--split", default="test", help="split of --data to score (default test)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="format of --histories")
    parser.add_argument("--k", type=int, default=100, help="recommendations per user (default 100)")
    parser.add_argument("--output", required=True, help="directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of this job")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the config's)")
    return parse_command_line(parser, argv, config_help="YAML config (column names of --histories, MLflow store)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stderr = start_job_logging()
    try:
        config = load_config(args.config, args.overrides)
        if args.k < 1:
            raise ValueError(f"--k must be >= 1 (recommendations per user), got {args.k}")
        tracking_uri = resolve_tracking_uri(args.tracking_uri, os.environ, config.mlflow.tracking_uri, args.overrides)
        from pipeline import recommend
        from pipeline.output import check_output
        inputs = [args.data or args.histories]
        check_output(Path(args.output).resolve(), recommend.KIND, args.overwrite, inputs)  # before Spark starts
        model_path = download_model(args.model, tracking_uri)
        from pipeline.sources import resolve_layout
        from pipeline.spark import spark_session
        spark = spark_session("recoder-recommend")
        rejected = {}
        if args.data:
            histories = recommend.split_histories(spark, args.data, args.split)
        else:
            layout = resolve_layout(args.histories, args.format, config.prepare)
            histories, rejected = recommend.raw_histories(spark, layout, config.prepare)
        summary = recommend.recommend(spark, model_path, histories, args.k, args.output, args.overwrite,
                                      extra={"model": args.model, "rejected_rows": rejected,
                                             "input": args.data or args.histories}, inputs=inputs)
    except (ConfigError, InputError, DatasetError, FileExistsError, LookupError, ValueError) as error:
        print(f"recommend: error: {error}", file=stderr)
        return 2
    print(json.dumps({"output": str(Path(args.output).resolve()), **summary}))
    return 0


def download_model(model_uri: str, tracking_uri: str) -> str:
    """Resolve ``models:/NAME@ALIAS`` (or ``/VERSION``) once, on the driver; a clear error when it does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from recoder_dist.mlflow_uri import mask
    from recoder_dist.registry import resolve

    mlflow.set_tracking_uri(tracking_uri)
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri.removeprefix("models:/").replace("@", "/").partition("/")
        resolve(MlflowClient(), name, ref or "champion")
    try:
        return mlflow.artifacts.download_artifacts(model_uri)
    except MlflowException as error:
        raise LookupError(f"cannot load {model_uri} from {mask(tracking_uri)}: {error.message}") from None


if __name__ == "__main__":
    sys.exit(main())
