"""python benchmarks/catalogue.py [--sizes 26744,270000,1000000,2700000] [--optimizers adam,lazy_adam,rowwise_adagrad]
    [--steps 10] [--threads 2] [--loss multinomial] [--dtype float32]

Catalogue scaling of one training step (issue 12): the same batch, the same 500 users with the
same items (ML-20M-like: ~144 interactions each, Zipf popularity over the first 26,744 ids, so the
batch union is identical at every size), trained in catalogues of growing size with each item
optimizer (``train.item_optimizer``: dense Adam, lazy Adam, row-wise Adagrad). Each (size,
optimizer) runs in its own process (``--worker``) so that its peak RSS is its own; it times
``trainer.Step`` (forward, backward, exchange, update) after warm-up steps and prints the median.
Ratios are against the 26,744-item (ML-20M-sized) step of the same optimizer and of dense Adam,
measured in the same run. A configuration that would not fit in memory (dense Adam keeps four
n_items × h copies of each table) is skipped and says so. The kernel path (torch's CPU capability,
native or emulated bf16) is printed first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE_ITEMS = 26744  # ML-20M's catalogue: every user's items lie below this id
USERS, MEAN_ITEMS, HIDDEN = 500, 144, 200


def _batch(num_items: int, seed: int = 0):
    """The one batch: the same users and items at every catalogue size."""
    import numpy as np

    from recoder_dist.sampling import UserRows, make_batches
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, BASE_ITEMS + 1)
    popularity /= popularity.sum()
    lists = [np.unique(rng.choice(BASE_ITEMS, size=MEAN_ITEMS, p=popularity)) for _ in range(USERS)]
    return next(make_batches(UserRows.from_lists(np.arange(USERS), lists), USERS, USERS, num_items))


def worker(args: argparse.Namespace) -> int:
    """Time ``args.steps`` steps of one (size, optimizer) and print one JSON line."""
    import torch

    from benchmarks.common import one_process_step
    from recoder_dist.config import load_config
    from recoder_dist.precision import kernel_path

    torch.set_num_threads(args.threads)
    # force_dtype: bf16 as asked even where it is emulated (this script measures the kernels)
    config = load_config(None, [f"train.item_optimizer={args.optimizer}", f"train.loss={args.loss}",
                                f"model.hidden_sizes=[{HIDDEN}]", f"train.dtype={args.dtype}", "train.force_dtype=true",
                                "mlflow.enabled=false"])
    batch = _batch(args.items)
    step = one_process_step(config, args.items)  # reuses freed memory and seeds, as fit does
    device, model = step.device, step.model
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        started = time.perf_counter()
        step(batch)
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    print(json.dumps({"items": args.items, "optimizer": args.optimizer, "ms": 1000 * statistics.median(times),
                      "ms_min": 1000 * min(times), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "union": int(batch.target_items.numel()), "kernel": kernel_path(device),
                      "threads": torch.get_num_threads()}))
    return 0


def table_gb(items: int, optimizer: str) -> float:
    """Item-table memory: weights (2 tables of h + a bias) plus Adam's grads and moments (dense),
    or moments (lazy), or one float per row (row-wise Adagrad)."""
    weights = items * (2 * HIDDEN + 1) * 4 / 1e9
    return weights * {"adam": 4, "lazy_adam": 3, "rowwise_adagrad": 1}[optimizer]


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    optimizers = args.optimizers.split(",")
    results: dict[tuple[int, str], dict] = {}
    for optimizer in optimizers:
        for items in sizes:
            if table_gb(items, optimizer) > args.max_gb:
                print(f"  {optimizer} at {items:,} items: skipped, its tables need ~{table_gb(items, optimizer):.1f} GB "
                      f"(> --max-gb {args.max_gb})", flush=True)
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--items", str(items), "--optimizer",
                       optimizer, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                       str(args.threads), "--loss", args.loss, "--dtype", args.dtype]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {optimizer} at {items:,} items failed ({done.returncode}): {done.stderr[-500:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[(items, optimizer)] = result
            if len(results) == 1:
                print(f"kernel path: {result['kernel']}, {result['threads']} thread(s), loss {args.loss}, "
                      f"dtype {args.dtype}, batch {USERS} users, union {result['union']:,} items", flush=True)
            print(f"  {optimizer:16s} {items:>10,} items: {result['ms']:7.1f} ms/step (min {result['ms_min']:.1f}), "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
    base = results.get((sizes[0], "adam"))
    print(f"\n| items | optimizer | ms/step | × own {sizes[0]:,} step | × dense Adam {sizes[0]:,} | peak RSS GB |")
    print("|------:|-----------|--------:|------:|------:|------:|")
    for optimizer in optimizers:
        own = results.get((sizes[0], optimizer))
        for items in sizes:
            r = results.get((items, optimizer))
            if r is None:
                print(f"| {items:,} | {optimizer} | skipped | | | |")
                continue
            ratio_own = f"{r['ms'] / own['ms']:.2f}" if own else "-"
            ratio_base = f"{r['ms'] / base['ms']:.2f}" if base else "-"
            print(f"| {items:,} | {optimizer} | {r['ms']:.1f} | {ratio_own} | {ratio_base} | {r['peak_rss_gb']:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=f"{BASE_ITEMS},270000,1000000,2700000")
    parser.add_argument("--optimizers", default="adam,lazy_adam,rowwise_adagrad")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--loss", default="multinomial")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-gb", type=float, default=12.0, help="skip configurations whose tables need more")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return worker(args) if args.worker else run(args)


if __name__ == "__main__":
    sys.exit(main())
