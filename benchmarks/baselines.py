"""The baselines the trainer is measured against, and the evaluation they share with it.

EASE (Steck 2019) in this process; implicit's ALS and the original Recoder 0.4.0 in venvs of
their own (``benchmarks/setup_baselines.sh``; ``_als.py`` and ``_recoder.py`` run there), fed the
train matrix and fold-in rows as CSR arrays and answering with scores or top-k lists, which
``evaluate`` scores as the trainer's validation and test are scored (``recoder_dist.evaluation``).
Used by ``train_quality.py``, ``train_speed.py`` (the original Recoder's epoch times) and
``quality.py``.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from benchmarks.common import CORES, ROOT, manifest


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
