"""python benchmarks/train_feed.py [--epochs 4] [--size ml-1m] [--data-dir DIR] [--fresh]

The trainer's input alone against what an epoch consumes: users/s of Petastorm
(``feed.train_rows``) and of Petastorm + batch-union sampling (``trainer._batches``, what the
trainer's prefetch thread produces), one reader kept over 3 passes as ``trainer.fit`` keeps it,
divided by the users/s of a union fp32 training epoch on 1 × all cores of the same data; with
the embedded default's row groups and with tiny ones (~19 users each at ML-1M size). ``--size
tiny`` is a smoke run. Datasets are cached in ``data/bench/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (CORES, ROOT, SIZES, SPEED_TRAIN, Datasets, manifest, report,  # noqa: E402
                               speed_dataset, steady, table, train)
from recoder_dist.config import load_config  # noqa: E402


def feed_rates(data: Path, passes: int = 3) -> dict[str, float]:
    """Users/s of the trainer's input alone over ``passes`` passes of one reader: Petastorm, and
    Petastorm + batch-union sampling, with the speed runs' settings."""
    import importlib
    importlib.import_module("petastorm")  # before the clock starts: a one-time cost per process
    from recoder_dist.distributed import Workers
    from recoder_dist.feed import train_rows
    from recoder_dist.trainer import _batches, shuffle_buffer_users
    m = manifest(data)
    n_train = m["num_users"]["train"]
    config = load_config(None, SPEED_TRAIN)
    t = config.train

    def rate(stream, users_of) -> float:
        users, started = 0, time.perf_counter()
        for part in stream:
            users += users_of(part)
            if users >= passes * n_train:
                break
        stream.close()
        return users / (time.perf_counter() - started)

    sampling_users = t.num_sampling_users
    petastorm = train_rows(data, 0, 1, seed=1, num_sampling_users=sampling_users,
                           shuffle_buffer_users=shuffle_buffer_users(sampling_users, n_train),
                           reader_pool=t.reader_pool, reader_pool_size=t.reader_pool_size)
    return {"petastorm": rate(petastorm, len),
            "sampled": rate(_batches(str(data), config, Workers(0, 1, 0, 1), m["num_items"], n_train, 1),
                            lambda batch: batch.num_users)}


def feed_section(datasets: Sequence[tuple[str, Path]], epochs: int, work: Path) -> list[str]:
    rows = []
    for label, data in datasets:
        rates = feed_rates(data)
        groups = manifest(data)["row_groups"]["train"]
        epoch = steady(train(f"feed-union-float32-np1x{CORES}-{groups}groups", data, 1, CORES,
                             [*SPEED_TRAIN, f"train.epochs={epochs}", "train.dtype=float32"], work))["users_per_s"]
        rows.append([f"{label}, {groups} train row groups", f"{rates['petastorm']:.0f}",
                     f"{rates['petastorm'] / epoch:.1f}", f"{rates['sampled']:.0f}",
                     f"{rates['sampled'] / epoch:.1f}", f"{epoch:.0f}"])
    pool = load_config(None, SPEED_TRAIN).train
    return [f"Input alone (one reader kept over 3 passes, as `trainer.fit` keeps it; {pool.reader_pool} pool of "
            f"{pool.reader_pool_size}) vs what union fp32 on 1 × {CORES} consumes (fastest epoch after the first "
            f"of {epochs}):", "",
            table(["input", "Petastorm users/s", "÷ epoch users/s", "+ sampling users/s", "÷ epoch users/s",
                   "union fp32 epoch users/s"], rows)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_feed.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each reference training run")
    parser.add_argument("--size", choices=sorted(SIZES), default="ml-1m", help="synthetic dataset shape")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--fresh", action="store_true", help="prepare the datasets again")
    args = parser.parse_args(argv)

    def data_of(datasets: Datasets) -> list[tuple[str, Path]]:
        return [("this data", speed_dataset(datasets, args.size)),
                ("the same users", speed_dataset(datasets, args.size, tiny_groups=True))]

    def measure(both: list[tuple[str, Path]], work: Path) -> list[str]:
        m = manifest(both[0][1])
        return [f"{args.size} synthetic: {m['num_users']['train']:,} train users × {m['num_items']:,} items", "",
                *feed_section(both, args.epochs, work)]
    return report("train feed benchmark", args.data_dir, args.fresh, data_of, measure)


if __name__ == "__main__":
    sys.exit(main())
