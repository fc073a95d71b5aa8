"""Ranking metrics for strong-generalization evaluation.

Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering": score the full
catalogue from a user's fold-in items, mask those, and rank the held-out items. Recall@k is
normalized by ``min(k, |heldout|)`` and NDCG@k uses ``1 / log2(rank + 2)`` gains. Per-user
values are returned so ranks can sum them; users without held-out items get NaN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def top_k(scores: torch.Tensor, exclude_rows: torch.Tensor | np.ndarray,
          exclude_cols: torch.Tensor | np.ndarray, k: int) -> torch.Tensor:
    """Ids of the ``k`` best-scored items per user, excluded entries (fold-in items) masked.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, n_items)
        Left unchanged.
    exclude_rows, exclude_cols : int arrays, shape (m,)
        Entries ``(row, item)`` never recommended.
    k : int
        Capped at ``n_items``.

    Returns
    -------
    torch.Tensor of int64, shape (B, min(k, n_items))
        Item ids, best first.
    """
    masked = scores.clone()
    rows = torch.as_tensor(exclude_rows, dtype=torch.int64, device=scores.device)
    cols = torch.as_tensor(exclude_cols, dtype=torch.int64, device=scores.device)
    masked[rows, cols] = float("-inf")
    return torch.topk(masked, min(k, scores.shape[1]), dim=1).indices


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
    heldout_keys = np.repeat(np.arange(num_users, dtype=np.int64), counts) * stride + items
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


def evaluate_batch(scores: torch.Tensor, foldin_rows: torch.Tensor | np.ndarray,
                   foldin_cols: torch.Tensor | np.ndarray,
                   heldout_offsets: torch.Tensor | np.ndarray,
                   heldout_items: torch.Tensor | np.ndarray,
                   recall_ks: Sequence[int] = (20, 50),
                   ndcg_ks: Sequence[int] = (100,)) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k from one top-k ranking with fold-in items masked.

    Parameters
    ----------
    scores : torch.Tensor, shape (B, n_items)
        Full-catalogue scores.
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
    top = top_k(scores, foldin_rows, foldin_cols, max([*recall_ks, *ndcg_ks]))
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
