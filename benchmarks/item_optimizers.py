"""python benchmarks/item_optimizers.py [--datasets ml-100k,ml20m] [--optimizers adam,lazy_adam,rowwise_adagrad]
    [--seeds 1,2,3] [--results FILE] [--report-only]

Dense Adam against the row-sparse item optimizers (``train.item_optimizer``, issue 12) on the same
data with the same settings, one ``trainer.fit`` per (dataset, optimizer, seed) in a process of
its own (one process, both cores), with ``train.seed`` = the seed (initialisation, dropout,
sampling; the split is fixed):

- ``ml-100k``: real MovieLens 100K prepared and trained with ``conf/ml-100k.yaml`` as shipped;
  test metrics of the best-validation epoch;
- ``ml20m``: the ML-20M-sized synthetic of ``benchmarks/train_speed.py`` (138,493 users × 26,744 items,
  every interaction kept), two epochs at its speed settings (batch 500, union per 500 users,
  h = 200, the default loss and rate held constant); test metrics after them, and the seconds
  of each epoch (training only; the report takes each run's faster one, which leaves out
  one-time costs such as loading the compiled row kernels).

``rowwise_adagrad`` runs with its own ``train.item_lr`` (``ROWWISE_ITEM_LR``, the best of a few
rates on the dataset's first seed: one accumulator per row wants a rate of its own).
Every run appends one JSON line to ``--results`` (default ``data/bench/item-optimizers.jsonl``),
so a long comparison can be split into several commands (``--seeds 1``, then ``--seeds 2,3``);
the report at the end covers every line of the file: mean ± standard deviation over seeds, and
each optimizer's ratio to dense Adam's mean.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ML20M  # noqa: E402
from pipeline.config import PrepareConfig  # noqa: E402
from recoder_dist.config import load_config  # noqa: E402

DATA = ROOT / "data" / "bench"
# the ML-20M-sized synthetic (benchmarks.common.ML20M) and its prepare settings
ML20M_PREPARE = PrepareConfig(rating_threshold=None, binarize=True, duplicates="max", min_user_interactions=5,
                              validation_users=0.1, test_users=0.1, seed=3, max_ranks=8, row_groups_per_rank=4,
                              min_rows_per_group=500)
SETTINGS = {
    "ml-100k": (str(ROOT / "conf" / "ml-100k.yaml"), ["mlflow.enabled=false"]),
    "ml20m": (None, ["train.batch_size=500", "train.num_sampling_users=500", "model.hidden_sizes=[200]",
                     "train.lr_schedule=step", "train.milestones=[1000]", "train.epochs=2", "train.eval_batch_size=1000",
                     "mlflow.enabled=false"]),
}
OPTIMIZER = {"adam": ["train.item_optimizer=adam"], "lazy_adam": ["train.item_optimizer=lazy_adam"],
             "rowwise_adagrad": ["train.item_optimizer=rowwise_adagrad"]}
ROWWISE_ITEM_LR = {"ml-100k": 0.1, "ml20m": 0.01}
METRICS = ("recall_at_20", "ndcg_at_100")


def prepared(name: str) -> Path:
    """The dataset ``name`` prepared under ``data/bench`` (once; reused while its settings hold)."""
    out = DATA / f"item-optimizers-{name}"
    if name == "ml-100k":
        from pipeline.datasets import movielens_100k
        source, fmt, config = movielens_100k(), "recbole", load_config(ROOT / "conf" / "ml-100k.yaml").prepare
        settings = {"prepare": asdict(config)}
    else:
        source, fmt, config = None, "parquet", ML20M_PREPARE
        settings = {"synthetic": asdict(ML20M), "prepare": asdict(config)}
    marker = out / "benchmark-settings.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return out
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pipeline.prepare import prepare
    from pipeline.spark import spark_session
    if source is None:
        from pipeline.synthetic import generate, write
        source = write(generate(ML20M), DATA / "raw" / f"{name}.parquet")
    spark = spark_session("item-optimizers-prepare")
    try:
        prepare(spark, str(source), str(out), fmt, config, True)
    finally:
        spark.stop()
    if name != "ml-100k":
        Path(source).unlink()
    marker.write_text(json.dumps(settings))
    return out


def worker(data: Path, config_path: Optional[str], overrides: list[str], out: Path) -> int:
    """One ``trainer.fit`` in this process; its test metrics and epoch times to ``out``."""
    from recoder_dist.distributed import Workers
    from recoder_dist.trainer import fit

    config = load_config(config_path, overrides)
    started = time.perf_counter()
    result = fit(config, data, Workers.start())
    out.write_text(json.dumps({"test": result.test, "best_epoch": result.best_epoch,
                               "epoch_s": [h["epoch_s"] for h in result.history],
                               "target_size": [h["target_size"] for h in result.history],
                               "fit_s": time.perf_counter() - started}))
    return 0


def run(name: str, optimizer: str, seed: int, results: Path) -> dict:
    """Train one (dataset, optimizer, seed) in a subprocess; append its line to ``results``."""
    config_path, overrides = SETTINGS[name]
    scratch = DATA / "item-optimizers-runs"
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{name}-{optimizer}-{seed}.json"
    overrides = [*overrides, *OPTIMIZER[optimizer], f"train.seed={seed}",
                 *([f"train.item_lr={ROWWISE_ITEM_LR[name]}"] if optimizer == "rowwise_adagrad" else []),
                 f"train.checkpoint_dir={scratch / 'checkpoints'}"]
    command = [sys.executable, __file__, "--worker", str(out), "--data", str(prepared(name))]
    command += [*(["--config", config_path] if config_path else []), *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} {optimizer} seed {seed} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = {"dataset": name, "optimizer": optimizer, "seed": seed, "load": round(os.getloadavg()[0], 2),
            "at": time.strftime("%Y-%m-%d %H:%M"), **json.loads(out.read_text())}
    with open(results, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    print(f"  {name} {optimizer} seed {seed}: " + "  ".join(f"{k} {line['test'][k]:.4f}" for k in METRICS)
          + f"  epoch {min(line['epoch_s']):.1f} s, mean union {line['target_size'][0]:,.0f} items", flush=True)
    return line


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def report(lines: list[dict]) -> str:
    """Markdown tables per dataset: mean ± std over seeds, and the ratio to dense Adam's mean."""
    out = []
    for name in dict.fromkeys(line["dataset"] for line in lines):
        rows = [line for line in lines if line["dataset"] == name]
        by = {o: [r for r in rows if r["optimizer"] == o] for o in dict.fromkeys(r["optimizer"] for r in rows)}
        base = by.get("adam", [])
        out += [f"**{name}**", "", "| optimizer | seeds | " + " | ".join(f"test {m}" for m in METRICS)
                + " | NDCG ÷ adam | epoch s (fastest per run, mean) | ÷ adam |", "| --- " * 7 + "|"]
        for optimizer, runs in by.items():
            ndcg = statistics.mean(r["test"]["ndcg_at_100"] for r in runs)
            epoch = statistics.mean(min(r["epoch_s"]) for r in runs)
            ratio = (f"{ndcg / statistics.mean(r['test']['ndcg_at_100'] for r in base):.3f}" if base else "")
            speed = f"{epoch / statistics.mean(min(r['epoch_s']) for r in base):.2f}" if base else ""
            out.append(f"| {optimizer} | {','.join(str(r['seed']) for r in runs)} | "
                       + " | ".join(mean_std([r["test"][m] for r in runs]) for m in METRICS)
                       + f" | {ratio} | {epoch:.2f} | {speed} |")
        out.append("")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("--worker", type=Path)
        parser.add_argument("--data", type=Path)
        parser.add_argument("--config")
        parser.add_argument("overrides", nargs="*")
        args = parser.parse_args(argv)
        return worker(args.data, args.config, args.overrides, args.worker)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1].split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,ml20m")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZER))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--results", type=Path, default=DATA / "item-optimizers.jsonl")
    parser.add_argument("--report-only", action="store_true", help="print the report of --results and exit")
    args = parser.parse_args(argv)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.datasets.split(","):
            if name not in SETTINGS:
                parser.error(f"unknown dataset {name!r}; choose from {', '.join(SETTINGS)}")
            for seed in [int(s) for s in args.seeds.split(",")]:
                for optimizer in args.optimizers.split(","):
                    if optimizer not in OPTIMIZER:
                        parser.error(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZER)}")
                    run(name, optimizer, seed, args.results)
    lines = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    print(report(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
