"""python benchmarks/train.py [--epochs 4] [--quality-epochs 60] [--ml20m] [--baselines] [--skip-scaling]
    [--skip-quality] [--data-dir DIR] [--fresh]

The trainer side by side, every figure a ratio against a baseline measured in the same run:

1. speed on ML-1M-sized synthetic data (6,040 users × 3,706 items, ~1M interactions; with
   ``--ml20m`` also one epoch at ML-20M size): seconds/epoch and users/s of batch-union vs full
   mode and fp32 vs bf16 (one process × all cores), of the three gradient exchanges at
   ``horovodrun -np 2`` × 1 thread vs one process × 1 thread, and (``--baselines``) of the
   original Recoder 0.4.0 with the same hyper-parameters, with test Recall@20 beside;
2. achieved GFLOP/s of whole epochs and of the step alone (batches prepared in memory) as a
   fraction of torch's GEMM GFLOP/s for the same shapes, dtype and threads (FLOP model in
   :func:`step_flops`);
3. the trainer's input alone (Petastorm, and Petastorm + batch-union sampling) vs what an epoch
   consumes, with the embedded default's row groups and with tiny ones (~19 users each);
4. quality on real MovieLens 100K (test split, best-validation epoch): batch-union vs full
   mode vs bf16 vs popularity vs EASE (Steck 2019, closed form) and (``--baselines``)
   implicit's ALS and the original Recoder, with wall time each, and the training time our
   autoencoders need to first reach ALS's validation NDCG@100.

Prepared datasets are cached in ``data/bench/`` (rerun with ``--fresh`` to rebuild). Training
runs are subprocesses (``[horovodrun -np R] python benchmarks/train.py --worker ...``) calling
``trainer.fit`` without MLflow; the baselines run in their own venvs (``benchmarks/README.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recoder_dist.config import PrepareConfig, SyntheticConfig, load_config  # noqa: E402

CORES = os.cpu_count() or 1
# MovieLens-1M's shape: 6,040 users, 3,706 items, 1.0M ratings (165.6 per user)
ML1M = SyntheticConfig(num_users=6040, num_items=3706, mean_interactions=165.6, num_factors=16, seed=7)
# MovieLens-20M's shape: 138,493 users, 26,744 items, 20.0M ratings (144.4 per user)
ML20M = SyntheticConfig(num_users=138493, num_items=26744, mean_interactions=144.4, num_factors=16, seed=7)
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


# --- worker (one per rank) --------------------------------------------------------------------

def worker(args: argparse.Namespace) -> int:
    """Train with ``trainer.fit`` and write the result (rank 0)."""
    from recoder_dist.distributed import Workers
    from recoder_dist.trainer import fit

    workers = Workers.start()
    config = load_config(args.config, args.overrides)
    started = time.perf_counter()
    result = fit(config, args.data, workers)
    fit_s = time.perf_counter() - started
    # the GEMM ceiling of this very process (threads, dtype, and the other ranks busy alike)
    import torch
    target = round(statistics.mean(h["target_size"] for h in result.history))
    ceiling = gemm_gflops(config.train.batch_size, config.model.hidden_sizes[0], target, config.train.dtype,
                          torch.get_num_threads()) if args.ceiling else None
    ceiling = workers.sum(torch.tensor([ceiling or 0.0], dtype=torch.float64)).item()
    if workers.is_root:
        Path(args.out).write_text(json.dumps({
            "history": result.history, "steps_per_epoch": result.steps_per_epoch, "test": result.test,
            "best_validation": result.best_validation, "best_epoch": result.best_epoch, "fit_s": fit_s,
            "threads": torch.get_num_threads(), "ranks": workers.size, "gemm_gflops": ceiling,
            "gemm_shape": [config.train.batch_size, config.model.hidden_sizes[0], target]}))
    return 0


def train(label: str, data: Path, ranks: int, threads: int, overrides: Sequence[str], work: Path,
          config: Optional[str] = None, ceiling: bool = True) -> dict:
    """One training subprocess; its result plus the settings it ran with."""
    out = work / f"{label}.json"
    overrides = [*overrides, f"train.threads={threads}", f"train.checkpoint_dir={work / ('ckpt-' + label)}"]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--data", str(data), "--out", str(out)]
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


def step_alone(data: Path, full: bool, dtype: str, threads: int, steps: int = 20) -> dict:
    """The training step without the feed: batches built in memory beforehand, then
    ``trainer.Step`` (the body of ``trainer.fit``'s loop) on each."""
    import pyarrow.parquet as pq
    import torch

    from recoder_dist.allocator import reuse_freed_memory
    from recoder_dist.distributed import Workers
    from recoder_dist.losses import get_loss
    from recoder_dist.sampling import UserRows, make_batches
    from recoder_dist.trainer import Step, build_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    reuse_freed_memory()  # as fit does
    config = load_config(None, [*SPEED_TRAIN, f"train.full={str(full).lower()}", f"train.dtype={dtype}"])
    t, n_items = config.train, manifest(data)["num_items"]
    table = pq.read_table(data / "train", columns=["user_idx", "items", "values"]).slice(0, 10 * t.batch_size)
    rows = UserRows.from_lists(table["user_idx"].to_numpy(), table["items"].to_pylist(), table["values"].to_pylist())
    batches = list(make_batches(rows, t.batch_size, t.num_sampling_users, n_items, 0, full, np.random.default_rng(0)))
    torch.manual_seed(0)
    model = build_model(n_items, config)
    optimizer = torch.optim.Adam(model.parameter_groups(t.weight_decay), lr=t.lr, fused=True)
    step = Step(model, optimizer, get_loss(t.loss, t.confidence), model.item_parameter_names(), config,
                Workers(rank=0, size=1, local_rank=0, local_size=1),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"), torch.device("cpu"))

    model.train()
    for batch in batches[:3]:
        step(batch)
    windows = []  # best of five windows of steps
    for w in range(5):
        started = time.perf_counter()
        for i in range(steps // 5):
            step(batches[(w * (steps // 5) + i) % len(batches)])
        windows.append((time.perf_counter() - started) / (steps // 5))
    seconds = min(windows)
    targets = [n_items if b.target_items is None else b.target_items.numel() for b in batches]
    target = float(np.mean([targets[i % len(batches)] for i in range(steps)]))
    nnz = float(np.mean([batches[i % len(batches)].items.numel() for i in range(steps)]))
    flops = step_flops(t.batch_size, target, nnz, config.model.hidden_sizes)
    ceiling = gemm_gflops(t.batch_size, config.model.hidden_sizes[0], round(target), dtype, threads)
    torch.set_num_threads(previous)
    return {"users_per_s": t.batch_size / seconds, "step_ms": seconds * 1e3, "gflops": flops / seconds / 1e9,
            "ceiling": ceiling, "target": target}


# --- feed ------------------------------------------------------------------------------------

def feed_rates(data: Path, passes: int = 3) -> dict[str, float]:
    """Users/s of the trainer's input alone, one reader for ``passes`` passes as ``trainer.fit``
    keeps it: Petastorm (``feed.train_rows``), and Petastorm + batch-union sampling
    (``trainer._batches``, what the trainer's prefetch thread produces)."""
    import importlib
    importlib.import_module("petastorm")  # before the clock starts: a one-time cost per process
    from recoder_dist.distributed import Workers
    from recoder_dist.feed import train_rows
    from recoder_dist.trainer import _batches, shuffle_buffer_users
    m = manifest(data)
    n_train = m["num_users"]["train"]
    config = load_config(None, SPEED_TRAIN)

    def rate(stream, users_of) -> float:
        users, started = 0, time.perf_counter()
        for part in stream:
            users += users_of(part)
            if users >= passes * n_train:
                break
        stream.close()
        return users / (time.perf_counter() - started)

    sampling_users = config.train.num_sampling_users
    return {"petastorm": rate(train_rows(data, 0, 1, seed=1, num_sampling_users=sampling_users,
                                         shuffle_buffer_users=shuffle_buffer_users(sampling_users, n_train)), len),
            "sampled": rate(_batches(str(data), config, Workers(0, 1, 0, 1), m["num_items"], n_train, 1),
                            lambda batch: batch.num_users)}


# --- quality baselines -----------------------------------------------------------------------

def train_matrix(data: Path) -> np.ndarray:
    """The train split as a dense users × items float32 matrix (small catalogues only)."""
    import pyarrow.parquet as pq
    table = pq.read_table(data / "train", columns=["items", "values"]).to_pydict()
    x = np.zeros((len(table["items"]), manifest(data)["num_items"]), dtype=np.float32)
    for row, (items, values) in enumerate(zip(table["items"], table["values"])):
        x[row, items] = values
    return x


def ease_scorer(x: np.ndarray, lam: float):
    """EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): ``B = I - P·diag(1/diag(P))``
    with ``P = (XᵀX + λI)⁻¹``, zero diagonal; scores ``x_user · B``."""
    import torch

    from recoder_dist.csr import entry_rows
    gram = (x.T.astype(np.float64) @ x.astype(np.float64))
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    weights = -p / np.diag(p)
    weights[np.diag_indices_from(weights)] = 0.0
    weights = torch.from_numpy(weights.astype(np.float32))

    def score(items, values, offsets):
        dense = torch.zeros(offsets.numel() - 1, weights.shape[0])
        dense[entry_rows(offsets), items] = values.float()
        return dense @ weights
    return score


def ease_on_validation(data: Path, lambdas: Sequence[float]) -> tuple[float, float, Callable, float]:
    """EASE at the λ of ``lambdas`` with the best validation NDCG@100: that NDCG, λ, the scorer
    and its fit seconds."""
    x = train_matrix(data)
    best = None
    for lam in lambdas:
        started = time.perf_counter()
        scorer = ease_scorer(x, lam)
        fit_s = time.perf_counter() - started
        val = evaluate(scorer, data, "validation")["ndcg_at_100"]
        if best is None or val > best[0]:
            best = (val, lam, scorer, fit_s)
    return best


def evaluate(scorer, data: Path, split: str = "test") -> dict:
    from recoder_dist.evaluation import means, metric_sums
    from recoder_dist.feed import read_heldout
    return means(metric_sums(scorer, read_heldout(data, split), 1000))


def item_counts(data: Path) -> np.ndarray:
    import pyarrow.parquet as pq
    items = pq.read_table(data / "items").to_pandas()
    counts = np.zeros(len(items))
    counts[items["item_idx"].to_numpy()] = items["count"].to_numpy()
    return counts


def _csr_arrays(prefix: str, offsets: np.ndarray, items: np.ndarray, values: np.ndarray) -> dict:
    return {f"{prefix}_indptr": offsets.astype(np.int64), f"{prefix}_indices": items.astype(np.int32),
            f"{prefix}_data": values.astype(np.float32)}


def precomputed_scorer(scores: np.ndarray):
    """Scores computed elsewhere, handed out in the order ``metric_sums`` asks for users."""
    import torch
    position = [0]

    def score(items, values, offsets):
        n = offsets.numel() - 1
        part = torch.from_numpy(scores[position[0]:position[0] + n])
        position[0] += n
        return part
    return score


@dataclass
class Measured:
    """A model's test metrics (None: not measured), wall seconds, a note, and what the
    time-to-quality comparison needs: validation NDCG@100 and the seconds spent fitting."""

    test: Optional[dict]
    seconds: float
    note: str
    validation_ndcg: Optional[float] = None
    fit_s: Optional[float] = None


def ranked_scorer(top: np.ndarray, n_items: int):
    """Scores from top-k lists computed elsewhere (best first): k, k-1, … 1 on the listed items,
    -inf elsewhere, handed out in the order ``metric_sums`` asks for users (the metrics look at
    the top 100 at most)."""
    import torch
    position = [0]
    ranks = torch.arange(top.shape[1], 0, -1, dtype=torch.float32)

    def score(items, values, offsets):
        n = offsets.numel() - 1
        part = torch.from_numpy(top[position[0]:position[0] + n]).long()
        position[0] += n
        scores = torch.full((n, n_items), -float("inf"))
        return scores.scatter_(1, part, ranks.expand(n, -1))
    return score


def baseline_input(data: Path, path: Path) -> Path:
    """The train matrix and the held-out users' fold-in rows as CSR arrays in one ``.npz``
    (what the baselines in their own venvs read)."""
    import pyarrow.parquet as pq

    from recoder_dist.csr import offsets_of
    from recoder_dist.feed import read_heldout
    if path.is_file():
        return path
    table = pq.read_table(data / "train", columns=["items", "values"])
    lengths = np.array([len(x) for x in table["items"].to_pylist()], dtype=np.int64)
    arrays = _csr_arrays("train", offsets_of(lengths),
                         np.concatenate(table["items"].to_pylist()), np.concatenate(table["values"].to_pylist()))
    for split in ("validation", "test"):
        rows = read_heldout(data, split)
        arrays.update(_csr_arrays(split, rows.foldin.offsets, rows.foldin.items, rows.foldin.values))
    np.savez(path, n_items=manifest(data)["num_items"], **arrays)
    return path


def run_baseline(venv: str, script: str, args: Sequence[str], threads: int) -> Optional[str]:
    """Run ``benchmarks/<script>`` in ``benchmarks/<venv>``; the error's last line, or None."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([str(ROOT / "benchmarks" / venv / "bin" / "python"), str(ROOT / "benchmarks" / script),
                           *map(str, args)], env=env, capture_output=True, text=True)
    return None if done.returncode == 0 else f"failed: {done.stderr.strip().splitlines()[-1:]}"


def als_baseline(data: Path, work: Path, enabled: bool) -> Measured:
    """implicit's ALS in ``benchmarks/.venv-baselines`` (implicit wants numpy 2; the project pins
    numpy 1.26): the grid point best on validation."""
    if not enabled or not (ROOT / "benchmarks" / ".venv-baselines" / "bin" / "python").is_file():
        return Measured(None, 0.0, "not measured (run with --baselines after: python -m venv "
                                   "benchmarks/.venv-baselines && benchmarks/.venv-baselines/bin/pip install "
                                   "implicit==0.7.2)")
    target = work / "als-out.npz"
    source = baseline_input(data, work / f"baseline-{data.name}-in.npz")
    error = run_baseline(".venv-baselines", "_als.py", [source, target], CORES)
    if error:
        return Measured(None, 0.0, error)
    out = np.load(target)
    best = None
    for g, (factors, reg, alpha) in enumerate(out["grid"]):
        val = evaluate(precomputed_scorer(out[f"validation_{g}"]), data, "validation")["ndcg_at_100"]
        if best is None or val > best[0]:
            best = (val, g, f"factors={factors:g} reg={reg:g} alpha={alpha:g} (best on validation), 15 iterations")
    val, g, note = best
    return Measured(evaluate(precomputed_scorer(out[f"test_{g}"]), data), float(out[f"fit_s_{g}"] + out[f"test_s_{g}"]),
                    note, validation_ndcg=val, fit_s=float(out[f"fit_s_{g}"]))


RECODER_SETUP = ("python3.11 -m venv benchmarks/.venv-recoder && benchmarks/.venv-recoder/bin/pip install "
                 "torch==2.13.0 && benchmarks/.venv-recoder/bin/pip install numpy==1.26.4 scipy annoy glog tqdm "
                 "&& benchmarks/.venv-recoder/bin/pip install --no-deps recsys-recoder==0.4.0")


def recoder_baseline(data: Path, work: Path, enabled: bool, epochs: int, batch_size: int,
                     sampling_users: int) -> tuple[Measured, Optional[dict]]:
    """The original Recoder (``recsys-recoder==0.4.0``) in ``benchmarks/.venv-recoder`` with the same
    hyper-parameters (h=200 tanh, noise 0.5, multinomial, Adam 1e-3, weight decay 2e-5, no
    milestones): test metrics after ``epochs`` and its epoch timings (``benchmarks/_recoder.py``)."""
    if not enabled or not (ROOT / "benchmarks" / ".venv-recoder" / "bin" / "python").is_file():
        return Measured(None, 0.0, f"not measured (run with --baselines after: {RECODER_SETUP})"), None
    target = work / f"recoder-{data.name}-out.npz"
    error = run_baseline(".venv-recoder", "_recoder.py",
                         [baseline_input(data, work / f"baseline-{data.name}-in.npz"), target, "--epochs", epochs,
                          "--batch-size", batch_size, "--num-sampling-users", sampling_users, "--threads", CORES,
                          "--splits", "test"], CORES)
    if error:
        return Measured(None, 0.0, error), None
    out = np.load(target)
    test = evaluate(ranked_scorer(out["test_top"], manifest(data)["num_items"]), data)
    epoch_s = [float(x) for x in out["epoch_s"]]
    return (Measured(test, float(out["fit_s"]), f"last of {epochs} epochs, batch {batch_size}, union per "
                                                f"{sampling_users} users", fit_s=float(out["fit_s"])),
            {"epoch_s": epoch_s, "train_users": int(out["train_users"])})


def seconds_to_reach(history: Sequence[dict], ndcg: float) -> Optional[tuple[int, float]]:
    """The first epoch whose validation NDCG@100 reached ``ndcg``, and the training seconds
    (sum of ``epoch_s``, validation excluded) until then; None if no epoch did."""
    seconds = 0.0
    for record in history:
        seconds += record["epoch_s"]
        if record.get("val_ndcg_at_100", -1.0) >= ndcg:
            return record["epoch"], seconds
    return None


# --- report ----------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_section(data: Path, epochs: int, work: Path, name: str, extra: Sequence[str] = (),
                  scaling: bool = True, tiny_groups: Optional[Path] = None,
                  baselines: bool = False) -> list[str]:
    m = manifest(data)
    base = [*SPEED_TRAIN, f"train.epochs={epochs}", *extra]
    print(f"{name}: {m['num_users']['train']} train users × {m['num_items']} items, "
          f"{m['nnz']['train']['items']} train interactions; {epochs} epoch(s) per run", flush=True)
    runs = {}
    dtypes = ("float32", "bfloat16")
    for mode, mode_args in (("union", ["train.full=false"]), ("full", ["train.full=true"])):
        for dtype in dtypes:
            runs[(mode, dtype)] = train(f"{name}-{mode}-{dtype}-np1x{CORES}", data, 1, CORES,
                                        [*base, *mode_args, f"train.dtype={dtype}"], work)
    if scaling:
        runs["np1x1"] = train(f"{name}-union-float32-np1x1", data, 1, 1, [*base, "train.dtype=float32"], work)
        for exchange in ("dense", "sparse", "sync_union"):
            runs[exchange] = train(f"{name}-union-float32-np2x1-{exchange}", data, 2, 1,
                                   [*base, "train.dtype=float32", f"train.grad_exchange={exchange}"], work)

    def ceiling(result: dict) -> float:
        """GEMM GFLOP/s measured by the run's own processes right after training (summed over ranks)."""
        return result["gemm_gflops"]

    lines = [f"### {name}: {m['num_users']['train']:,} train users × {m['num_items']:,} items, "
             f"{m['nnz']['train']['items']:,} train interactions",
             "", (f"Fastest epoch after the first of {epochs}-epoch runs" if epochs > 1 else
                  "One epoch per run (including the reader's start)")
             + f"; batch 500, target set per 500 users, h=200, multinomial loss; {CORES} cores.", ""]
    reference = runs[("union", "float32")]
    rows = []
    for (mode, dtype) in [k for k in runs if isinstance(k, tuple)]:
        r = runs[(mode, dtype)]
        s, a = steady(r), achieved(r, data)
        rows.append([f"{mode} {dtype}", f"1 × {r['threads']}", f"{s['target_size']:.0f}", f"{s['epoch_s']:.2f}",
                     f"{s['users_per_s']:.0f}", f"{s['users_per_s'] / steady(reference)['users_per_s']:.2f}",
                     f"{a['gflops']:.1f}", f"{a['gflops'] / ceiling(r):.2f}"])
    if scaling:
        single = runs["np1x1"]
        for label, r in [("union float32", single)] + [(f"union float32, {e}", runs[e])
                                                        for e in ("dense", "sparse", "sync_union")]:
            s, a = steady(r), achieved(r, data)
            rows.append([label, f"{r['ranks']} × 1", f"{s['target_size']:.0f}", f"{s['epoch_s']:.2f}",
                         f"{s['users_per_s']:.0f}", f"{s['users_per_s'] / steady(reference)['users_per_s']:.2f} "
                         f"({s['users_per_s'] / steady(single)['users_per_s']:.2f} vs 1 × 1)",
                         f"{a['gflops']:.1f}", f"{a['gflops'] / ceiling(r):.2f}"])
    lines.append(table(["run", "ranks × threads", "mean target |T|", "s/epoch", "users/s",
                        "users/s ÷ union fp32 1×all", "epoch GFLOP/s", "÷ GEMM GFLOP/s"], rows))
    alone_rows = []
    for (mode, dtype) in [k for k in runs if isinstance(k, tuple)]:
        a = step_alone(data, mode == "full", dtype, CORES)
        epoch_rate = steady(runs[(mode, dtype)])["users_per_s"]
        alone_rows.append([f"{mode} {dtype}", f"1 × {CORES}", f"{a['target']:.0f}", f"{a['step_ms']:.0f}",
                           f"{a['users_per_s']:.0f}", f"{a['gflops']:.1f}", f"{a['ceiling']:.1f}",
                           f"{a['gflops'] / a['ceiling']:.2f}", f"{epoch_rate / a['users_per_s']:.2f}"])
    lines += ["", "The step alone (batches prepared in memory; the loop body of `trainer.fit`), in this process:", "",
              table(["step", "ranks × threads", "|T|", "ms/step", "users/s", "step GFLOP/s", "GEMM GFLOP/s",
                     "step ÷ GEMM", "epoch users/s ÷ step-alone users/s"], alone_rows)]
    gemms = [f"{r['label'].removeprefix(name + '-')}: {r['gemm_gflops']:.1f}" for r in runs.values()]
    lines += ["", "GEMM ceiling per run (GFLOP/s of the decoder's three GEMMs at the run's B × h × mean |T|, "
              "measured by the run's own processes right after training, same dtype and threads, summed over "
              "ranks): " + "; ".join(gemms)]
    ratio = steady(runs[("union", "bfloat16")])["users_per_s"] / steady(reference)["users_per_s"]
    lines.append(f"bf16 ÷ fp32 (union): {ratio:.2f}×; full ÷ union (fp32): "
                 f"{steady(runs[('full', 'float32')])['users_per_s'] / steady(reference)['users_per_s']:.2f}×")
    if scaling:
        h = 200
        n_items = m["num_items"]
        dense_mb = (2 * n_items * h + n_items + h) * 4 / 1e6
        target = steady(runs["sync_union"])["target_size"]
        own = steady(runs["sparse"])["target_size"]
        lines.append(f"Gradient traffic per step and rank (from sizes): dense {dense_mb:.1f} MB; sync_union "
                     f"{(2 * target * h + target + h) * 4 / 1e6:.1f} MB (|U| = {target:.0f}); sparse "
                     f"{(2 * own * h + own) * 4 * 2 / 1e6:.1f} MB gathered from 2 ranks (|T| = {own:.0f} each).")

    lines += [""] + original_recoder_lines(runs, data, work, epochs, baselines)
    consume = steady(reference)["users_per_s"]
    step_rate = alone_rows[0][4]
    lines.append("")
    lines.append(f"Input alone (one reader kept over 3 passes, as `trainer.fit` keeps it; thread pool of 2) vs what "
                 f"union fp32 on 1 × {CORES} consumes ({consume:.0f} users/s per epoch; the step alone: "
                 f"{step_rate} users/s):")
    lines.append("")
    feed_rows = []
    for label, dataset in [("this data", data), ("the same users", tiny_groups)]:
        if dataset is None:
            continue
        rates = feed_rates(dataset)
        groups = manifest(dataset)["row_groups"]["train"]
        epoch = consume
        if dataset is not data:
            epoch = steady(train(f"{name}-union-float32-np1x{CORES}-{groups}groups", dataset, 1, CORES,
                                 [*base, "train.dtype=float32"], work))["users_per_s"]
        feed_rows.append([f"{label}, {groups} train row groups", f"{rates['petastorm']:.0f}",
                          f"{rates['petastorm'] / epoch:.1f}", f"{rates['sampled']:.0f}",
                          f"{rates['sampled'] / epoch:.1f}", f"{epoch:.0f}"])
    lines.append(table(["input", "Petastorm users/s", "÷ epoch users/s", "+ sampling users/s", "÷ epoch users/s",
                        "union fp32 epoch users/s"], feed_rows))
    return lines


def original_recoder_lines(runs: dict, data: Path, work: Path, epochs: int, baselines: bool) -> list[str]:
    """Our runs against the original Recoder's, same data, hyper-parameters and epochs."""
    measured, timing = recoder_baseline(data, work, baselines, epochs, 500, 500)
    if timing is None:
        return [f"Recoder 0.4.0 (original): {measured.note}."]
    history = [{"epoch_s": e, "users_per_s": timing["train_users"] / e, "target_size": 0.0} for e in timing["epoch_s"]]
    original = steady({"history": history})

    def recall(test: Optional[dict]) -> str:
        return f"{test['recall_at_20']:.4f}" if test else "–"

    rows = [["Recoder 0.4.0 (original), union, fp32", f"{original['epoch_s']:.2f}", f"{original['users_per_s']:.0f}",
             "1.00", recall(measured.test)]]
    for (mode, dtype) in [k for k in runs if isinstance(k, tuple)]:
        s = steady(runs[(mode, dtype)])
        rows.append([f"recoder-dist, {mode}, {dtype}", f"{s['epoch_s']:.2f}", f"{s['users_per_s']:.0f}",
                     f"{s['users_per_s'] / original['users_per_s']:.2f}",
                     recall(runs[(mode, dtype)]["test"])])
    which = "fastest epoch after the first" if epochs > 1 else "its one epoch"
    return [f"Against the original Recoder (`recsys-recoder==0.4.0`, its own training loop and in-memory "
            f"loader, 1 process × {CORES} threads, {epochs} epoch(s), same hyper-parameters; {which}; test "
            f"Recall@20 after the last epoch):", "",
            table(["run", "s/epoch", "users/s", "÷ original users/s", "test Recall@20"], rows)]


AUTOENCODERS = {"autoencoder, batch union": ["train.full=false"], "autoencoder, full": ["train.full=true"],
                "autoencoder, batch union, bf16": ["train.full=false", "train.dtype=bfloat16"]}


def quality_section(data: Path, epochs: int, work: Path, baselines: bool) -> list[str]:
    m = manifest(data)
    config = str(ROOT / "conf" / "ml-100k.yaml")
    print(f"MovieLens 100K: {m['num_users']} users, {m['num_items']} items; {epochs} epochs", flush=True)
    results: dict[str, Measured] = {}
    histories = {}
    for label, args in AUTOENCODERS.items():
        r = train(label.replace(", ", "-").replace(" ", "_"), data, 1, CORES,
                  [*QUALITY_TRAIN, f"train.epochs={epochs}", *args], work, config=config, ceiling=False)
        histories[label] = r["history"]
        results[label] = Measured(r["test"], r["fit_s"], f"best epoch {r['best_epoch']} of {epochs}")
    from recoder_dist.evaluation import popularity_scorer
    started = time.perf_counter()
    pop = evaluate(popularity_scorer(item_counts(data)), data)
    results["popularity"] = Measured(pop, time.perf_counter() - started, "training counts")
    # λ chosen on validation, as the autoencoder's epoch
    _, lam, scorer, fit_s = ease_on_validation(data, (100.0, 500.0, 2000.0))
    started = time.perf_counter()
    results["EASE"] = Measured(evaluate(scorer, data), fit_s + time.perf_counter() - started,
                               f"λ={lam:g} (best on validation)")
    results["implicit ALS"] = als_baseline(data, work, baselines)
    t = load_config(config).train
    results["Recoder 0.4.0 (original)"] = recoder_baseline(data, work, baselines, epochs, t.batch_size,
                                                           t.num_sampling_users)[0]
    ease = results["EASE"].test
    rows = []
    for name, measured in results.items():
        if measured.test is None:
            rows.append([name, "–", "–", "–", "–", "–", "–", measured.note])
            continue
        metrics = measured.test
        rows.append([name, *(f"{metrics[k]:.4f}" for k in ("recall_at_20", "recall_at_50", "ndcg_at_100")),
                     f"{metrics['ndcg_at_100'] / pop['ndcg_at_100']:.2f}",
                     f"{metrics['ndcg_at_100'] / ease['ndcg_at_100']:.2f}", f"{measured.seconds:.1f}", measured.note])
    union, full = (results[k].test for k in list(AUTOENCODERS)[:2])
    lines = [f"### MovieLens 100K (real): {m['num_users']['train']} train, {m['num_users']['test']} test users × "
             f"{m['num_items']} items (conf/ml-100k.yaml; {epochs} epochs, 1 × {CORES} threads)", "",
             table(["model", "Recall@20", "Recall@50", "NDCG@100", "NDCG ÷ popularity", "NDCG ÷ EASE",
                    "wall s", "note"], rows),
             "", "Wall time: `fit()` for the autoencoders (all epochs, validation after each, test), Gram + "
             "inverse + scoring for EASE, fit + fold-in for ALS.",
             f"Batch union ÷ full mode, Recall@20: {union['recall_at_20'] / full['recall_at_20']:.3f}."]
    als = results["implicit ALS"]
    if als.validation_ndcg is not None:
        for label in AUTOENCODERS:
            reached = seconds_to_reach(histories[label], als.validation_ndcg)
            lines.append(f"{label}: " + (f"first reached ALS's validation NDCG@100 ({als.validation_ndcg:.4f}) "
                                         f"after epoch {reached[0]}, {reached[1]:.1f} s of training"
                                         if reached else f"never reached ALS's validation NDCG@100 "
                                                         f"({als.validation_ndcg:.4f}) in {epochs} epochs")
                         + f"; ALS's fit: {als.fit_s:.1f} s.")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per speed run (the first is not counted)")
    parser.add_argument("--quality-epochs", type=int, default=60, help="epochs of the MovieLens 100K runs")
    parser.add_argument("--ml20m", action="store_true", help="also one epoch at ML-20M size (long)")
    parser.add_argument("--skip-quality", action="store_true", help="no MovieLens 100K section")
    parser.add_argument("--skip-scaling", action="store_true", help="no horovodrun -np 2 runs")
    parser.add_argument("--baselines", action="store_true", help="try implicit ALS / Recoder 0.4.0 (separate venv)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the datasets again")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    started = time.perf_counter()
    datasets = Datasets(Path(args.data_dir), args.fresh)
    print("data:", flush=True)
    ml1m = datasets.synthetic("ml1m-synthetic", ML1M, SPEED_PREPARE)
    ml1m_tiny = datasets.synthetic("ml1m-synthetic-tiny-groups", ML1M, TINY_GROUPS)
    ml100k = None if args.skip_quality else datasets.movielens_100k()
    ml20m = datasets.synthetic("ml20m-synthetic", ML20M, SPEED_PREPARE) if args.ml20m else None
    datasets.close()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    load = os.getloadavg()[0]
    report = [f"## train benchmark ({time.strftime('%Y-%m-%d')}, {CORES} cores, torch "
              f"{__import__('torch').__version__})", ""]
    try:
        report += speed_section(ml1m, args.epochs, work, "ML-1M-sized synthetic", scaling=not args.skip_scaling,
                                tiny_groups=ml1m_tiny, baselines=args.baselines)
        if ml20m is not None:
            report += [""] + speed_section(ml20m, 1, work, "ML-20M-sized synthetic", scaling=False,
                                           baselines=args.baselines)
        if ml100k is not None:
            report += [""] + quality_section(ml100k, args.quality_epochs, work, args.baselines)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report += ["", f"Total {time.perf_counter() - started:.0f} s; 1-minute load average {load:.1f} at the start of "
                   f"the timed runs, {os.getloadavg()[0]:.1f} at the end (other work on the machine skews timings)."]
    print("\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
