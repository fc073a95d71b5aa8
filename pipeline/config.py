"""The settings of the data side: how the prepare job reads, filters, splits and lays out raw
interactions (part of the prepared-data contract: the manifest records them), and how the
synthetic generator draws the embedded default dataset.

Plain dataclasses, free of Spark, torch and ``recoder_dist``: ``recoder_dist.config`` composes
them into the one run configuration and loads them from ``conf/*.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DUPLICATES = ("sum", "max", "last")  # prepare.duplicates: how pipeline.transform.merge_duplicates merges a pair


@dataclass
class SyntheticConfig:
    """Generator of the embedded default dataset: latent user/item factors, Zipf popularity."""

    num_users: int = 3000
    num_items: int = 1000
    mean_interactions: float = 40.0
    num_factors: int = 16
    zipf_exponent: float = 1.0
    seed: int = 7
    # 0: every user scores the whole catalogue (cost users x items); N > 0: each user scores N
    # candidates drawn by popularity (cost users x N; for catalogues of a million items and more)
    candidate_items: int = 0


@dataclass
class PrepareConfig:
    """How ``jobs/prepare.py`` reads, filters, indexes and splits raw interactions."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    value_col: Optional[str] = "rating"
    timestamp_col: Optional[str] = "timestamp"
    csv_delimiter: str = ","
    csv_header: bool = True
    rating_threshold: Optional[float] = None  # keep value > threshold (Liang et al.: 3.5)
    binarize: bool = False  # replace kept values by 1.0
    duplicates: str = "sum"  # how repeated (user, item) pairs merge: one of DUPLICATES
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    max_filter_rounds: int = 50
    validation_users: float = 0.1  # in (0, 1): fraction of users (at least one user); >= 1: a whole count
    test_users: float = 0.1
    heldout_fraction: float = 0.2
    max_ranks: int = 64  # train row groups: max_ranks × (1 to row_groups_per_rank) ...
    row_groups_per_rank: int = 4
    min_rows_per_group: int = 500  # ... fewer per rank while groups would be smaller than this
    max_rows_per_group: int = 10000
    seed: int = 98765
