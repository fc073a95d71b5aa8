"""What the trainer benchmarks share: the dataset shapes and their cached preparation, one
training run as a subprocess (``benchmarks/fit_worker.py`` calling ``trainer.fit``), the step of
``trainer.fit`` built in this process, the FLOP model and GEMM ceilings, and the report's tables.

Not a benchmark itself: ``train_speed.py``, ``train_step.py``, ``train_feed.py`` and
``train_quality.py`` measure (``benchmarks/README.md``); ``quality.py`` and ``launchers.py``
use these helpers too.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import PrepareConfig, SyntheticConfig  # noqa: E402
from recoder_dist.config import Config, load_config  # noqa: E402

CORES = os.cpu_count() or 1
T = TypeVar("T")
WORKER = ROOT / "benchmarks" / "fit_worker.py"
# MovieLens-1M's shape: 6,040 users, 3,706 items, 1.0M ratings (165.6 per user)
ML1M = SyntheticConfig(num_users=6040, num_items=3706, mean_interactions=165.6, num_factors=16, seed=7)
# MovieLens-20M's shape: 138,493 users, 26,744 items, 20.0M ratings (144.4 per user)
ML20M = SyntheticConfig(num_users=138493, num_items=26744, mean_interactions=144.4, num_factors=16, seed=7)
# a smoke-run size (seconds per run): checks that a script runs, measures nothing worth quoting
TINY = SyntheticConfig(num_users=1500, num_items=400, mean_interactions=30, num_factors=8, seed=7)
SIZES = {"ml-1m": ML1M, "ml-20m": ML20M, "tiny": TINY}
# every interaction kept (no threshold), so the trainer sees ~1M (~20M) interactions; train row
# groups as the embedded default sizes them (conf/default.yaml)
_DEFAULT = load_config(ROOT / "conf" / "default.yaml").prepare
SPEED_PREPARE = PrepareConfig(rating_threshold=None, binarize=True, duplicates="max", min_user_interactions=5,
                              validation_users=0.1, test_users=0.1, seed=3, max_ranks=_DEFAULT.max_ranks,
                              row_groups_per_rank=_DEFAULT.row_groups_per_rank,
                              min_rows_per_group=_DEFAULT.min_rows_per_group)
# the same users in tiny row groups: 64 ranks × 4 with no minimum size (~19 users per group at ML-1M size)
TINY_GROUPS = replace(SPEED_PREPARE, max_ranks=64, min_rows_per_group=1)
# the ML-20M hyper-parameters of the original (conf/ml-20m.yaml): batch 500, union per 500 users, h=200
SPEED_TRAIN = ["train.batch_size=500", "train.num_sampling_users=500", "model.hidden_sizes=[200]",
               "train.milestones=[1000]", "train.eval_every=1000", "mlflow.enabled=false"]
QUALITY_TRAIN = ["train.eval_every=1", "train.milestones=[1000]", "mlflow.enabled=false"]


# --- training runs ---------------------------------------------------------------------------

def train(label: str, data: Path, ranks: int, threads: int, overrides: Sequence[str], work: Path,
          config: Optional[str] = None, ceiling: bool = True) -> dict:
    """One training subprocess (``[horovodrun -np R] python benchmarks/fit_worker.py``); its
    result plus the settings it ran with."""
    out = work / f"{label}.json"
    overrides = [*overrides, f"train.threads={threads}", f"train.checkpoint_dir={work / ('ckpt-' + label)}"]
    command = [sys.executable, str(WORKER), "--data", str(data), "--out", str(out)]
    command += ["--config", config] if config else []
    command += ["--ceiling"] if ceiling else []
    command += overrides
    if ranks > 1:
        command = [str(Path(sys.executable).with_name("horovodrun")), "-np", str(ranks), "--gloo", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result.update(label=label, wall_s=time.perf_counter() - started, ranks=ranks, threads=threads,
                  config=load_config(config, overrides).to_dict())
    print(f"  {label}: {steady(result)['epoch_s']:.2f} s/epoch, {steady(result)['users_per_s']:.0f} users/s "
          f"({result['wall_s']:.0f} s wall)", flush=True)
    return result


def steady(result: dict) -> dict:
    """Seconds/epoch and users/s of the fastest epoch after the first (which pays for reader start,
    allocations, thread spin-up): best-of, as other work on a shared machine only slows epochs."""
    epochs = result["history"][1:] or result["history"]
    seconds = min(h["epoch_s"] for h in epochs)
    users = round(epochs[0]["users_per_s"] * epochs[0]["epoch_s"])
    target = statistics.mean(h["target_size"] for h in epochs)
    return {"epoch_s": seconds, "users_per_s": users / seconds, "users": users, "target_size": target}


def one_process_step(config: Config, num_items: int):
    """``trainer.Step`` as ``trainer.fit`` builds it on one CPU process (its model, optimizer,
    loss, dtype rule and malloc setting), seeded: the step without the feed or the epoch loop."""
    import torch

    from recoder_dist.allocator import reuse_freed_memory
    from recoder_dist.distributed import Workers
    from recoder_dist.precision import training_dtype
    from recoder_dist.trainer import build_step

    device = torch.device("cpu")
    reuse_freed_memory()
    dtype, _ = training_dtype(config.train.dtype, config.train.force_dtype, device)
    torch.manual_seed(0)
    return build_step(config, num_items, Workers(rank=0, size=1, local_rank=0, local_size=1), device, dtype)


# --- data ------------------------------------------------------------------------------------

class Datasets:
    """Prepared datasets under ``root``, prepared with one lazily started SparkSession."""

    def __init__(self, root: Path, fresh: bool) -> None:
        self.root, self.fresh, self.spark = root, fresh, None

    def _prepare(self, source: Path, out: Path, fmt: str, config: PrepareConfig) -> Path:
        from pipeline.prepare import prepare
        if self.spark is None:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            from pyspark.sql import SparkSession
            self.spark = (SparkSession.builder.master(f"local[{CORES}]").appName("benchmark-train")
                          .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
                          .config("spark.sql.shuffle.partitions", "8").config("spark.driver.bindAddress", "127.0.0.1")
                          .config("spark.sql.session.timeZone", "UTC").getOrCreate())
            self.spark.sparkContext.setLogLevel("ERROR")
        started = time.perf_counter()
        prepare(self.spark, str(source), str(out), fmt, config, overwrite=True)
        print(f"  prepared {out} in {time.perf_counter() - started:.0f} s", flush=True)
        return out

    def _wanted(self, out: Path, settings: dict) -> bool:
        stamp = out / "benchmark-settings.json"
        return self.fresh or not stamp.is_file() or json.loads(stamp.read_text()) != settings

    def synthetic(self, name: str, synthetic: SyntheticConfig, prepare: PrepareConfig) -> Path:
        from pipeline.synthetic import generate, write
        out = self.root / name
        settings = {"synthetic": asdict(synthetic), "prepare": asdict(prepare)}
        if self._wanted(out, settings):
            started = time.perf_counter()
            raw = write(generate(synthetic), self.root / "raw" / f"{name}.parquet")
            print(f"  generated {raw} in {time.perf_counter() - started:.0f} s", flush=True)
            self._prepare(raw, out, "parquet", prepare)
            raw.unlink()
            (out / "benchmark-settings.json").write_text(json.dumps(settings))
        return out

    def source(self, name: str, source: Path, fmt: str, prepare: PrepareConfig) -> Path:
        """``source`` prepared with ``prepare`` into ``root/name`` (reused while the settings match)."""
        out = self.root / name
        settings = {"source": str(source), "prepare": asdict(prepare)}
        if self._wanted(out, settings):
            self._prepare(source, out, fmt, prepare)
            (out / "benchmark-settings.json").write_text(json.dumps(settings))
        return out

    def movielens_100k(self) -> Path:
        from pipeline.datasets import movielens_100k
        return self.source("ml-100k", movielens_100k(), "recbole", load_config(ROOT / "conf" / "ml-100k.yaml").prepare)

    def close(self) -> None:
        if self.spark is not None:
            self.spark.stop()
            self.spark = None


def speed_dataset(datasets: Datasets, size: str, tiny_groups: bool = False) -> Path:
    """The synthetic dataset of ``size`` (``SIZES``) prepared for the speed runs (with tiny row
    groups: ``TINY_GROUPS``), cached as ``<size>-synthetic[-tiny-groups]``."""
    name = {"ml-1m": "ml1m", "ml-20m": "ml20m"}.get(size, size) + "-synthetic" + ("-tiny-groups" if tiny_groups else "")
    return datasets.synthetic(name, SIZES[size], TINY_GROUPS if tiny_groups else SPEED_PREPARE)


def manifest(data: Path) -> dict:
    return json.loads((data / "manifest.json").read_text())


# --- FLOPs and GEMM ceilings -------------------------------------------------------------------

def step_flops(batch: int, target: float, nnz: float, hidden: Sequence[int]) -> float:
    """Matmul-like FLOPs of one forward+backward step (multiply-add = 2 FLOPs).

    - embedding-bag encoder: forward 2·nnz·h0, backward (weight grad only: the input is data)
      2·nnz·h0;
    - each further encoder layer i→o and its decoder mirror: 2·B·i·o forward, 4·B·i·o backward,
      twice;
    - decoder over the target set T: forward 2·B·h0·T, backward 2·B·h0·T (grad of z) +
      2·B·h0·T (grad of D[T]) = 6·B·h0·T.
    Elementwise work (activations, softmax/log-sum-exp, loss, dropout, Adam, gathers) is not
    counted: the fraction of the GEMM ceiling is therefore a lower bound on the matmul share.
    """
    h0 = hidden[0]
    middle = sum(2 * 6 * batch * i * o for i, o in zip(hidden, hidden[1:]))
    return 4 * nnz * h0 + middle + 6 * batch * h0 * target


def gemm_gflops(batch: int, hidden: int, target: int, dtype: str, threads: int, seconds: float = 1.0) -> float:
    """GFLOP/s of the decoder's three GEMMs (forward, grad of z, grad of D) in ``dtype``."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    kind = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    z = torch.randn(batch, hidden, dtype=kind)
    d = torch.randn(target, hidden, dtype=kind)
    g = torch.randn(batch, target, dtype=kind)

    def once() -> None:
        torch.mm(z, d.t())
        torch.mm(g, d)
        torch.mm(g.t(), z)

    for _ in range(3):
        once()
    rates = []  # the best of five windows: a ceiling, robust to other work on the machine
    for _ in range(5):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            once()
            runs += 1
        rates.append(runs * 6 * batch * hidden * target / (time.perf_counter() - started) / 1e9)
    torch.set_num_threads(previous)
    return max(rates)


def achieved(result: dict, data: Path) -> dict:
    """Training-step GFLOP/s over a steady epoch, all ranks together."""
    m, config = manifest(data), result["config"]
    nnz_per_user = m["nnz"]["train"]["items"] / m["num_users"]["train"]
    s = steady(result)
    batch = config["train"]["batch_size"]
    steps = s["users"] / batch  # over all ranks
    flops = steps * step_flops(batch, s["target_size"], batch * nnz_per_user, config["model"]["hidden_sizes"])
    return {"gflops": flops / s["epoch_s"] / 1e9, "batch": batch, "target": s["target_size"]}


# --- report ----------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, data_dir: str, fresh: bool, data_of: Callable[[Datasets], T],
           measure: Callable[[T, Path], list[str]]) -> int:
    """A benchmark script's run: its data prepared (or reused) under ``data_dir``, then
    ``measure(data, work folder)``'s lines printed under a title line (date, cores, torch) and
    above the total seconds and the load average before and after."""
    import torch

    started = time.perf_counter()
    datasets = Datasets(Path(data_dir), fresh)
    print("data:", flush=True)
    try:
        data = data_of(datasets)
    finally:
        datasets.close()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    load = os.getloadavg()[0]
    try:
        lines = measure(data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"## {title} ({time.strftime('%Y-%m-%d')}, {CORES} cores, torch {torch.__version__})", "", *lines, "",
             f"Total {time.perf_counter() - started:.0f} s; 1-minute load average {load:.1f} at the start of "
             f"the timed runs, {os.getloadavg()[0]:.1f} at the end (other work on the machine skews timings)."]
    print("\n" + "\n".join(lines))
    return 0
