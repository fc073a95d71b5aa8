"""Recommendations in original ids from a trained autoencoder: the logic behind the MLflow model.

A :class:`Recommender` holds a trained model (``recoder_dist.trained``: the weights and the item
id map) and item popularity. It answers
users' histories (original item ids, optional values) with top-k unseen items, and items with
their most similar items (cosine over the decoder's item vectors). Unknown ids are ignored and
counted; an empty history gets the most popular items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recoder_dist.csr import entry_rows
from recoder_dist.metrics import ITEM_CHUNK, ItemScores, top_k_blocks
from recoder_dist.trained import TrainedModel


@dataclass
class Recommendations:
    """Top-k per input row: item ids, scores, and how many history ids were unknown."""

    items: list[list[str]]
    scores: list[list[float]]
    unknown: list[int]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"recommended": self.items, "scores": self.scores, "unknown_items": self.unknown})


class Recommender:
    """A trained model answering in original item ids (``model.items``)."""

    def __init__(self, model: TrainedModel, item_chunk: int = ITEM_CHUNK) -> None:
        self.model = model
        self.network = model.network.eval()
        self.item_chunk = item_chunk
        self.item_ids = model.items.ids
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        counts = model.items.counts
        self.popularity = torch.as_tensor(counts / max(1, counts.max()), dtype=torch.float32)

    def _known(self, histories: Sequence[Sequence[str]], values: Optional[Sequence[Sequence[float]]]):
        idx, vals, offsets, unknown = [], [], [0], []
        for row, history in enumerate(histories):
            history = [] if history is None else list(history)
            row_values = [1.0] * len(history) if values is None or values[row] is None else list(values[row])
            if len(row_values) != len(history):
                raise ValueError(f"row {row}: {len(history)} items but {len(row_values)} values")
            bad = next((v for v in row_values if v is None or not math.isfinite(float(v))), "finite")
            if bad != "finite":
                raise ValueError(f"row {row}: values must be finite numbers, got {bad!r}")
            known = [(self.index[str(i)], float(v)) for i, v in zip(history, row_values) if str(i) in self.index]
            known = list(dict(known).items())  # a repeated id counts once (its last value)
            unknown.append(len(history) - sum(1 for i in history if str(i) in self.index))
            idx += [i for i, _ in known]
            vals += [v for _, v in known]
            offsets.append(len(idx))
        return (torch.tensor(idx, dtype=torch.int64), torch.tensor(vals, dtype=torch.float32),
                torch.tensor(offsets, dtype=torch.int64), unknown)

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10,
                  values: Optional[Sequence[Sequence[float]]] = None) -> Recommendations:
        """Top-``k`` items not in each history; popular items for empty (or all-unknown) histories.
        The catalogue is scored ``item_chunk`` items at a time (memory ∝ rows × ``item_chunk``)."""
        _check_k(k)
        items, vals, offsets, unknown = self._known(histories, values)
        lengths = torch.diff(offsets)
        empty = (lengths == 0).unsqueeze(1)
        with torch.no_grad():
            z = self.network.hidden(items, vals, offsets)

        def block(start: int, stop: int) -> torch.Tensor:
            return torch.where(empty, self.popularity[start:stop], self.network.block_logits(z, start, stop))
        return self._top(ItemScores(len(self.item_ids), block), items, offsets, k, unknown)

    def similar(self, item_lists: Sequence[Sequence[str]], k: int = 10) -> Recommendations:
        """Top-``k`` items most similar to each row's items (cosine of decoder item vectors,
        summed over the row's known items, which are excluded); popular items when none is known.
        Item vectors are normalised and scored ``item_chunk`` at a time, never all at once."""
        _check_k(k)
        vectors = self.network.item_vectors()
        items, _, offsets, unknown = self._known(item_lists, None)
        lengths = torch.diff(offsets)
        empty = (lengths == 0).unsqueeze(1)
        rows = entry_rows(offsets)
        query = torch.zeros(len(lengths), vectors.shape[1]).index_add_(0, rows, F.normalize(vectors[items], dim=1))

        def block(start: int, stop: int) -> torch.Tensor:
            return torch.where(empty, self.popularity[start:stop], query @ F.normalize(vectors[start:stop], dim=1).t())
        return self._top(ItemScores(len(self.item_ids), block), items, offsets, k, unknown)

    def _top(self, scores: ItemScores, items: torch.Tensor, offsets: torch.Tensor, k: int,
             unknown: list[int]) -> Recommendations:
        """The ``k`` best of ``scores`` per row, the row's own ``items`` (CSR by ``offsets``) excluded
        (ties: lower index)."""
        rows = entry_rows(offsets)
        with torch.no_grad():
            top_scores, top_idx = top_k_blocks(scores, rows, items, k, self.item_chunk)
        ids, values = [], []
        for row_idx, row_scores in zip(top_idx.numpy(), top_scores.numpy()):
            finite = np.isfinite(row_scores)
            ids.append(self.item_ids[row_idx[finite]].tolist())
            values.append(row_scores[finite].astype(float).tolist())
        return Recommendations(ids, values, unknown)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (recommendations per row), got {k!r}")
