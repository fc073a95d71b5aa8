"""[horovodrun -np N] python tests/_train_worker.py --data DIR --out DIR [--resume | --resume-from RUN] [key=value ...]

Test helper, not a product entry point: trains with ``trainer.fit`` exactly as
``recoder_dist.train`` does (without MLflow) and writes ``<out>/rank-<r>.json`` on every rank:
a SHA-256 digest of the rank's weights after each epoch, and the run's result (without the
trained model itself, ``model``, which rank 0 alone holds).

``TEST_CHECKPOINT_DIR_RANK_<r>`` in the environment gives rank r a ``train.checkpoint_dir`` of
its own, as a host that does not see rank 0's disk would have.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from recoder_dist.config import load_config  # noqa: E402
from recoder_dist.distributed import Workers  # noqa: E402
from recoder_dist.trainer import fit  # noqa: E402


def digest(model: torch.nn.Module) -> str:
    """SHA-256 over the parameters' bytes in name order."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume-from", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    workers = Workers.start()
    config = load_config(None, args.overrides)
    own = os.environ.get(f"TEST_CHECKPOINT_DIR_RANK_{workers.rank}")
    config.train.checkpoint_dir = own or config.train.checkpoint_dir
    digests: dict[int, str] = {}
    result = fit(config, args.data, workers, resume=args.resume_from or args.resume,
                 on_epoch_end=lambda epoch, model, record: digests.__setitem__(epoch, digest(model)))
    report = {"rank": workers.rank, "size": workers.size, "digests": digests,
              "checkpoint_dir": config.train.checkpoint_dir,
              "result": {**asdict(replace(result, model=None)), "best_checkpoint": str(result.best_checkpoint)}}
    Path(args.out, f"rank-{workers.rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
