"""python benchmarks/million_items.py --work DIR [--stages generate,prepare,train,load,recommend,serve]
    [--users 30000] [--items 1500000] [--hidden 100] [--item-optimizer lazy_adam] [--epochs 1]

The whole pipeline on a synthetic catalogue of a million items and more (issue 12), each stage a
real subprocess, as a user runs it:

1. ``generate``: ``python jobs/generate.py`` — seeded long-tail interactions (Zipf exponent 0.4
   over ``--items``; each user scores ``synthetic.candidate_items`` candidates drawn by popularity
   instead of the whole catalogue);
2. ``prepare``: ``spark-submit jobs/prepare.py`` with the embedded default's rules;
3. ``train``: ``horovodrun -np 2 python -m recoder_dist.train`` (``--epochs``, the row-sparse item
   optimizer), which logs the run to a private sqlite MLflow store and registers the model;
4. ``load``: the best checkpoint loaded into a model that recommends for one test user, and the
   registered MLflow model loaded with ``mlflow.pyfunc.load_model`` answering the same user — each
   in a process of its own (``--worker``), so that its peak RSS is its own;
5. ``recommend``: ``spark-submit jobs/recommend.py`` for every test user (top 100);
6. ``serve``: ``mlflow models serve`` of the champion answering a request for three test users.

Every stage records its wall time and the peak resident memory of its whole process tree (the
launcher and every Python process and JVM under it: Spark's driver and Python workers, the Horovod
ranks, the model server; sampled every 0.2 s with psutil) in ``DIR/results.json``; the stages run
in the order given and a stage whose inputs exist can be run again on its own (``--stages train``),
so that the run can be split into commands of a few minutes. The last lines print the table of
every stage recorded so far.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: serve_model, post_json

STAGES = ("generate", "prepare", "train", "load", "recommend", "serve")
MODEL_NAME = "recoder"
GB = 1 << 30


class TreeMemory:
    """Peak summed RSS of a process tree, sampled every ``interval`` s in a thread.

    Counted: every process of the tree (the root only with ``root=True``), except short-lived
    forks of a JVM (``chmod`` through jspawnhelper, which Hadoop's local file system runs per
    file), which share its pages and would double its RSS (as in ``benchmarks/prepare.py``)."""

    def __init__(self, pid: int, root: bool = True, interval: float = 0.2) -> None:
        self.pid, self.root, self.interval, self.peak = pid, root, interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)] if self.root else root.children(recursive=True)
            except psutil.Error:
                return
            names = {}
            for process in tree:
                try:
                    names[process.pid] = process.name()
                except psutil.Error:
                    continue
            total = 0
            for process in tree:
                try:
                    with process.oneshot():
                        fork_of_jvm = names.get(process.ppid()) == "java" and \
                            not process.name().startswith(("python", "java"))
                        if not fork_of_jvm:
                            total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def measured(command: Sequence[str], log: Path, env: dict) -> dict:
    """Run ``command`` in the repository root (output to ``log``): exit status, seconds, peak GB."""
    started = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        with TreeMemory(process.pid) as memory:
            returncode = process.wait()
    result = {"returncode": returncode, "seconds": round(time.perf_counter() - started, 1),
              "peak_gb": round(memory.peak / GB, 2), "log": str(log)}
    if returncode != 0:
        raise SystemExit(f"{command[0]} {' '.join(command[1:4])} ... failed ({returncode}); "
                         f"the end of {log}:\n{log.read_text()[-3000:]}")
    return result


def environment() -> dict:
    """The variables every stage runs with (the README's set-up: Spark on loopback, the venv's Python)."""
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python,
               PYTHONPATH=str(ROOT), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return env


class Work:
    """The run's folder: inputs and outputs of every stage, and ``results.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.raw = self.root / "raw" / "interactions.parquet"
        self.data = self.root / "data"
        self.checkpoints = self.root / "checkpoints"
        self.recommendations = self.root / "recommendations"
        self.tracking_uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.results_path = self.root / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}

    def record(self, stage: str, result: dict) -> None:
        self.results[stage] = result
        self.results_path.write_text(json.dumps(self.results, indent=2))

    def log(self, stage: str) -> Path:
        (self.root / "logs").mkdir(exist_ok=True)
        return self.root / "logs" / f"{stage}.log"

    def needs(self, path: Path, stage: str) -> None:
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the {stage} stage first (--stages {stage})")


def test_histories(data: Path, count: int) -> list[list[str]]:
    """Fold-in histories (original item ids) of the first ``count`` test users (an array lookup:
    ``tests/_data.original_histories`` indexes a pandas Series per user, minutes at 1M items)."""
    import numpy as np
    import pyarrow.parquet as pq

    items = pq.read_table(data / "items", columns=["item_idx", "item_id"]).to_pandas()
    ids = np.empty(len(items), dtype=object)
    ids[items["item_idx"].to_numpy()] = items["item_id"].astype(str).to_numpy()
    rows = pq.read_table(data / "test", columns=["items"]).slice(0, count).to_pydict()["items"]
    return [ids[np.asarray(row, dtype=np.int64)].tolist() for row in rows]


def run_stage(stage: str, work: Work, args: argparse.Namespace, env: dict) -> dict:
    """Run one stage; its measurements (and what it produced) for ``results.json``."""
    spark_submit = [str(Path(sys.executable).parent / "spark-submit"), "--properties-file",
                    str(ROOT / "conf" / "spark-defaults.conf")]
    if stage == "generate":
        return measured([sys.executable, "jobs/generate.py", "--output", str(work.raw),
                         f"synthetic.num_users={args.users}", f"synthetic.num_items={args.items}",
                         f"synthetic.mean_interactions={args.mean_interactions}",
                         f"synthetic.zipf_exponent={args.zipf}", f"synthetic.candidate_items={args.candidates}",
                         "synthetic.seed=12"], work.log(stage), env)
    if stage == "prepare":
        work.needs(work.raw, "generate")
        result = measured([*spark_submit, "jobs/prepare.py", "--input", str(work.raw), "--output", str(work.data),
                           "--overwrite"], work.log(stage), env)
        manifest = json.loads((work.data / "manifest.json").read_text())
        return {**result, "num_items": manifest["num_items"], "num_users": manifest["num_users"],
                "interactions": manifest["interactions"]["kept"]}
    if stage == "train":
        work.needs(work.data / "manifest.json", "prepare")
        result = measured([str(Path(sys.executable).parent / "horovodrun"), "-np", str(args.ranks), sys.executable,
                           "-m", "recoder_dist.train", "--data", str(work.data),
                           f"model.hidden_sizes=[{args.hidden}]", f"train.epochs={args.epochs}",
                           f"train.item_optimizer={args.item_optimizer}", f"train.batch_size={args.batch_size}",
                           f"train.num_sampling_users={args.batch_size}", "train.milestones=[100]",
                           f"train.checkpoint_dir={work.checkpoints}", f"mlflow.tracking_uri={work.tracking_uri}",
                           f"mlflow.artifact_location={work.root / 'mlruns'}",
                           f"mlflow.registered_model={MODEL_NAME}"], work.log(stage), env)
        lines = [line for line in work.log(stage).read_text().splitlines() if '{"test"' in line]
        summary = json.loads(lines[-1][lines[-1].index('{"test"'):])
        return {**result, "test": summary["test"], "registered": summary["registered"],
                "steps_per_epoch": summary["steps_per_epoch"]}
    if stage == "load":
        work.needs(work.checkpoints, "train")
        loads = {}
        for what in ("checkpoint", "mlflow-model"):
            loads[what] = measured([sys.executable, __file__, "--work", str(work.root), "--worker", what],
                                   work.log(f"load-{what}"), env)
            answers = [line for line in Path(loads[what]["log"]).read_text().splitlines() if line.startswith("answer ")]
            loads[what]["answer"] = json.loads(answers[-1][len("answer "):])
        return loads
    if stage == "recommend":
        result = measured([*spark_submit, "jobs/recommend.py", "--model", f"models:/{MODEL_NAME}@champion",
                           "--data", str(work.data), "--split", "test", "--k", "100",
                           "--output", str(work.recommendations), "--tracking-uri", work.tracking_uri, "--overwrite"],
                          work.log(stage), env)
        import pyarrow.parquet as pq
        rows = pq.read_table(work.recommendations / "recommendations", columns=["user_id"]).num_rows
        return {**result, "rows": rows}
    if stage == "serve":
        return serve(work)
    raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")


def serve(work: Work) -> dict:
    """``mlflow models serve`` of the champion (tests/_cluster.serve_model): seconds until it
    answers ``/ping``, one request for three test users, peak RSS of the server's tree."""
    from _cluster import post_json, serve_model

    histories = test_histories(work.data, 3)
    started = time.perf_counter()
    # The server is a child of this process: sample this process's children from before the
    # start, so that the model's load is counted.
    with TreeMemory(os.getpid(), root=False) as memory:
        service = serve_model(f"models:/{MODEL_NAME}@champion", work.tracking_uri, work.root / "serve")
        try:
            ready = time.perf_counter() - started
            status, body = post_json(f"{service.url}/invocations",
                                     {"dataframe_records": [{"items": h} for h in histories], "params": {"k": 10}},
                                     timeout=300)
            answered = time.perf_counter() - started
        finally:
            service.stop()
    if status != 200:
        raise SystemExit(f"the served model answered {status}: {body}")
    return {"seconds": round(answered, 1), "ready_seconds": round(ready, 1),
            "peak_gb": round(memory.peak / GB, 2),
            "answer": [p["recommended"] for p in body["predictions"]]}


def load_worker(work: Work, what: str) -> int:
    """Load the best checkpoint (``checkpoint``) or the registered model (``mlflow-model``) and
    recommend for the first test user; print the answer on a line ``answer [ids]``."""
    import pandas as pd

    history = test_histories(work.data, 1)
    if what == "checkpoint":
        import yaml

        from recoder_dist import checkpoint
        from recoder_dist.config import load_config
        from recoder_dist.recommender import Recommender
        from recoder_dist.trained import ItemMap, TrainedModel, build_network

        run = sorted(p for p in work.checkpoints.iterdir() if p.is_dir())[-1]
        state = checkpoint.load(run / checkpoint.BEST)
        saved = work.root / "checkpoint-config.yaml"
        saved.write_text(yaml.safe_dump({"model": state["config"]["model"]}))  # other sections' keys may change
        settings = load_config(saved).model
        model = build_network(int(state["num_items"]), settings)
        model.load_state_dict(state["model"])
        trained = TrainedModel(model, settings, ItemMap.of_dataset(work.data))
        answer = Recommender(trained).recommend(history, k=10).items[0]
    else:
        import mlflow

        mlflow.set_tracking_uri(work.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        answer = list(model.predict(pd.DataFrame({"items": history}), params={"k": 10}).iloc[0]["recommended"])
    print("answer " + json.dumps([str(i) for i in answer]))
    return 0


def table(results: dict) -> str:
    """The stages recorded so far as a Markdown table."""
    rows = ["| stage | wall s | peak RSS GB (process tree) | note |", "| --- | --: | --: | --- |"]
    notes = {"prepare": lambda r: f"{r['num_items']:,} items, {r['interactions']:,} interactions kept, "
                                  f"users {r['num_users']}",
             "train": lambda r: f"{r['steps_per_epoch']} steps/epoch/rank, test " +
                                ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items()),
             "recommend": lambda r: f"{r['rows']:,} rows written",
             "serve": lambda r: f"ready after {r['ready_seconds']} s; answered {len(r['answer'])} users"}
    for stage in STAGES:
        if stage not in results:
            continue
        parts = results[stage].items() if stage == "load" else [(stage, results[stage])]
        for name, r in parts:
            label = f"load: {name}" if stage == "load" else name
            note = notes[stage](r) if stage in notes else ""
            rows.append(f"| {label} | {r['seconds']} | {r['peak_gb']} | {note} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1].split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder of the run (created; reused by later stages)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated, in order (default {','.join(STAGES)})")
    parser.add_argument("--users", type=int, default=30000)
    parser.add_argument("--items", type=int, default=1_500_000)
    parser.add_argument("--mean-interactions", type=float, default=300)
    parser.add_argument("--zipf", type=float, default=0.4)
    parser.add_argument("--candidates", type=int, default=1500, help="synthetic.candidate_items")
    parser.add_argument("--hidden", type=int, default=100, help="model.hidden_sizes=[H]")
    parser.add_argument("--item-optimizer", default="lazy_adam")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500, help="per rank; also train.num_sampling_users")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", choices=("checkpoint", "mlflow-model"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Work(args.work)
    if args.worker:
        return load_worker(work, args.worker)
    env = environment()
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        print(f"== {stage}", flush=True)
        work.record(stage, run_stage(stage, work, args, env))
        print(json.dumps(work.results[stage])[:600], flush=True)
    print(table(work.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
