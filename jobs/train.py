"""spark-submit [--master M] jobs/train.py --data DIR --num-processes N [--config conf/X.yaml] [--resume | --resume-from RUN]
[section.key=value ...]

Trains on the Spark cluster itself, without horovodrun, ssh or MPI: Spark's TorchDistributor
starts N torchrun ranks of ``recoder_dist.train`` (on the driver under a local master, as
barrier tasks on the executors otherwise; see ``recoder_dist/distributor.py``). They train,
checkpoint, log to MLflow and register the model as ``horovodrun``/``torchrun`` runs do. Prints
rank 0's summary (test metrics, MLflow run id, registered version) as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # spark-submit from a checkout

from pipeline.manifest import DatasetError, read_manifest  # noqa: E402
from pipeline.spark import start_job_logging  # noqa: E402
from recoder_dist.config import ConfigError, load_config, parse_command_line  # noqa: E402


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spark-submit jobs/train.py", description=__doc__.split("\n\n", 1)[1],
        epilog="Example: spark-submit --master spark://HOST:7077 jobs/train.py --data /shared/data/ml-20m "
               "--num-processes 8 --config conf/ml-20m.yaml", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory, visible to every rank")
    parser.add_argument("--num-processes", type=_positive, required=True, help="training ranks")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest unfinished run in train.checkpoint_dir (and its MLflow run); "
                             "without one, start afresh")
    parser.add_argument("--resume-from", metavar="RUN",
                        help="continue this unfinished run: its folder under train.checkpoint_dir, or its last.pt")
    return parse_command_line(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stderr = start_job_logging()
    try:
        config = load_config(args.config, args.overrides)  # bad settings or data fail before any rank starts
        read_manifest(args.data)
        from pipeline.spark import spark_session
        from recoder_dist.distributor import train_argv, train_on_spark
        spark = spark_session("recoder-train")  # spark-submit's master (local[*] when it sets none)
        summary = train_on_spark(spark, args.num_processes,
                                 train_argv(args.data, args.config, args.resume, args.resume_from, args.overrides), config)
    except (ConfigError, DatasetError, ValueError) as error:
        print(f"train: error: {error}", file=stderr)
        return 2
    except RuntimeError as error:  # a rank failed; TorchDistributor's message ends with the ranks' output
        print(f"train: error: training on {args.num_processes} process(es) failed: {error}", file=stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
