"""python benchmarks/train_quality.py [--epochs 60] [--baselines] [--data-dir DIR] [--fresh]

Quality on real MovieLens 100K (``conf/ml-100k.yaml``; test split, best-validation epoch):
batch-union vs full mode vs bf16 vs popularity vs EASE (Steck 2019, closed form, λ chosen on
validation) and (``--baselines``) implicit's ALS and the original Recoder 0.4.0, with wall time
each, and the training time our autoencoders need to first reach ALS's validation NDCG@100.
Training runs are ``trainer.fit`` subprocesses (``benchmarks/fit_worker.py``); the baselines are
``benchmarks/baselines.py``'s, in their own venvs (``benchmarks/README.md``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import (Measured, als_baseline, ease_on_validation, evaluate, item_counts,  # noqa: E402
                                  recoder_baseline, seconds_to_reach)
from benchmarks.common import CORES, QUALITY_TRAIN, ROOT, Datasets, manifest, report, table, train  # noqa: E402
from recoder_dist.config import load_config  # noqa: E402

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_quality.py",
                                     description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the autoencoder runs")
    parser.add_argument("--baselines", action="store_true", help="try implicit ALS / Recoder 0.4.0 (separate venvs)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the dataset again")
    args = parser.parse_args(argv)
    return report("train quality benchmark", args.data_dir, args.fresh, Datasets.movielens_100k,
                  lambda data, work: quality_section(data, args.epochs, work, args.baselines))


if __name__ == "__main__":
    sys.exit(main())
