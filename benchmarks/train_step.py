"""python benchmarks/train_step.py [--size ml-1m] [--steps 20] [--data-dir DIR] [--fresh]

The training step alone against the GEMM ceiling: ``trainer.Step`` (the body of ``trainer.fit``'s
loop, built by ``common.one_process_step`` from the trainer's own pieces) on batches prepared in
memory beforehand, for batch-union vs full mode and fp32 vs bf16, one process × all cores.
Achieved GFLOP/s (FLOP model in ``common.step_flops``) as a fraction of torch's GEMM GFLOP/s
for the decoder's shapes, same dtype and threads. The data: the speed runs' synthetic dataset
(``--size tiny`` for a smoke run), cached in ``data/bench/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import (CORES, ROOT, SIZES, SPEED_TRAIN, gemm_gflops, manifest, one_process_step,  # noqa: E402
                               report, speed_dataset, step_flops, table)
from recoder_dist.config import load_config  # noqa: E402

MODES = [(mode, dtype) for mode in ("union", "full") for dtype in ("float32", "bfloat16")]


def step_alone(data: Path, full: bool, dtype: str, threads: int, steps: int = 20) -> dict:
    """Users/s, ms/step and GFLOP/s of the step on 10 batches' users (best of five windows of
    ``steps // 5`` steps), and the GEMM ceiling of its mean shape."""
    import pyarrow.parquet as pq
    import torch

    from recoder_dist.sampling import UserRows, make_batches

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    config = load_config(None, [*SPEED_TRAIN, f"train.full={str(full).lower()}", f"train.dtype={dtype}"])
    t, n_items = config.train, manifest(data)["num_items"]
    table_ = pq.read_table(data / "train", columns=["user_idx", "items", "values"]).slice(0, 10 * t.batch_size)
    rows = UserRows.from_lists(table_["user_idx"].to_numpy(), table_["items"].to_pylist(),
                               table_["values"].to_pylist())
    batches = list(make_batches(rows, t.batch_size, t.num_sampling_users, n_items, t.num_neg_samples, full,
                                np.random.default_rng(0)))
    step = one_process_step(config, n_items)
    step.model.train()
    for batch in batches[:3]:
        step(batch)
    per_window = max(1, steps // 5)
    windows = []
    for w in range(5):
        started = time.perf_counter()
        for i in range(per_window):
            step(batches[(w * per_window + i) % len(batches)])
        windows.append((time.perf_counter() - started) / per_window)
    seconds = min(windows)
    used = [batches[i % len(batches)] for i in range(5 * per_window)]
    target = float(np.mean([n_items if b.target_items is None else b.target_items.numel() for b in used]))
    nnz = float(np.mean([b.items.numel() for b in used]))
    users = float(np.mean([b.num_users for b in used]))
    flops = step_flops(round(users), target, nnz, config.model.hidden_sizes)
    ceiling = gemm_gflops(round(users), config.model.hidden_sizes[0], round(target), dtype, threads)
    torch.set_num_threads(previous)
    return {"users_per_s": users / seconds, "step_ms": seconds * 1e3, "gflops": flops / seconds / 1e9,
            "ceiling": ceiling, "target": target}


def step_rows(data: Path, steps: int) -> list[tuple[dict, list[str]]]:
    """Per mode and dtype (:data:`MODES`): :func:`step_alone`'s result and its table row."""
    rows = []
    for mode, dtype in MODES:
        a = step_alone(data, mode == "full", dtype, CORES, steps)
        rows.append((a, [f"{mode} {dtype}", f"1 × {CORES}", f"{a['target']:.0f}", f"{a['step_ms']:.0f}",
                     f"{a['users_per_s']:.0f}", f"{a['gflops']:.1f}", f"{a['ceiling']:.1f}",
                     f"{a['gflops'] / a['ceiling']:.2f}"]))
    return rows


STEP_HEADER = ["step", "ranks × threads", "|T|", "ms/step", "users/s", "step GFLOP/s", "GEMM GFLOP/s", "step ÷ GEMM"]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_step.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="ml-1m", help="synthetic dataset shape")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (five windows)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the dataset again")
    args = parser.parse_args(argv)

    def measure(data: Path, work: Path) -> list[str]:
        m = manifest(data)
        return [f"{args.size} synthetic: {m['num_users']['train']:,} train users × {m['num_items']:,} items; batch "
                f"500, target set per 500 users, h=200, multinomial loss; batches prepared in memory, the loop body "
                f"of `trainer.fit` in this process:", "",
                table(STEP_HEADER, [row for _, row in step_rows(data, args.steps)])]
    return report("train step benchmark", args.data_dir, args.fresh, lambda d: speed_dataset(d, args.size), measure)


if __name__ == "__main__":
    sys.exit(main())
