"""python benchmarks/train_speed.py [--epochs 4] [--size ml-1m] [--ml20m] [--skip-scaling] [--baselines]
    [--data-dir DIR] [--fresh]

The trainer's speed, every figure a ratio against a baseline measured in the same run, on
ML-1M-sized synthetic data (6,040 users × 3,706 items, ~1M interactions; ``--ml20m`` adds one
epoch at ML-20M size; ``--size tiny`` is a smoke run): seconds/epoch and users/s of batch-union
vs full mode and fp32 vs bf16 (one process × all cores), of the three gradient exchanges at
``horovodrun -np 2`` × 1 thread vs one process × 1 thread, each epoch's GFLOP/s against the
GEMM ceiling its own processes measured, the step alone beside the epoch (``train_step.py``),
and (``--baselines``) the original Recoder 0.4.0 with the same hyper-parameters, with test
Recall@20 beside.

Training runs are subprocesses (``[horovodrun -np R] python benchmarks/fit_worker.py``) calling
``trainer.fit`` without MLflow; prepared datasets are cached in ``data/bench/`` (``--fresh``
rebuilds them); the baseline runs in its own venv (``benchmarks/README.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import recoder_baseline  # noqa: E402
from benchmarks.common import (CORES, ROOT, SIZES, SPEED_TRAIN, Datasets, achieved, manifest, report,  # noqa: E402
                               speed_dataset, steady, table, train)
from benchmarks.train_step import MODES, STEP_HEADER, step_rows  # noqa: E402

EXCHANGES = ("dense", "sparse", "sync_union")


def speed_runs(data: Path, epochs: int, work: Path, name: str, scaling: bool) -> dict:
    """The training runs: ``(mode, dtype)`` on 1 × all cores; with ``scaling`` also ``np1x1``
    and one ``horovodrun -np 2`` × 1 thread run per gradient exchange."""
    base = [*SPEED_TRAIN, f"train.epochs={epochs}"]
    runs: dict = {}
    for mode, dtype in MODES:
        runs[(mode, dtype)] = train(f"{name}-{mode}-{dtype}-np1x{CORES}", data, 1, CORES,
                                    [*base, f"train.full={str(mode == 'full').lower()}", f"train.dtype={dtype}"],
                                    work)
    if scaling:
        runs["np1x1"] = train(f"{name}-union-float32-np1x1", data, 1, 1, [*base, "train.dtype=float32"], work)
        for exchange in EXCHANGES:
            runs[exchange] = train(f"{name}-union-float32-np2x1-{exchange}", data, 2, 1,
                                   [*base, "train.dtype=float32", f"train.grad_exchange={exchange}"], work)
    return runs


def speed_section(data: Path, epochs: int, work: Path, name: str, scaling: bool = True,
                  baselines: bool = False, steps: int = 20) -> list[str]:
    m = manifest(data)
    print(f"{name}: {m['num_users']['train']} train users × {m['num_items']} items, "
          f"{m['nnz']['train']['items']} train interactions; {epochs} epoch(s) per run", flush=True)
    runs = speed_runs(data, epochs, work, name, scaling)
    lines = [f"### {name}: {m['num_users']['train']:,} train users × {m['num_items']:,} items, "
             f"{m['nnz']['train']['items']:,} train interactions",
             "", (f"Fastest epoch after the first of {epochs}-epoch runs" if epochs > 1 else
                  "One epoch per run (including the reader's start)")
             + f"; batch 500, target set per 500 users, h=200, multinomial loss; {CORES} cores.", ""]
    reference = steady(runs[("union", "float32")])["users_per_s"]
    rows = []
    for mode, dtype in MODES:
        r = runs[(mode, dtype)]
        s, a = steady(r), achieved(r, data)
        rows.append([f"{mode} {dtype}", f"1 × {r['threads']}", f"{s['target_size']:.0f}", f"{s['epoch_s']:.2f}",
                     f"{s['users_per_s']:.0f}", f"{s['users_per_s'] / reference:.2f}",
                     f"{a['gflops']:.1f}", f"{a['gflops'] / r['gemm_gflops']:.2f}"])
    if scaling:
        single = steady(runs["np1x1"])["users_per_s"]
        for label, r in [("union float32", runs["np1x1"])] + [(f"union float32, {e}", runs[e]) for e in EXCHANGES]:
            s, a = steady(r), achieved(r, data)
            rows.append([label, f"{r['ranks']} × 1", f"{s['target_size']:.0f}", f"{s['epoch_s']:.2f}",
                         f"{s['users_per_s']:.0f}", f"{s['users_per_s'] / reference:.2f} "
                         f"({s['users_per_s'] / single:.2f} vs 1 × 1)",
                         f"{a['gflops']:.1f}", f"{a['gflops'] / r['gemm_gflops']:.2f}"])
    lines.append(table(["run", "ranks × threads", "mean target |T|", "s/epoch", "users/s",
                        "users/s ÷ union fp32 1×all", "epoch GFLOP/s", "÷ GEMM GFLOP/s"], rows))
    alone_rows = [row + [f"{steady(runs[mode_dtype])['users_per_s'] / a['users_per_s']:.2f}"]
                  for mode_dtype, (a, row) in zip(MODES, step_rows(data, steps))]
    lines += ["", "The step alone (batches prepared in memory; the loop body of `trainer.fit`), in this process:", "",
              table([*STEP_HEADER, "epoch users/s ÷ step-alone users/s"], alone_rows)]
    gemms = [f"{r['label'].removeprefix(name + '-')}: {r['gemm_gflops']:.1f}" for r in runs.values()]
    lines += ["", "GEMM ceiling per run (GFLOP/s of the decoder's three GEMMs at the run's B × h × mean |T|, "
              "measured by the run's own processes right after training, same dtype and threads, summed over "
              "ranks): " + "; ".join(gemms)]
    lines.append(f"bf16 ÷ fp32 (union): {steady(runs[('union', 'bfloat16')])['users_per_s'] / reference:.2f}×; "
                 f"full ÷ union (fp32): {steady(runs[('full', 'float32')])['users_per_s'] / reference:.2f}×")
    if scaling:
        h, n_items = 200, m["num_items"]
        dense_mb = (2 * n_items * h + n_items + h) * 4 / 1e6
        target = steady(runs["sync_union"])["target_size"]
        own = steady(runs["sparse"])["target_size"]
        lines.append(f"Gradient traffic per step and rank (from sizes): dense {dense_mb:.1f} MB; sync_union "
                     f"{(2 * target * h + target + h) * 4 / 1e6:.1f} MB (|U| = {target:.0f}); sparse "
                     f"{(2 * own * h + own) * 4 * 2 / 1e6:.1f} MB gathered from 2 ranks (|T| = {own:.0f} each).")
    return lines + [""] + original_recoder_lines(runs, data, work, epochs, baselines)


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
    for mode, dtype in MODES:
        s = steady(runs[(mode, dtype)])
        rows.append([f"recoder-dist, {mode}, {dtype}", f"{s['epoch_s']:.2f}", f"{s['users_per_s']:.0f}",
                     f"{s['users_per_s'] / original['users_per_s']:.2f}",
                     recall(runs[(mode, dtype)]["test"])])
    which = "fastest epoch after the first" if epochs > 1 else "its one epoch"
    return [f"Against the original Recoder (`recsys-recoder==0.4.0`, its own training loop and in-memory "
            f"loader, 1 process × {CORES} threads, {epochs} epoch(s), same hyper-parameters; {which}; test "
            f"Recall@20 after the last epoch):", "",
            table(["run", "s/epoch", "users/s", "÷ original users/s", "test Recall@20"], rows)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_speed.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not counted)")
    parser.add_argument("--size", choices=sorted(SIZES), default="ml-1m", help="synthetic dataset shape")
    parser.add_argument("--ml20m", action="store_true", help="also one epoch at ML-20M size (long)")
    parser.add_argument("--skip-scaling", action="store_true", help="no horovodrun -np 2 runs")
    parser.add_argument("--baselines", action="store_true", help="also the original Recoder 0.4.0 (separate venv)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the datasets again")
    args = parser.parse_args(argv)
    names = {"ml-1m": "ML-1M-sized synthetic", "ml-20m": "ML-20M-sized synthetic", "tiny": "tiny synthetic"}

    def data_of(datasets: Datasets) -> tuple[Path, Optional[Path]]:
        return speed_dataset(datasets, args.size), speed_dataset(datasets, "ml-20m") if args.ml20m else None

    def measure(data: tuple[Path, Optional[Path]], work: Path) -> list[str]:
        lines = speed_section(data[0], args.epochs, work, names[args.size], scaling=not args.skip_scaling,
                              baselines=args.baselines)
        if data[1] is not None:
            lines += [""] + speed_section(data[1], 1, work, names["ml-20m"], scaling=False, baselines=args.baselines)
        return lines
    return report("train speed benchmark", args.data_dir, args.fresh, data_of, measure)


if __name__ == "__main__":
    sys.exit(main())
