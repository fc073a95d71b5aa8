"""Validation/test metrics of a scorer over held-out users (Liang et al. 2018 protocol)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from recoder_dist.feed import HeldoutRows
from recoder_dist.metrics import evaluate_batch, popularity_scores

METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100")
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def metric_sums(score: Scorer, rows: HeldoutRows, batch_size: int,
                device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Per-metric sums and the user count, ``[Σ recall@20, Σ recall@50, Σ ndcg@100, n]``.

    ``score(items, values, offsets)`` returns full-catalogue scores; fold-in items are masked.
    Sums (not means) so that ranks' shards reduce exactly; users without held-out items are
    skipped.
    """
    totals = torch.zeros(len(METRICS) + 1, dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        part = rows.take(np.arange(start, min(start + batch_size, len(rows))))
        foldin = part.foldin
        offsets = torch.from_numpy(foldin.offsets)
        items = torch.from_numpy(foldin.items)
        with torch.no_grad():
            scores = score(items.to(device), torch.from_numpy(foldin.values).to(device),
                           offsets.to(device)).float().cpu()
        rows_of = torch.repeat_interleave(torch.arange(len(foldin)), torch.diff(offsets))
        result = evaluate_batch(scores, rows_of, items, part.heldout_offsets, part.heldout_items)
        valid = ~np.isnan(result[METRICS[0]])
        for i, name in enumerate(METRICS):
            totals[i] += float(result[name][valid].sum())
        totals[-1] += int(valid.sum())
    return totals


def means(totals: torch.Tensor) -> dict[str, float]:
    """Metric means from (reduced) :func:`metric_sums`."""
    count = max(float(totals[-1]), 1.0)
    return {name: float(totals[i]) / count for i, name in enumerate(METRICS)}


def model_scorer(model: torch.nn.Module) -> Scorer:
    """Full-catalogue scores of the autoencoder in eval mode (no input noise)."""
    def score(items: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        model.eval()
        return model(items, values, offsets, None)
    return score


def popularity_scorer(item_counts: np.ndarray) -> Scorer:
    """The popularity baseline: every user gets the items ranked by training count."""
    def score(items: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return popularity_scores(item_counts, offsets.numel() - 1)
    return score
