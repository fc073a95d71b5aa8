"""Ranking metrics for strong-generalization evaluation.

Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering": score the full
catalogue from a user's fold-in items, mask those, and rank the held-out items. Recall@k is
normalized by ``min(k, |heldout|)`` and NDCG@k uses ``1 / log2(rank + 2)`` gains. Per-user
values are returned so ranks can sum them; users without held-out items get NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from recoder_dist.csr import entry_rows


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100")  # reported for every held-out split
SELECTION_METRIC = "ndcg_at_100"  # on validation: picks the best epoch, stops early, ranks registered versions

ITEM_CHUNK = 8192  # items scored at once: a block of B × ITEM_CHUNK scores (and its sort keys) at a time


@dataclass(frozen=True)
class ItemScores:
    """Scores of a batch of users over a catalogue of ``num_items``, produced a block of items at
    a time: ``block(start, stop)`` is the (B × (stop - start)) float tensor of items
    ``start..stop-1``. Memory then grows with B × the block, not B × the catalogue."""

    num_items: int
    block: Callable[[int, int], torch.Tensor]

    @classmethod
    def of(cls, scores: torch.Tensor) -> "ItemScores":
        """A full (B × n_items) score matrix, handed out in blocks (views)."""
        return cls(scores.shape[1], lambda start, stop: scores[:, start:stop])


def _order_keys(scores: torch.Tensor, first_item: int) -> torch.Tensor:
    """int64 keys ordering ``scores`` (B × c, items ``first_item..``) as "higher score first, then
    lower item id": the float's bits made monotone in the high 32 bits, the flipped id below."""
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude, smaller key
    ids = torch.arange(first_item, first_item + scores.shape[1], dtype=torch.int64, device=scores.device)
    return (bits << 32) | (0xFFFFFFFF - ids)


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_order_keys`: (float32 scores, int64 item ids)."""
    bits = keys >> 32
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int32).view(torch.float32), 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def top_k_blocks(scores: ItemScores, exclude_rows: torch.Tensor | np.ndarray,
                 exclude_cols: torch.Tensor | np.ndarray, k: int,
                 item_chunk: int = ITEM_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items per user over the catalogue, scored ``item_chunk`` items at a time
    with a running top-k; excluded entries (fold-in items) score ``-inf``.

    Ties are broken by the lower item id, so the result does not depend on ``item_chunk``: any
    chunk gives what one block of the whole catalogue gives.

    Parameters
    ----------
    scores : ItemScores
    exclude_rows, exclude_cols : int arrays, shape (m,)
        Entries ``(row, item)`` ranked last, at ``-inf``.
    k : int
        Capped at the catalogue's size.
    item_chunk : int
        Items per block.

    Returns
    -------
    values : torch.Tensor of float32, shape (B, min(k, n_items))
        Scores, best first.
    items : torch.Tensor of int64, shape (B, min(k, n_items))
        Item ids.
    """
    if item_chunk < 1:
        raise ValueError(f"item_chunk must be >= 1, got {item_chunk}")
    k = max(0, min(int(k), scores.num_items))
    rows = torch.as_tensor(exclude_rows, dtype=torch.int64)
    cols = torch.as_tensor(exclude_cols, dtype=torch.int64)
    best: Optional[torch.Tensor] = None
    for start in range(0, scores.num_items, item_chunk):
        stop = min(start + item_chunk, scores.num_items)
        block = scores.block(start, stop)
        inside = (cols >= start) & (cols < stop)
        if bool(inside.any()):
            where = (rows[inside].to(block.device), (cols[inside] - start).to(block.device))
            block = block.index_put(where, torch.tensor(float("-inf"), dtype=block.dtype, device=block.device))
        keys = _order_keys(block, start)
        if best is not None:
            keys = torch.cat([best, keys], dim=1)
        best = torch.topk(keys, min(k, keys.shape[1]), dim=1).values
    if best is None:
        return torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.int64)
    return _decode_keys(best)


def top_k(scores: torch.Tensor | ItemScores, exclude_rows: torch.Tensor | np.ndarray,
          exclude_cols: torch.Tensor | np.ndarray, k: int, item_chunk: int = ITEM_CHUNK) -> torch.Tensor:
    """Ids of the ``k`` best-scored items per user, excluded entries (fold-in items) masked.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, n_items), or ItemScores
        Left unchanged.
    exclude_rows, exclude_cols : int arrays, shape (m,)
        Entries ``(row, item)`` never recommended.
    k : int
        Capped at ``n_items``.
    item_chunk : int
        Items scored at once (:func:`top_k_blocks`; ties go to the lower item id).

    Returns
    -------
    torch.Tensor of int64, shape (B, min(k, n_items))
        Item ids, best first.
    """
    scores = scores if isinstance(scores, ItemScores) else ItemScores.of(scores)
    return top_k_blocks(scores, exclude_rows, exclude_cols, k, item_chunk)[1]


def _hits(top_items: torch.Tensor | np.ndarray, heldout_offsets: torch.Tensor | np.ndarray,
          heldout_items: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (B × K) "ranked item is held out" matrix and the held-out counts (B,)."""
    top = _numpy(top_items).astype(np.int64)
    offsets = _numpy(heldout_offsets).astype(np.int64)
    items = _numpy(heldout_items).astype(np.int64)
    num_users = top.shape[0]
    if len(offsets) != num_users + 1:
        raise ValueError(f"heldout_offsets has {len(offsets)} entries for {num_users} users "
                         f"(expected {num_users + 1})")
    counts = np.diff(offsets)
    stride = max(int(top.max(initial=-1)), int(items.max(initial=-1))) + 1
    heldout_keys = entry_rows(offsets) * stride + items
    top_keys = np.arange(num_users, dtype=np.int64)[:, None] * stride + top
    return np.isin(top_keys, heldout_keys), counts


def _recall(hits: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hits[:, :k].sum(axis=1) / np.minimum(k, counts)
    return np.where(counts > 0, recall, np.nan)


def _ndcg(hits: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[:hits[:, :k].shape[1]]).sum(axis=1)
    idcg = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(k, counts)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, dcg / idcg, np.nan)


def recall_at_k(top_items: torch.Tensor | np.ndarray, heldout_offsets: torch.Tensor | np.ndarray,
                heldout_items: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """Recall@k per user: held-out items in the top k / ``min(k, |heldout|)``.

    Parameters
    ----------
    top_items : int array, shape (B, K)
        Ranked item ids (from :func:`top_k`), ``K >= k`` for exact results.
    heldout_offsets : int array, shape (B + 1,)
        CSR offsets of each user's held-out items.
    heldout_items : int array, shape (nnz,)
        Held-out item ids.
    k : int

    Returns
    -------
    np.ndarray of float64, shape (B,)
        NaN for users without held-out items.
    """
    hits, counts = _hits(top_items, heldout_offsets, heldout_items)
    return _recall(hits, counts, k)


def ndcg_at_k(top_items: torch.Tensor | np.ndarray, heldout_offsets: torch.Tensor | np.ndarray,
              heldout_items: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per user, binary relevance, gain ``1 / log2(rank + 2)`` (rank from 0), ideal
    DCG over ``min(k, |heldout|)`` hits.

    Parameters and returns as :func:`recall_at_k`.
    """
    hits, counts = _hits(top_items, heldout_offsets, heldout_items)
    return _ndcg(hits, counts, k)


def evaluate_batch(scores: torch.Tensor | ItemScores, foldin_rows: torch.Tensor | np.ndarray,
                   foldin_cols: torch.Tensor | np.ndarray,
                   heldout_offsets: torch.Tensor | np.ndarray,
                   heldout_items: torch.Tensor | np.ndarray,
                   recall_ks: Sequence[int] = (20, 50),
                   ndcg_ks: Sequence[int] = (100,), item_chunk: int = ITEM_CHUNK) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k from one top-k ranking with fold-in items masked.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, n_items), or ItemScores
        Full-catalogue scores (ranked ``item_chunk`` items at a time, :func:`top_k_blocks`).
    foldin_rows, foldin_cols : int arrays, shape (m,)
        Fold-in interactions (row in the batch, item id), excluded from the ranking.
    heldout_offsets, heldout_items : int arrays
        Held-out items in CSR form, as :func:`recall_at_k`.
    recall_ks, ndcg_ks : sequence of int
        Cut-offs; the defaults give Liang et al.'s Recall@20, Recall@50, NDCG@100.

    Returns
    -------
    dict of str to np.ndarray (B,)
        ``recall_at_{k}`` and ``ndcg_at_{k}``; NaN for users without held-out items.
    """
    top = top_k(scores, foldin_rows, foldin_cols, max([*recall_ks, *ndcg_ks]), item_chunk)
    hits, counts = _hits(top, heldout_offsets, heldout_items)
    results = {f"recall_at_{k}": _recall(hits, counts, k) for k in recall_ks}
    results.update({f"ndcg_at_{k}": _ndcg(hits, counts, k) for k in ndcg_ks})
    return results


def popularity_scores(item_counts: torch.Tensor | np.ndarray, num_users: int) -> torch.Tensor:
    """Popularity baseline: every user scores each item by its training count.

    Returns a (num_users × n_items) float32 view (no copy), usable as ``scores`` above.
    """
    counts = torch.as_tensor(_numpy(item_counts), dtype=torch.float32)
    return counts.unsqueeze(0).expand(num_users, -1)
