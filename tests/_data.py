"""Data and training runs shared by the test modules (feed, contract, resume, MLflow).

A small synthetic dataset is prepared once per test session with the shared ``spark`` fixture,
and training subprocesses (one process, ``horovodrun -np 2``, ``torchrun --nproc-per-node 2`` or
two single-rank torchrun nodes, :func:`launch`) are run through
``tests/_train_worker.py``, which writes one JSON report per rank. Runs are cached by their
arguments, so modules that need the same run (the Horovod contract and the resume test's
uninterrupted reference) share it. The MLflow, registry, recommend-job and serving tests share
one model trained with the product entry point and registered in a private sqlite store
(:func:`registered_model`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_train_worker.py"

# 1500 users x 400 items, ~30 interactions each: ~1200 train users after the default's rules.
SYNTHETIC = dict(num_users=1500, num_items=400, mean_interactions=30, num_factors=16, seed=7)
# 16 train row groups: 8 per rank at np 2, so Petastorm's shards are balanced to a group.
PREPARE = dict(rating_threshold=3.5, binarize=True, duplicates="max", min_user_interactions=5,
               validation_users=0.1, test_users=0.1, heldout_fraction=0.2, max_ranks=4,
               row_groups_per_rank=4, min_rows_per_group=1, max_rows_per_group=1000, seed=11)
# Small and quick; train.batch_size is per rank, so a run on R ranks passes GLOBAL_BATCH // R.
TRAIN = ["model.hidden_sizes=[64]", "train.epochs=5", "train.lr=0.01", "train.milestones=[100]",
         "train.num_sampling_users=0", "train.eval_batch_size=500", "train.reader_pool_size=1",
         "mlflow.enabled=false"]
GLOBAL_BATCH = 100

_prepared: dict[str, Path] = {}
_runs: dict[tuple, "Run"] = {}


def prepared_dataset(spark, base: Path) -> Path:
    """The session's small prepared dataset (prepared on first use, then reused)."""
    key = str(base)
    if key not in _prepared:
        from pipeline.prepare import prepare
        from pipeline.synthetic import generate, write
        from recoder_dist.config import PrepareConfig, SyntheticConfig

        folder = base / "trainer-data"
        folder.mkdir(parents=True, exist_ok=True)
        source = write(generate(SyntheticConfig(**SYNTHETIC)), folder / "interactions.csv")
        prepare(spark, str(source), str(folder / "prepared"), "auto", PrepareConfig(**PREPARE))
        _prepared[key] = folder / "prepared"
    return _prepared[key]


def train_table(data_dir: Path):
    """The train split as pyarrow reads it: ``{user_idx: (items, values)}``."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(data_dir) / "train").to_pydict()
    return {u: (np.asarray(i, np.int64), np.asarray(v, np.float32))
            for u, i, v in zip(table["user_idx"], table["items"], table["values"])}


def item_counts(data_dir: Path) -> np.ndarray:
    """Training popularity of each item (``<data>/items``), indexed by item id."""
    import pyarrow.parquet as pq

    items = pq.read_table(Path(data_dir) / "items").to_pandas()
    counts = np.zeros(len(items), dtype=np.float64)
    counts[items["item_idx"].to_numpy()] = items["count"].to_numpy()
    return counts


def run_folder(root: Path) -> Path:
    """The one run folder a training run wrote under ``train.checkpoint_dir`` ``root``."""
    folders = [p for p in Path(root).iterdir() if p.is_dir()]
    assert len(folders) == 1, f"{root} holds {len(folders)} run folders, not one: {folders}"
    return folders[0]


def environment(ranks: int, **extra: str) -> dict[str, str]:
    """Environment of a training subprocess: the repository importable, one thread per rank,
    torch.distributed's gloo on the loopback interface."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


LAUNCHERS = ("horovodrun", "torchrun", "torchrun-nodes")


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(worker: Sequence[str], ranks: int, launcher: str = "horovodrun") -> list[list[str]]:
    """The command lines that run ``worker`` (``[python, script or -m module, args...]``) on
    ``ranks`` ranks, one per launcher process: ``worker`` itself for one rank; ``horovodrun -np
    R``; ``torchrun --nproc-per-node R``; or (``torchrun-nodes``) R single-rank torchrun nodes
    that rendezvous on a loopback port (c10d), as hosts of a multi-node job would."""
    if ranks == 1:
        return [list(worker)]
    program = list(worker[1:])
    tool = Path(sys.executable).with_name
    if launcher == "horovodrun":
        return [[str(tool("horovodrun")), "-np", str(ranks), "--gloo", *worker]]
    if launcher == "torchrun":
        return [[str(tool("torchrun")), "--standalone", "--nnodes", "1", "--nproc-per-node", str(ranks), *program]]
    if launcher == "torchrun-nodes":
        endpoint = f"127.0.0.1:{free_port()}"
        return [[str(tool("torchrun")), "--nnodes", str(ranks), "--node-rank", str(node), "--nproc-per-node", "1",
                 "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", f"test-{endpoint}", *program]
                for node in range(ranks)]
    raise ValueError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")


def run_launched(commands: Sequence[Sequence[str]], cwd: Path, env: dict, timeout: float) -> tuple[int, str, str]:
    """Start every launcher process at once, wait for all; their worst exit status and their
    output concatenated. On a timeout every process group is stopped and TimeoutExpired raised."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logs = [(Path(tmp, f"{i}.out").open("w+"), Path(tmp, f"{i}.err").open("w+")) for i in range(len(commands))]
        processes = [subprocess.Popen(list(c), cwd=cwd, env=env, stdout=out, stderr=err, text=True,
                                      start_new_session=True) for c, (out, err) in zip(commands, logs)]
        try:
            for process in processes:
                process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for process in processes:
                stop_process_group(process)
            raise
        texts = []
        for out, err in logs:
            out.seek(0), err.seek(0)
            texts.append((out.read(), err.read()))
            out.close(), err.close()
    codes = [p.returncode for p in processes]
    worst = next((c for c in codes if c != 0), 0)
    return worst, "".join(t[0] for t in texts), "".join(t[1] for t in texts)


def command(ranks: int, data_dir: Path, out: Path, overrides: Sequence[str], resume: bool = False,
            resume_from: Optional[Path] = None) -> list[str]:
    """``[horovodrun -np R] python tests/_train_worker.py ...``."""
    return launch(worker_command(data_dir, out, overrides, resume, resume_from), ranks)[0]


def worker_command(data_dir: Path, out: Path, overrides: Sequence[str], resume: bool = False,
                   resume_from: Optional[Path] = None) -> list[str]:
    """``python tests/_train_worker.py ...``."""
    worker = [sys.executable, str(WORKER), "--data", str(data_dir), "--out", str(out)]
    worker += ["--resume"] if resume else []
    worker += ["--resume-from", str(resume_from)] if resume_from else []
    return worker + list(overrides)


@dataclass
class Run:
    """One finished training run: each rank's report and the run's settings."""

    ranks: int
    batch_size: int
    out: Path
    checkpoint_dir: Path
    reports: list[dict]
    seconds: float

    @property
    def root(self) -> dict:
        return self.reports[0]


def train(ranks: int, data_dir: Path, base: Path, name: str, extra: Sequence[str] = (),
          resume: bool = False, checkpoint_dir: Optional[Path] = None, timeout: float = 240,
          env: Optional[dict[str, str]] = None, launcher: str = "horovodrun") -> Run:
    """Train (cached by arguments) and return every rank's report; fails with the run's output.
    ``env``: extra environment variables of the run; ``launcher`` starts the ranks when there
    are several (see :func:`launch`)."""
    import time

    launcher = launcher if ranks > 1 else "one"
    key = (ranks, str(data_dir), name, tuple(extra), resume, tuple(sorted((env or {}).items())), launcher)
    if key in _runs:
        return _runs[key]
    # one folder per cached run (runs that differ only in their overrides must not share checkpoints)
    out = base / f"run-{name}-{launcher}{ranks}-{hashlib.sha1(repr(key).encode()).hexdigest()[:8]}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    checkpoint_dir = checkpoint_dir or out / "checkpoints"
    batch = GLOBAL_BATCH // ranks
    overrides = [*TRAIN, f"train.batch_size={batch}", f"train.checkpoint_dir={checkpoint_dir}", *extra]
    started = time.perf_counter()
    code, stdout, stderr = run_launched(launch(worker_command(data_dir, out, overrides, resume), ranks, launcher),
                                        ROOT, environment(ranks, **(env or {})), timeout)
    seconds = time.perf_counter() - started
    assert code == 0, f"training failed ({code}):\n{stdout[-4000:]}\n{stderr[-4000:]}"
    reports = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(ranks)]
    _runs[key] = Run(ranks, batch, out, checkpoint_dir, reports, seconds)
    return _runs[key]


# --- one trained and registered model (MLflow, registry, recommend job and serving tests) ---

MODEL_NAME = "recoder-test"
MLFLOW_TRAIN = ["model.hidden_sizes=[64]", "train.epochs=2", "train.lr=0.003", "train.milestones=[100]",
                "train.num_sampling_users=0", "train.eval_batch_size=500", "train.reader_pool_size=1",
                f"mlflow.registered_model={MODEL_NAME}"]


def mlflow_store(folder: Path) -> tuple[str, list[str]]:
    """A private MLflow store in ``folder``: its tracking URI and the config overrides that use it
    (sqlite registry, artifacts and checkpoints all under ``folder``, never the repository's)."""
    folder = Path(folder).resolve()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={folder / 'mlruns'}",
                 f"train.checkpoint_dir={folder / 'checkpoints'}"]


def train_command(ranks: int, data_dir: Path, folder: Path, extra: Sequence[str] = (),
                  resume: bool = False, options: Sequence[str] = ()) -> list[str]:
    """``[horovodrun -np R] python -m recoder_dist.train [options]`` (the product entry point) into
    ``folder``'s store."""
    _, store = mlflow_store(folder)
    overrides = [*MLFLOW_TRAIN, f"train.batch_size={GLOBAL_BATCH // ranks}", *store, *extra]
    worker = [sys.executable, "-m", "recoder_dist.train", "--data", str(data_dir), *(["--resume"] if resume else []),
              *options, *overrides]
    if ranks == 1:
        return worker
    return [str(Path(sys.executable).with_name("horovodrun")), "-np", str(ranks), "--gloo", *worker]


def train_result(stdout: str) -> dict:
    """The JSON line ``recoder_dist.train`` prints at the end (rank 0; horovodrun prefixes it)."""
    lines = [line[line.index('{"test"'):] for line in stdout.splitlines() if '{"test"' in line]
    assert lines, f"no result line in the training output:\n{stdout[-4000:]}"
    return json.loads(lines[-1])


@dataclass
class Registered:
    """The session's model: trained by ``horovodrun -np 2`` on the small dataset, logged and registered."""

    data_dir: Path
    folder: Path
    tracking_uri: str
    name: str
    result: dict
    seconds: float

    @property
    def run_id(self) -> str:
        return self.result["mlflow_run_id"]

    @property
    def checkpoint_dir(self) -> Path:
        """The run's own checkpoint folder."""
        return run_folder(self.folder / "checkpoints")

    def load_pyfunc(self, ref: str = "champion"):
        """``mlflow.pyfunc.load_model("models:/NAME@REF")`` from this store (the process's
        tracking URI is restored afterwards)."""
        import mlflow

        with tracking_uri(self.tracking_uri):
            return mlflow.pyfunc.load_model(f"models:/{self.name}@{ref}")


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """This process's MLflow tracking URI set to ``uri`` for the block, restored afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


_registered: dict[str, Registered] = {}


def registered_model(spark, base: Path, timeout: float = 300) -> Registered:
    """Train and register the session's model once (2 epochs, 2 ranks) in its own MLflow store.

    Tests that only read it share it; tests that change aliases or runs use a store of their own."""
    import time

    key = str(base)
    if key not in _registered:
        data_dir = prepared_dataset(spark, base)
        folder = Path(base) / "mlflow-model"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        done = subprocess.run(train_command(2, data_dir, folder), cwd=folder, env=environment(2),
                              capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        assert done.returncode == 0, f"training failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        uri, _ = mlflow_store(folder)
        _registered[key] = Registered(data_dir, folder, uri, MODEL_NAME, train_result(done.stdout), seconds)
    return _registered[key]


def original_histories(data_dir: Path, split: str) -> dict[str, list[str]]:
    """``{user_id: fold-in item ids}`` of a prepared split, in original ids (as the models take them)."""
    import pyarrow.parquet as pq

    users = pq.read_table(Path(data_dir) / "users").to_pandas().set_index("user_idx")["user_id"]
    items = pq.read_table(Path(data_dir) / "items").to_pandas().set_index("item_idx")["item_id"]
    rows = pq.read_table(Path(data_dir) / split, columns=["user_idx", "items"]).to_pydict()
    return {users[u]: items[list(i)].tolist() for u, i in zip(rows["user_idx"], rows["items"])}


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its group; SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
