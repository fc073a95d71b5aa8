import math

import numpy as np
import pytest
import torch

from recoder_dist.metrics import (evaluate_batch, ndcg_at_k, popularity_scores, recall_at_k,
                                  top_k)


def test_top_k_masks_foldin_and_keeps_scores():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2],
                           [0.0, 0.5, 0.4, 0.9, 0.6, 0.8]])
    before = scores.clone()
    # user 0 folded in item 0, user 1 items 3 and 5
    top = top_k(scores, torch.tensor([0, 1, 1]), torch.tensor([0, 3, 5]), k=3)
    assert top.tolist() == [[2, 4, 3], [4, 1, 2]]
    assert torch.equal(scores, before)
    assert top_k(scores, [], [], k=99).shape == (2, 6)


# ranked lists from the test above: user 0 [2, 4, 3], user 1 [4, 1, 2], user 2 has none held out
TOP = np.array([[2, 4, 3], [4, 1, 2], [0, 1, 2]])
HELDOUT_OFFSETS = np.array([0, 2, 3, 3])
HELDOUT_ITEMS = np.array([3, 1, 2])  # user 0 {3, 1}, user 1 {2}


def test_recall_hand_cases():
    # user 0: item 3 at rank 2 -> 1 hit / min(3, 2); user 1: item 2 at rank 2 -> 1 / min(3, 1)
    r3 = recall_at_k(TOP, HELDOUT_OFFSETS, HELDOUT_ITEMS, 3)
    assert r3[:2].tolist() == [0.5, 1.0] and math.isnan(r3[2])
    r2 = recall_at_k(TOP, HELDOUT_OFFSETS, HELDOUT_ITEMS, 2)
    assert r2[:2].tolist() == [0.0, 0.0]
    # 4 held out, 1 hit in the top 2 -> 1 / min(2, 4) = 0.5 (not 1 / 4)
    assert recall_at_k(np.array([[9, 5, 6]]), np.array([0, 4]), np.array([5, 1, 2, 3]),
                       2).tolist() == [0.5]


def test_ndcg_hand_cases():
    n3 = ndcg_at_k(TOP, HELDOUT_OFFSETS, HELDOUT_ITEMS, 3)
    # user 0: DCG = 1/log2(4) = 0.5, IDCG over 2 hits = 1 + 1/log2(3) = 1.63093
    assert n3[0] == pytest.approx(0.5 / (1 + 1 / math.log2(3)))
    assert n3[0] == pytest.approx(0.30657, abs=1e-5)
    # user 1: DCG = 0.5, IDCG over 1 hit = 1
    assert n3[1] == pytest.approx(0.5)
    assert math.isnan(n3[2])
    # perfect ranking -> 1; 4 held out but k = 2 -> IDCG over 2 positions
    assert ndcg_at_k(np.array([[5, 1, 9]]), np.array([0, 4]), np.array([5, 1, 2, 3]),
                     2).tolist() == [pytest.approx(1.0)]


def test_evaluate_batch_top100_hand_case():
    n_items = 150
    scores = -torch.arange(n_items, dtype=torch.float32).repeat(3, 1)  # item 0 best
    # every user folded in items 0 and 1, so the ranking is 2, 3, ..., 101, ...: rank = item - 2
    foldin_rows = torch.tensor([0, 0, 1, 1, 2, 2])
    foldin_cols = torch.tensor([0, 1, 0, 1, 0, 1])
    # user 0 holds out {2, 30, 60, 140} (ranks 0, 28, 58, 138), user 1 nothing, user 2 {101}
    offsets = np.array([0, 4, 4, 5])
    heldout = np.array([2, 30, 60, 140, 101])
    out = evaluate_batch(scores, foldin_rows, foldin_cols, offsets, heldout)
    assert set(out) == {"recall_at_20", "recall_at_50", "ndcg_at_100"}
    assert out["recall_at_20"][0] == pytest.approx(1 / 4)
    assert out["recall_at_50"][0] == pytest.approx(2 / 4)
    dcg = 1 / math.log2(2) + 1 / math.log2(30) + 1 / math.log2(60)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    assert out["ndcg_at_100"][0] == pytest.approx(dcg / idcg)
    assert all(math.isnan(v[1]) for v in out.values())
    assert out["recall_at_20"][2] == 0.0 and out["recall_at_50"][2] == 0.0
    assert out["ndcg_at_100"][2] == pytest.approx(1 / math.log2(101))  # rank 99


def test_popularity_baseline():
    scores = popularity_scores(np.array([5, 1, 3, 0]), num_users=2)
    assert scores.shape == (2, 4)
    top = top_k(scores, torch.tensor([0]), torch.tensor([0]), k=2)
    assert top.tolist() == [[2, 1], [0, 2]]


def test_heldout_offsets_must_match_users():
    with pytest.raises(ValueError, match="heldout_offsets has 2 entries for 3 users"):
        recall_at_k(TOP, np.array([0, 1]), np.array([3]), 3)
