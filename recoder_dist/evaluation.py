"""Validation/test metrics of a scorer over held-out users (Liang et al. 2018 protocol)."""
from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

from recoder_dist.csr import entry_rows
from recoder_dist.feed import HeldoutRows
from recoder_dist.metrics import ITEM_CHUNK, METRICS, ItemScores, evaluate_batch, popularity_scores
from recoder_dist.models import RecoderAutoencoder

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Union[torch.Tensor, ItemScores]]


def metric_sums(score: Scorer, rows: HeldoutRows, batch_size: int,
                device: torch.device = torch.device("cpu"), item_chunk: int = ITEM_CHUNK) -> torch.Tensor:
    """Per-metric sums and the user count, ``[Σ recall@20, Σ recall@50, Σ ndcg@100, n]``.

    ``score(items, values, offsets)`` returns full-catalogue scores, as a tensor or as
    :class:`ItemScores` blocks; they are ranked ``item_chunk`` items at a time with a running top-k
    (memory ∝ ``batch_size × item_chunk``), fold-in items masked.
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
            scores = score(items.to(device), torch.from_numpy(foldin.values).to(device), offsets.to(device))
            result = evaluate_batch(scores, entry_rows(foldin.offsets), items, part.heldout_offsets, part.heldout_items,
                                    item_chunk=item_chunk)
        valid = ~np.isnan(result[METRICS[0]])
        for i, name in enumerate(METRICS):
            totals[i] += float(result[name][valid].sum())
        totals[-1] += int(valid.sum())
    return totals


def means(totals: torch.Tensor) -> dict[str, float]:
    """Metric means from (reduced) :func:`metric_sums`."""
    count = max(float(totals[-1]), 1.0)
    return {name: float(totals[i]) / count for i, name in enumerate(METRICS)}


def model_scorer(model: RecoderAutoencoder) -> Scorer:
    """Full-catalogue scores of the autoencoder in eval mode (no input noise), in item blocks:
    the users' hidden representation once, then the decoder's rows block by block."""
    def score(items: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> ItemScores:
        model.eval()
        z = model.hidden(items, values, offsets)
        return ItemScores(model.num_items, lambda start, stop: model.block_logits(z, start, stop).float())
    return score


def popularity_scorer(item_counts: np.ndarray) -> Scorer:
    """The popularity baseline: every user gets the items ranked by training count."""
    def score(items: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> ItemScores:
        return ItemScores.of(popularity_scores(item_counts, offsets.numel() - 1))
    return score
