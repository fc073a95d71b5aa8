"""Seeded synthetic interactions with latent structure and Zipf-like item popularity.

Each user and item gets a latent factor vector; a user picks items with probability
proportional to ``popularity_j * exp(affinity_uj)`` (sampled without replacement with the
Gumbel top-k trick), and rates them higher the stronger the affinity. A model can therefore
learn something beyond popularity, and the rating threshold keeps the preferred items.

Scoring every item for every user costs users × items; for catalogues of a million items
``candidate_items`` = N makes each user score only N candidates drawn (with replacement) in
proportion to popularity, and pick among the distinct ones with ``log(times drawn)`` in place of
``log popularity`` in the key: the same rule, by importance sampling (close when N is large next
to what a user picks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import SyntheticConfig

COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def generate(config: SyntheticConfig, chunk_users: int = 2048) -> pd.DataFrame:
    """Interactions ``user_id, item_id, rating (1-5), timestamp`` as a DataFrame.

    Parameters
    ----------
    config : SyntheticConfig
        Sizes, latent dimension, Zipf exponent and seed; the same config gives the same rows.
    chunk_users : int
        Users scored at once (memory is ``chunk_users * num_items`` floats).
    """
    if config.num_users < 1 or config.num_items < 2:
        raise ValueError("synthetic data needs at least 1 user and 2 items")
    if config.candidate_items < 0 or config.candidate_items == 1:
        raise ValueError(f"synthetic.candidate_items must be 0 (score every item) or >= 2, "
                         f"got {config.candidate_items}")
    rng = np.random.default_rng(config.seed)
    f = config.num_factors
    users = rng.standard_normal((config.num_users, f)).astype(np.float32)
    items = rng.standard_normal((config.num_items, f)).astype(np.float32)
    ranks = rng.permutation(config.num_items) + 1
    log_popularity = (-config.zipf_exponent * np.log(ranks)).astype(np.float32)

    sigma = 0.8
    mu = np.log(max(config.mean_interactions, 1.0)) - sigma**2 / 2
    max_per_user = max(2, config.num_items // 2)
    counts = np.clip(np.rint(rng.lognormal(mu, sigma, config.num_users)), 2, max_per_user).astype(np.int64)

    popularity = np.exp(log_popularity, dtype=np.float64) if config.candidate_items else None
    if popularity is not None:
        popularity /= popularity.sum()

    parts = []
    for start in range(0, config.num_users, chunk_users):
        stop = min(start + chunk_users, config.num_users)
        row_n = counts[start:stop]
        if popularity is None:
            candidates = None
            affinity = users[start:stop] @ items.T / np.sqrt(f)
            prior = log_popularity
        else:
            candidates = np.sort(rng.choice(config.num_items, size=(stop - start, config.candidate_items),
                                            p=popularity), axis=1)
            first = np.ones(candidates.shape, dtype=bool)
            first[:, 1:] = candidates[:, 1:] != candidates[:, :-1]
            starts = np.flatnonzero(first)  # every row starts a run: runs never cross rows
            drawn = np.zeros(candidates.size, dtype=np.float32)
            drawn[starts] = np.diff(np.append(starts, candidates.size))
            affinity = np.einsum("uf,ucf->uc", users[start:stop], items[candidates]) / np.sqrt(f)
            # log(times drawn) for each distinct candidate, -inf for its repeats: the draw's
            # multiplicity stands in for popularity (E[times drawn] = N * popularity)
            with np.errstate(divide="ignore"):
                prior = np.log(drawn).reshape(candidates.shape)
            row_n = np.minimum(row_n, first.sum(axis=1))
        gumbel = -np.log(-np.log(rng.random(affinity.shape, dtype=np.float32) + 1e-12) + 1e-12)
        keys = prior + 1.5 * affinity + gumbel
        width = int(row_n.max())
        top = np.argpartition(-keys, width - 1, axis=1)[:, :width]
        if candidates is not None:  # best first, so that a row's first row_n are distinct items
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        keep = np.arange(width)[None, :] < row_n[:, None]
        user_ids = np.repeat(np.arange(start, stop), row_n)
        columns = top[keep]
        picked = affinity[np.repeat(np.arange(stop - start), row_n), columns]
        item_ids = columns if candidates is None else candidates[np.repeat(np.arange(stop - start), row_n), columns]
        noise = rng.normal(0, 0.5, picked.shape)
        ratings = np.clip(np.rint(3.0 + 1.2 * picked + noise), 1, 5)
        parts.append((user_ids, item_ids, ratings))

    user_ids = np.concatenate([p[0] for p in parts])
    item_ids = np.concatenate([p[1] for p in parts])
    ratings = np.concatenate([p[2] for p in parts])
    timestamps = 1_500_000_000 + rng.integers(0, 10**8, user_ids.size)
    return pd.DataFrame({"user_id": user_ids + 1, "item_id": item_ids + 1,
                         "rating": ratings.astype(np.float64), "timestamp": timestamps})


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as CSV (header) or Parquet, chosen by the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False, row_group_size=1_000_000)
    elif path.suffix in {".csv", ".tsv"}:
        frame.to_csv(tmp, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{path}: use a .csv, .tsv or .parquet file name")
    tmp.replace(path)
    return path
