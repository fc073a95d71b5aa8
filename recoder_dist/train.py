"""horovodrun -np N python -m recoder_dist.train --data DIR [--config conf/X.yaml] [--resume] [section.key=value ...]

Trains the autoencoder on a prepared dataset with batch-union sampling; without horovodrun it
trains in one process. Prints the test metrics as one JSON line at the end (rank 0).
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
from recoder_dist.checkpoint import LAST, load as load_checkpoint
from recoder_dist.config import ConfigError, load_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recoder_dist.train", description=__doc__.split("\n\n", 1)[1],
        epilog="Example: horovodrun -np 2 python -m recoder_dist.train --data data/default train.epochs=5 "
               "train.grad_exchange=sync_union", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory (jobs/prepare.py output)")
    parser.add_argument("--config", help="YAML config (default: conf/default.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in train.checkpoint_dir (and its MLflow run)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from recoder_dist.distributed import Workers
    from recoder_dist.trainer import fit

    workers = Workers.start()
    logging.basicConfig(level=logging.INFO if workers.is_root else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("petastorm").setLevel(logging.WARNING)  # per-reader schema notices
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # horovodrun stops ranks with SIGTERM
    tracker, run_state = None, {}
    try:
        config = load_config(args.config, args.overrides)
        if "MLFLOW_TRACKING_URI" in os.environ and not any(o.startswith("mlflow.tracking_uri=") for o in args.overrides):
            config.mlflow.tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
        if workers.is_root and config.mlflow.enabled:
            from recoder_dist.tracking import MlflowTracker
            previous = (load_checkpoint(Path(config.train.checkpoint_dir) / LAST) or {}) if args.resume else {}
            tracker = MlflowTracker(config, read_manifest(args.data), args.data, workers.size, str(workers.device()),
                                    previous.get("run_state", {}).get("mlflow_run_id"), previous.get("history", []))
            run_state = {"mlflow_run_id": tracker.run_id}
        result = fit(config, args.data, workers, resume=args.resume, tracker=tracker, run_state=run_state)
        registration = tracker.finish(result, load_checkpoint(result.best_checkpoint)) if tracker else None
    except (ConfigError, DatasetError, ValueError) as error:
        if tracker:
            tracker.fail()
        print(f"train: error (rank {workers.rank}): {error}", file=sys.stderr)
        return 2
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    if workers.is_root:
        print(json.dumps({"test": result.test, "best_epoch": result.best_epoch,
                          "best_validation": result.best_validation, "steps_per_epoch": result.steps_per_epoch,
                          "mlflow_run_id": run_state.get("mlflow_run_id"), "registered": registration}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
