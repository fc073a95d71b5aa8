"""Batch-union negative sampling.

Recoder (Moussawi, "Towards Large Scale Training Of Autoencoders For Collaborative Filtering",
RecSys'18 LBR) scores each batch only against a target item set: the union of the items of a
group of ``num_sampling_users`` users, optionally widened with random negatives. The users'
other items are the implicit negatives, and the decoder's cost is ∝ |union| instead of
∝ the catalogue's size. Everything here is pure (numpy in, torch out) and knows nothing of
the distributed layer; :func:`retarget` lets that layer score a batch against the union
gathered from all ranks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from recoder_dist.csr import entry_rows, offsets_of, take_rows


@dataclass(frozen=True)
class UserRows:
    """Some users' interactions in CSR form.

    Attributes
    ----------
    user_idx : np.ndarray of int64, shape (n,)
        Dataset user index of each row.
    offsets : np.ndarray of int64, shape (n + 1,)
        Row ``i`` owns ``items[offsets[i]:offsets[i + 1]]``; ``offsets[0] == 0``.
    items : np.ndarray of int64, shape (nnz,)
        Item ids, unique within a row.
    values : np.ndarray of float32, shape (nnz,)
        Interaction values (1.0 when binarized).
    """

    user_idx: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype in (("user_idx", np.int64), ("offsets", np.int64),
                            ("items", np.int64), ("values", np.float32)):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        n = len(self.user_idx)
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0:
            raise ValueError(f"UserRows: offsets must have {n + 1} entries starting at 0 for "
                             f"{n} users, got shape {self.offsets.shape}")
        nnz = int(self.offsets[-1])
        if self.items.shape != (nnz,) or self.values.shape != (nnz,):
            raise ValueError(f"UserRows: offsets end at {nnz} but items has {len(self.items)} "
                             f"and values {len(self.values)} entries")
        if n and np.any(np.diff(self.offsets) < 0):
            raise ValueError("UserRows: offsets must be non-decreasing")

    def __len__(self) -> int:
        return len(self.user_idx)

    @classmethod
    def from_lists(cls, user_idx: Sequence[int] | np.ndarray,
                   item_lists: Sequence[Sequence[int] | np.ndarray],
                   value_lists: Optional[Sequence[Sequence[float] | np.ndarray]] = None,
                   ) -> "UserRows":
        """Build from one item list (and value list) per user.

        Parameters
        ----------
        user_idx : sequence of int
            Dataset user index of each row.
        item_lists : sequence of int sequences
            Each user's item ids.
        value_lists : sequence of float sequences, optional
            Each user's values, aligned with ``item_lists``; all 1.0 when omitted.

        Returns
        -------
        UserRows
        """
        offsets = offsets_of(np.fromiter((len(x) for x in item_lists), dtype=np.int64, count=len(item_lists)))
        items = (np.concatenate([np.asarray(x, dtype=np.int64) for x in item_lists])
                 if len(item_lists) else np.zeros(0, dtype=np.int64))
        if value_lists is None:
            values = np.ones(len(items), dtype=np.float32)
        else:
            if len(value_lists) != len(item_lists):
                raise ValueError(f"UserRows.from_lists: {len(item_lists)} item lists but "
                                 f"{len(value_lists)} value lists")
            values = (np.concatenate([np.asarray(x, dtype=np.float32) for x in value_lists])
                      if len(value_lists) else np.zeros(0, dtype=np.float32))
        return cls(np.asarray(user_idx, dtype=np.int64), offsets, items, values)

    def slice(self, start: int, stop: int) -> "UserRows":
        """Rows ``start:stop`` (clipped to the rows there are), with offsets rebased to 0."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        lo, hi = self.offsets[start], self.offsets[stop]
        return UserRows(self.user_idx[start:stop], self.offsets[start:stop + 1] - lo,
                        self.items[lo:hi], self.values[lo:hi])

    def take(self, pick: np.ndarray) -> "UserRows":
        """The rows at positions ``pick``, in that order (e.g. a permutation)."""
        offsets, index = take_rows(self.offsets, pick)
        return UserRows(self.user_idx[pick], offsets, self.items[index], self.values[index])

    @staticmethod
    def concat(parts: Sequence["UserRows"]) -> "UserRows":
        """Concatenate ``UserRows`` row-wise (e.g. those of several reader reads)."""
        if not parts:
            return UserRows(np.zeros(0, np.int64), np.zeros(1, np.int64),
                            np.zeros(0, np.int64), np.zeros(0, np.float32))
        shifts = offsets_of(np.array([p.offsets[-1] for p in parts], dtype=np.int64))[:-1]
        offsets = np.concatenate([np.zeros(1, np.int64)]
                                 + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return UserRows(np.concatenate([p.user_idx for p in parts]), offsets,
                        np.concatenate([p.items for p in parts]),
                        np.concatenate([p.values for p in parts]))


@dataclass(frozen=True)
class Batch:
    """One training batch scored against a target item set.

    Attributes
    ----------
    offsets : torch.Tensor of int64, shape (B + 1,)
        CSR offsets of the users' interactions.
    items : torch.Tensor of int64, shape (nnz,)
        Item id of each interaction (encoder input).
    values : torch.Tensor of float32, shape (nnz,)
        Value of each interaction.
    rows : torch.Tensor of int64, shape (nnz,)
        Row (user within the batch) of each interaction.
    target_items : torch.Tensor of int64, shape (T,), or None
        Sorted unique item ids the decoder scores; None scores the full catalogue.
    target_cols : torch.Tensor of int64, shape (nnz,)
        Output column of each interaction: its index in ``target_items``, or its item id
        when ``target_items`` is None.
    """

    offsets: torch.Tensor
    items: torch.Tensor
    values: torch.Tensor
    rows: torch.Tensor
    target_items: Optional[torch.Tensor]
    target_cols: torch.Tensor

    @property
    def num_users(self) -> int:
        """Number of users (rows) in the batch."""
        return self.offsets.numel() - 1

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Batch(**{name: None if t is None else t.to(device) for name, t in moved.items()})


def sample_targets(items: np.ndarray, num_items: int, num_neg_samples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Target item set: the union of ``items`` plus uniform negatives outside it.

    Parameters
    ----------
    items : np.ndarray of int
        Item ids of a group of users (duplicates allowed).
    num_items : int
        Catalogue size; ids lie in ``[0, num_items)``.
    num_neg_samples : int
        Number of extra distinct items drawn uniformly from the items *not* in the union,
        capped at how many exist (Recoder's ``num_neg_samples``).
    rng : np.random.Generator
        Source of randomness for the negatives.

    Returns
    -------
    np.ndarray of int64
        Sorted, unique target item ids.
    """
    if num_neg_samples < 0:
        raise ValueError(f"num_neg_samples must be >= 0, got {num_neg_samples} "
                         "(use full mode to score all items)")
    items = np.asarray(items, dtype=np.int64)
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"item ids must lie in [0, {num_items}), got range "
                         f"[{items.min()}, {items.max()}]")
    if _catalogue_is_small(num_items, len(items)):
        seen = np.zeros(num_items, dtype=bool)
        seen[items] = True
        union = np.flatnonzero(seen)
    else:
        union = np.unique(items)
    k = min(num_neg_samples, num_items - len(union))
    if k == 0:
        return union
    # Draw ranks among the non-union items, then map rank r to the r-th id not in the union:
    # union[j] - j counts the non-union ids below union[j] (non-decreasing in j).
    ranks = rng.choice(num_items - len(union), size=k, replace=False, shuffle=False)
    negatives = ranks + np.searchsorted(union - np.arange(len(union)), ranks, side="right")
    return np.sort(np.concatenate([union, negatives]))


def _catalogue_is_small(num_items: int, nnz: int) -> bool:
    """Whether arrays over the whole catalogue cost less than sorting/searching ``nnz`` ids
    (ML-20M's 27K items against a group's ~70K interactions: yes; 10M items: no)."""
    return num_items <= 4 * nnz


def _target_columns(targets: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Position of each of ``items`` in the sorted ``targets`` (which contain them all)."""
    if _catalogue_is_small(num_items, len(items)):
        position = np.empty(num_items, dtype=np.int64)
        position[targets] = np.arange(len(targets))
        return position[items]
    return np.searchsorted(targets, items)


def _to_batch(rows: UserRows, target_tensor: Optional[torch.Tensor], cols: np.ndarray) -> Batch:
    return Batch(offsets=torch.from_numpy(rows.offsets), items=torch.from_numpy(rows.items),
                 values=torch.from_numpy(rows.values), rows=torch.from_numpy(entry_rows(rows.offsets)),
                 target_items=target_tensor, target_cols=torch.from_numpy(cols))


def make_batches(rows: UserRows, batch_size: int, num_sampling_users: int, num_items: int,
                 num_neg_samples: int = 0, full: bool = False,
                 rng: Optional[np.random.Generator] = None) -> Iterator[Batch]:
    """Split ``rows`` into batches that share one target set per sampling group.

    Consecutive groups of ``num_sampling_users`` users get one target set (the union of the
    group's items plus ``num_neg_samples`` negatives, see :func:`sample_targets`); each group
    is sliced into batches of ``batch_size`` users that all hold that same tensor (Recoder,
    Moussawi 2018). ``rows`` yields ``ceil(len(rows) / batch_size)`` batches in order.

    Parameters
    ----------
    rows : UserRows
        Users to batch, in the order they are consumed.
    batch_size : int
        Users per batch (the last batch of the last group may be shorter).
    num_sampling_users : int
        Users per sampling group, a multiple of ``batch_size``; ``<= 0`` means ``batch_size``.
    num_items : int
        Catalogue size.
    num_neg_samples : int
        Extra random negatives per group.
    full : bool
        Score all items (``target_items`` None, ``target_cols`` = item ids), for comparison.
    rng : np.random.Generator, optional
        Randomness for the negatives; a fresh unseeded generator when omitted.

    Yields
    ------
    Batch
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sampling_users = batch_size if num_sampling_users <= 0 else num_sampling_users
    if sampling_users % batch_size:
        raise ValueError(f"num_sampling_users ({num_sampling_users}) must be a multiple of "
                         f"batch_size ({batch_size})")
    if full:
        if rows.items.size and (rows.items.min() < 0 or rows.items.max() >= num_items):
            raise ValueError(f"item ids must lie in [0, {num_items})")
        for start in range(0, len(rows), batch_size):
            batch = rows.slice(start, start + batch_size)
            yield _to_batch(batch, None, batch.items)
        return
    rng = np.random.default_rng() if rng is None else rng
    for group_start in range(0, len(rows), sampling_users):
        group = rows.slice(group_start, group_start + sampling_users)
        targets = sample_targets(group.items, num_items, num_neg_samples, rng)
        target_tensor = torch.from_numpy(targets)
        cols = _target_columns(targets, group.items, num_items)
        for start in range(0, len(group), batch_size):
            batch = group.slice(start, start + batch_size)
            yield _to_batch(batch, target_tensor, cols[group.offsets[start]:group.offsets[start] + len(batch.items)])


def retarget(batch: Batch, target_items: torch.Tensor) -> Batch:
    """Score ``batch`` against another sorted target set, e.g. the union over all ranks.

    Parameters
    ----------
    batch : Batch
        A batch whose interactions' items all appear in ``target_items``.
    target_items : torch.Tensor of int64, shape (T,)
        Sorted unique item ids.

    Returns
    -------
    Batch
        The same users with ``target_items`` replaced and ``target_cols`` recomputed.
    """
    target_items = target_items.to(torch.int64)
    if target_items.numel() > 1 and not bool((target_items[1:] > target_items[:-1]).all()):
        raise ValueError("retarget: target_items must be sorted and unique")
    cols = torch.searchsorted(target_items, batch.items)
    if target_items.numel():
        found = target_items[cols.clamp(max=target_items.numel() - 1)] == batch.items
    else:
        found = torch.zeros_like(batch.items, dtype=torch.bool)
    if not bool(found.all()):
        missing = torch.unique(batch.items[~found])
        raise ValueError(f"retarget: {missing.numel()} batch item(s) missing from target_items, "
                         f"e.g. {missing[:5].tolist()}; the target set must contain the union "
                         "of the batch's items")
    return dataclasses.replace(batch, target_items=target_items, target_cols=cols)
