"""Benchmark of batch scoring: the Spark recommend job against the pyfunc model in one process.

    python benchmarks/recommend.py [--split train] [--k 100] [--cache-dir DIR]

On a seeded synthetic dataset of MovieLens-1M's shape (6,040 users x 3,706 items, ~1M
interactions; every rating kept as an implicit 1), prepared once by ``jobs/prepare.py``, a model
of the embedded default's size (h=200) is trained for one epoch and registered in a private
sqlite store (nothing touches the repository's ``mlflow.db``). The users of one split (their
item lists as histories, top-``k`` each) are then scored by:

- the pyfunc model (``mlflow.pyfunc.load_model``) called in this process, with 1 torch thread
  and with one per core, in batches of ``--batch`` users (Spark's Arrow batch size), best of 3;
- ``spark-submit jobs/recommend.py``, end to end (JVM start, model download, read, score, write);
- ``pipeline.recommend.recommend`` on a started local SparkSession (the job minus start-up:
  ``mapInPandas`` with the model loaded once per partition, Parquet written, summary read back),
  the histories cached beforehand; its first call (Python workers start) and the best later one.

Users per second and the ratio to the in-process pyfunc model (all cores) are printed, with the
share of the CPUs that other processes used meanwhile. The Spark output is checked to equal the
pyfunc model's for every user.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CACHE = Path("~/.cache/recoder-dist/benchmarks").expanduser()
ML1M = dict(num_users=6040, num_items=3706, mean_interactions=165.6, seed=2024)  # ML-1M: 1,000,209 ratings
MODEL = "recoder-bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="train", help="split whose users are scored (default train, the largest)")
    parser.add_argument("--k", type=int, default=100, help="recommendations per user (default 100, the job's)")
    parser.add_argument("--batch", type=int, default=10_000, help="users per pyfunc call (default 10000)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"inputs and scratch (default {DEFAULT_CACHE})")
    args = parser.parse_args(argv)

    work = args.cache_dir / "recommend"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The in-process SparkSession's workers inherit this (one torch thread per task); the
    # pyfunc passes set their threads explicitly.
    os.environ.update({k: env[k] for k in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                                           "OMP_NUM_THREADS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    data = ensure_prepared(args.cache_dir, work, env)
    tracking_uri = ensure_model(data, work, env)
    manifest = json.loads((data / "manifest.json").read_text())
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; data: {manifest['num_items']:,} items, {manifest['num_users']} users, "
          f"{manifest['interactions']['kept']:,} interactions kept; scoring split {args.split!r}, k={args.k}",
          flush=True)

    import mlflow
    import pandas as pd
    import torch

    histories = split_histories(data, args.split)
    users = sorted(histories)
    frame = pd.DataFrame({"items": [histories[u] for u in users]})
    interactions = int(frame["items"].map(len).sum())
    print(f"{len(users):,} users, {interactions:,} history items", flush=True)

    mlflow.set_tracking_uri(tracking_uri)
    shutil.rmtree(work / "model", ignore_errors=True)
    model_path = mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(work / "model"))
    rows = []
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_path)
    load_seconds = time.perf_counter() - started
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        timings = []
        for _ in range(3):
            with contention() as busy:
                started = time.perf_counter()
                parts = [model.predict(frame.iloc[i:i + args.batch], params={"k": args.k})
                         for i in range(0, len(frame), args.batch)]
                seconds = time.perf_counter() - started
            timings.append((seconds, busy["others"]))
        reference = pd.concat(parts, ignore_index=True).assign(user_id=users).set_index("user_id")
        rows.append((f"pyfunc, one process, {threads} thread(s)", *min(timings),
                     f"best of 3; model load {load_seconds:.1f} s not counted"))
    baseline = rows[-1][1]

    out = work / "recs"
    command = [_spark_submit(), "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.showConsoleProgress=false",
               "jobs/recommend.py", "--model", f"models:/{MODEL}@champion", "--data", str(data), "--split", args.split,
               "--k", str(args.k), "--output", str(out), "--overwrite", "--tracking-uri", tracking_uri]
    with contention() as busy:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"recommend job failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    check_same(out, reference)
    rows.append(("Spark job: spark-submit jobs/recommend.py, end to end", seconds, busy["others"],
                 "JVM start, model download, read split, score, write"))

    timings = warm_spark_scoring(data, args.split, model_path, args.k, work / "recs-warm", len(users))
    check_same(work / "recs-warm", reference)
    rows.append(("Spark: recommend() on a started session, 1st call", *timings[0],
                 "Python workers start (torch, MLflow imports)"))
    rows.append(("Spark: recommend() on a started session, later calls", *min(timings[1:]),
                 f"best of {len(timings) - 1}; workers reused; {cores} tasks x 1 torch thread"))

    print()
    print(f"{'path':<56} {'users':>6} {'seconds':>8} {'users/s':>8} {'ratio':>6} {'others CPU':>10}  note")
    for name, seconds, others, note in rows:
        print(f"{name:<56} {len(users):>6,} {seconds:>8.2f} {len(users) / seconds:>8,.0f} "
              f"{baseline / seconds:>6.2f} {others:>10.0%}  {note}")
    print(f"\nratio = users/s of the path / users/s of the pyfunc model in one process with {cores} thread(s); "
          f"Spark outputs equal the pyfunc model's for all {len(users):,} users")
    return 0


def ensure_prepared(cache: Path, work: Path, env: dict) -> Path:
    """The ML-1M-shaped dataset, generated and prepared once (all ratings kept, as 1)."""
    data = work / "prepared"
    if (data / "manifest.json").exists():
        return data
    from pipeline.synthetic import generate, write
    from recoder_dist.config import SyntheticConfig

    raw = cache / "inputs" / "synthetic-ml1m.parquet"
    if not raw.exists():
        write(generate(SyntheticConfig(**ML1M)), raw)
    done = subprocess.run([_spark_submit(), "--properties-file", "conf/spark-defaults.conf",
                           "--conf", "spark.ui.showConsoleProgress=false", "jobs/prepare.py", "--input", str(raw),
                           "--output", str(data), "--overwrite", "prepare.rating_threshold=null"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"prepare failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return data


def ensure_model(data: Path, work: Path, env: dict) -> str:
    """A registered model (one epoch of the default architecture) in a private sqlite store."""
    store = work / "mlflow"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    if not (store / "mlflow.db").exists():
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        done = subprocess.run([sys.executable, "-m", "recoder_dist.train", "--data", str(data), "train.epochs=1",
                               f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={store / 'mlruns'}",
                               f"mlflow.registered_model={MODEL}", f"train.checkpoint_dir={store / 'checkpoints'}"],
                              cwd=store, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(store, ignore_errors=True)
            raise SystemExit(f"training failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return uri


def split_histories(data: Path, split: str) -> dict[str, list[str]]:
    """``{user_id: item ids}`` of a split in original ids (what the job scores)."""
    import pyarrow.parquet as pq

    users = pq.read_table(data / "users").to_pandas().set_index("user_idx")["user_id"]
    items = pq.read_table(data / "items").to_pandas().sort_values("item_idx")["item_id"].to_numpy()
    table = pq.read_table(data / split, columns=["user_idx", "items"]).to_pydict()
    return {users[u]: items[list(i)].tolist() for u, i in zip(table["user_idx"], table["items"])}


def warm_spark_scoring(data: Path, split: str, model_path: str, k: int, out: Path, expected_users: int,
                       repeats: int = 3) -> list[tuple[float, float]]:
    """``(seconds, others' CPU share)`` of each of ``repeats`` calls of ``pipeline.recommend.recommend``
    on one started session with cached histories: the first call starts the Python workers (torch
    and MLflow imports), later ones reuse them."""
    from pipeline import recommend
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[*]").appName("bench-recommend")
             .config("spark.driver.memory", "6g").config("spark.sql.shuffle.partitions", "8")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    timings = []
    try:
        histories = recommend.split_histories(spark, str(data), split).cache()
        assert histories.count() == expected_users
        for _ in range(repeats):
            with contention() as busy:
                started = time.perf_counter()
                summary = recommend.recommend(spark, model_path, histories, k, str(out), overwrite=True)
                seconds = time.perf_counter() - started
            assert summary["users"] == expected_users
            timings.append((seconds, busy["others"]))
    finally:
        spark.stop()
    return timings


def check_same(out: Path, reference) -> None:
    """Every user's recommended items equal the pyfunc model's (scores to float precision)."""
    import numpy as np
    import pandas as pd

    written = pd.read_parquet(out / "recommendations").set_index("user_id").sort_index()
    assert list(written.index) == list(reference.index), "the job scored other users"
    for user, row in written.iterrows():
        want = reference.loc[user]
        assert list(row["recommended"]) == list(want["recommended"]), f"user {user}: other items"
        assert np.allclose(row["scores"], want["scores"], rtol=1e-5, atol=1e-6), f"user {user}: other scores"


@contextmanager
def contention() -> Iterator[dict]:
    """Share of the machine's CPU time used by processes outside this one and its children
    (Spark's JVM and Python workers, sampled every 0.2 s); ``result["others"]`` after the block."""
    import psutil

    me = psutil.Process()
    ours: dict[int, float] = {}
    stop = threading.Event()

    def record(into: dict[int, float]) -> None:
        for p in [me, *me.children(recursive=True)]:
            try:
                cpu = p.cpu_times()
                into[p.pid] = cpu.user + cpu.system
            except psutil.Error:
                pass

    def sample():
        while True:
            record(ours)
            if stop.wait(0.2):
                break

    before_ours: dict[int, float] = {}
    record(before_ours)
    result: dict = {}
    machine_before, started = psutil.cpu_times(), time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        seconds = time.perf_counter() - started
        after = psutil.cpu_times()
        busy = (sum(after) - after.idle - getattr(after, "iowait", 0)) \
            - (sum(machine_before) - machine_before.idle - getattr(machine_before, "iowait", 0))
        used = sum(v - before_ours.get(pid, 0.0) for pid, v in ours.items())
        result["others"] = max(0.0, busy - used) / (seconds * (os.cpu_count() or 1))


def _spark_submit() -> str:
    local = Path(sys.executable).parent / "spark-submit"
    return str(local) if local.exists() else "spark-submit"


if __name__ == "__main__":
    sys.exit(main())
