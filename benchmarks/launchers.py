"""python benchmarks/launchers.py [--epochs 5] [--repeats 2] [--exchanges dense,sparse,sync_union] [--data-dir DIR] [--fresh]

The same training under each launcher, every figure a ratio against a baseline measured in the
same run: ``torchrun --nproc-per-node 2`` × 1 thread (torch.distributed, gloo) vs ``horovodrun
-np 2`` × 1 thread (Horovod, gloo) vs one process × 1 thread, on the ML-1M-sized synthetic
dataset of ``benchmarks/train_speed.py`` (cached in ``data/bench/``), with its speed settings (batch
500, union per 500 users, h = 200), once per gradient exchange.

Each run is ``[launcher] python benchmarks/fit_worker.py ...`` (``trainer.fit`` without
MLflow); runs alternate between the launchers ``--repeats`` times and each keeps its best
steady epoch (``benchmarks/common.py``'s ``steady``), as other work on a shared machine only
slows epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ML1M, SPEED_PREPARE, SPEED_TRAIN, WORKER, Datasets, steady, table  # noqa: E402
from recoder_dist.distributed import EXCHANGES  # noqa: E402

LAUNCHERS = ("one process", "horovodrun", "torchrun")


def command(launcher: str, worker: Sequence[str]) -> list[str]:
    """``worker`` (``[python, script, args...]``) under ``launcher`` with 2 ranks (1 for one process)."""
    tool = Path(sys.executable).with_name
    if launcher == "one process":
        return list(worker)
    if launcher == "horovodrun":
        return [str(tool("horovodrun")), "-np", "2", "--gloo", *worker]
    return [str(tool("torchrun")), "--standalone", "--nnodes", "1", "--nproc-per-node", "2", *worker[1:]]


def run(launcher: str, data: Path, exchange: str, epochs: int, work: Path, label: str) -> dict:
    """One training run; its result (rank 0's) with its wall time."""
    out = work / f"{label}.json"
    overrides = [*SPEED_TRAIN, f"train.epochs={epochs}", f"train.grad_exchange={exchange}", "train.threads=1",
                 f"train.checkpoint_dir={work / ('ckpt-' + label)}"]
    worker = [sys.executable, str(WORKER), "--data", str(data), "--out", str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(command(launcher, worker), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - started
    s = steady(result)
    print(f"  {label}: {s['epoch_s']:.3f} s/epoch, {s['users_per_s']:.0f} users/s ({result['wall_s']:.0f} s wall)",
          flush=True)
    return result


def best(results: Sequence[dict]) -> dict:
    """The repeat with the fastest steady epoch."""
    return min(results, key=lambda r: steady(r)["epoch_s"])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--exchanges", default=",".join(EXCHANGES))
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the dataset again")
    args = parser.parse_args(argv)
    exchanges = [e for e in args.exchanges.split(",") if e]
    unknown = set(exchanges) - set(EXCHANGES)
    if unknown:
        parser.error(f"unknown exchanges {sorted(unknown)}; choose from {', '.join(EXCHANGES)}")

    datasets = Datasets(Path(args.data_dir), args.fresh)
    data = datasets.synthetic("ml1m-synthetic", ML1M, SPEED_PREPARE)
    datasets.close()
    work = Path(tempfile.mkdtemp(prefix="bench-launchers-"))
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for exchange in exchanges:
            for launcher in LAUNCHERS:
                if launcher == "one process" and exchange != exchanges[0]:
                    continue  # one process exchanges nothing: one baseline serves every exchange
                label = f"{launcher.replace(' ', '-')}-{exchange}-{repeat}"
                runs.setdefault((launcher, exchange), []).append(run(launcher, data, exchange, args.epochs, work,
                                                                     label))
    baseline = steady(best(runs[("one process", exchanges[0])]))
    rows = [["one process", "1 × 1", "-", f"{baseline['epoch_s']:.3f}", f"{baseline['users_per_s']:,.0f}", "1.00", "-"]]
    for exchange in exchanges:
        horovod = steady(best(runs[("horovodrun", exchange)]))
        for launcher in ("horovodrun", "torchrun"):
            s = steady(best(runs[(launcher, exchange)]))
            rows.append([launcher, "2 × 1", exchange, f"{s['epoch_s']:.3f}", f"{s['users_per_s']:,.0f}",
                         f"{s['users_per_s'] / baseline['users_per_s']:.2f}",
                         f"{s['users_per_s'] / horovod['users_per_s']:.2f}"])
    print(f"\nML-1M-sized synthetic ({data}), {args.epochs} epochs, best steady epoch of {args.repeats} run(s) each; "
          f"batch 500 per rank, union per 500 users, h = 200, fp32")
    print(table(["launcher", "ranks × threads", "exchange", "s/epoch", "users/s", "÷ one process",
                 "÷ horovodrun (same exchange)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
