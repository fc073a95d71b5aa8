"""horovodrun -np N | torchrun --nproc-per-node N  python -m recoder_dist.train --data DIR [--config conf/X.yaml]
[--resume | --resume-from RUN | --init-from RUN] [section.key=value ...]

Trains the autoencoder on a prepared dataset with batch-union sampling, on the ranks horovodrun
or torchrun started (``recoder_dist.distributed`` tells which); without either it trains in one
process. Prints the test metrics as one JSON line at the end (rank 0). Each run checkpoints
into its own folder under train.checkpoint_dir; --resume continues the latest unfinished one
(and its MLflow run), --resume-from a given one; a finished run is never resumed, but
--init-from starts a new run from its weights.
``spark-submit jobs/train.py`` runs the same training on a Spark cluster (:func:`train_everywhere`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.manifest import DatasetError, read_manifest
from recoder_dist import checkpoint
from recoder_dist.config import ConfigError, load_config, parse_command_line
from recoder_dist.mlflow_uri import resolve_tracking_uri


class Stopped(SystemExit):
    """The process was asked to stop (SIGINT, or SIGTERM, which horovodrun and torchrun send their ranks)."""


def _stop(signum: int, _frame) -> None:
    raise Stopped(128 + signum)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recoder_dist.train", description=__doc__.split("\n\n", 1)[1],
        epilog="Examples: horovodrun -np 2 python -m recoder_dist.train --data data/default train.epochs=5 "
               "train.grad_exchange=sync_union\n"
               "          torchrun --nproc-per-node 2 -m recoder_dist.train --data data/default train.epochs=5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory (jobs/prepare.py output)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest unfinished run in train.checkpoint_dir (and its MLflow run); "
                             "without one, start afresh")
    parser.add_argument("--resume-from", metavar="RUN", type=Path,
                        help="continue this unfinished run: its folder under train.checkpoint_dir, or its last.pt")
    parser.add_argument("--init-from", metavar="RUN", type=Path,
                        help="start a new run from the final weights of run RUN (e.g. a finished one: train it "
                             "longer); the optimizer and the lr schedule start afresh")
    return parse_command_line(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from recoder_dist.distributed import Workers

    try:
        workers = Workers.start()
    except ValueError as error:  # contradictory or incomplete launcher variables
        print(f"train: error: {error}", file=sys.stderr)
        return 2
    status, summary = _train(args, workers)
    if status == 0 and workers.is_root:
        print(json.dumps(summary))
    return status


def train_everywhere(argv: list[str]) -> dict:
    """Train as :func:`main` does and return rank 0's summary on every rank: the function
    Spark's TorchDistributor runs in each torchrun rank (``recoder_dist.distributor``), which
    hands back one rank's return value. Raises SystemExit with main's status when training fails."""
    args = parse_args(argv)
    from recoder_dist.distributed import Workers

    workers = Workers.start()
    status, summary = _train(args, workers)
    if status != 0:
        raise SystemExit(status)
    return workers.broadcast_object(summary, "train_summary")


def _train(args: argparse.Namespace, workers) -> tuple[int, dict | None]:
    """Train on ``workers``: the exit status, and on rank 0 the summary (test metrics, best
    epoch, MLflow run id, registered version)."""
    from recoder_dist.trainer import fit

    logging.basicConfig(level=logging.INFO if workers.is_root else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("petastorm").setLevel(logging.WARNING)  # per-reader schema notices
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tracker, run_state = None, {}
    resume = bool(args.resume or args.resume_from)
    if args.init_from and resume:
        print(f"train: error (rank {workers.rank}): --init-from starts a new run; it cannot be combined with "
              f"--resume or --resume-from", file=sys.stderr)
        return 2, None
    try:
        config = load_config(args.config, args.overrides)
        config.mlflow.tracking_uri = resolve_tracking_uri(None, os.environ, config.mlflow.tracking_uri, args.overrides)
        if workers.is_root and resume:  # rank 0 alone reads checkpoints; fit sends the others what they need
            resume = checkpoint.resume_target(Path(config.train.checkpoint_dir), args.resume_from) or False
        if workers.is_root and config.mlflow.enabled:
            from recoder_dist.tracking import MlflowTracker
            previous = checkpoint.load(resume / checkpoint.LAST) if resume else {}
            tracker = MlflowTracker(config, read_manifest(args.data), args.data, workers.size, str(workers.device()),
                                    previous.get("run_state", {}).get("mlflow_run_id"), previous.get("history", []),
                                    args.init_from)
            run_state = {"mlflow_run_id": tracker.run_id}
        result = fit(config, args.data, workers, resume=resume, tracker=tracker, run_state=run_state,
                     init_from=args.init_from)
        registration = tracker.finish(result) if tracker else None
    except (ConfigError, DatasetError, ValueError) as error:
        if tracker:
            tracker.fail()
        print(f"train: error (rank {workers.rank}): {error}", file=sys.stderr)
        return 2, None
    except Stopped:
        if tracker:
            tracker.fail("KILLED")
        raise
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    if not workers.is_root:
        return 0, None
    return 0, {"test": result.test, "best_epoch": result.best_epoch, "best_validation": result.best_validation,
               "steps_per_epoch": result.steps_per_epoch, "mlflow_run_id": run_state.get("mlflow_run_id"),
               "registered": registration}


if __name__ == "__main__":
    sys.exit(main())
