"""[horovodrun -np R | torchrun ...] python benchmarks/fit_worker.py --data D --out O [--config C] [--ceiling] [k=v ...]

One rank of a benchmark's training run: ``trainer.fit`` without MLflow, then (``--ceiling``) the
GEMM ceiling of this very process (threads, dtype, and the other ranks busy alike); rank 0
writes the result as JSON to ``--out``. Started by ``benchmarks/common.train`` and
``benchmarks/launchers.py``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import gemm_gflops  # noqa: E402
from recoder_dist.config import load_config  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/fit_worker.py", description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config")
    parser.add_argument("--ceiling", action="store_true", help="also measure this process's GEMM GFLOP/s")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import torch

    from recoder_dist.distributed import Workers
    from recoder_dist.trainer import fit

    workers = Workers.start()
    config = load_config(args.config, args.overrides)
    started = time.perf_counter()
    result = fit(config, args.data, workers)
    fit_s = time.perf_counter() - started
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


if __name__ == "__main__":
    sys.exit(main())
