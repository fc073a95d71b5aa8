import math

import numpy as np
import pytest
import torch

from recoder_dist.evaluation import model_scorer
from recoder_dist.metrics import (ItemScores, evaluate_batch, ndcg_at_k, popularity_scores, recall_at_k,
                                  top_k, top_k_blocks)
from recoder_dist.models import RecoderAutoencoder


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


def reference_top_k(scores: np.ndarray, rows, cols, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-catalogue ranking by (score descending, item id ascending), excluded entries -inf."""
    masked = scores.astype(np.float32).copy()
    masked[rows, cols] = -np.inf
    order = np.stack([np.lexsort((np.arange(masked.shape[1]), -row)) for row in masked])[:, :k]
    return np.take_along_axis(masked, order, axis=1), order


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 64])
def test_chunked_top_k_equals_full_top_k_ties_to_the_lower_id(chunk):
    rng = np.random.default_rng(chunk)
    scores = rng.integers(-3, 4, size=(6, 50)).astype(np.float32)  # many ties, negatives, zeros
    scores[0, ::2] = -0.0  # -0.0 ties with 0.0
    scores[1, :] = 1.5  # one row all tied
    rows, cols = np.repeat(np.arange(6), 5), rng.integers(0, 50, size=30)
    values, items = top_k_blocks(ItemScores.of(torch.from_numpy(scores)), rows, cols, 20, item_chunk=chunk)
    expected_values, expected_items = reference_top_k(scores, rows, cols, 20)
    assert items.tolist() == expected_items.tolist()
    assert values.numpy().tolist() == expected_values.tolist()
    assert items[1].tolist() == sorted(set(range(50)) - set(cols[rows == 1]))[:20]


def test_top_k_is_capped_and_keeps_excluded_items_last():
    scores = torch.tensor([[0.5, 0.1, 0.9]])
    values, items = top_k_blocks(ItemScores.of(scores), [0], [2], 10, item_chunk=2)
    assert items.tolist() == [[0, 1, 2]] and values[0, 2] == float("-inf")


def test_model_scores_in_blocks_match_the_full_forward_and_rank_alike():
    torch.manual_seed(0)
    model = RecoderAutoencoder(37, (8, 4)).eval()
    with torch.no_grad():
        model.output_bias.normal_()
        items, values, offsets = torch.tensor([1, 4, 7, 0, 36, 20]), torch.ones(6), torch.tensor([0, 3, 5, 6])
        full = model(items, values, offsets, None)
        blocks = model_scorer(model)(items, values, offsets)
        assert blocks.num_items == 37
        torch.testing.assert_close(torch.cat([blocks.block(s, min(s + 5, 37)) for s in range(0, 37, 5)], 1), full)
        rows = torch.repeat_interleave(torch.arange(3), offsets.diff())
        heldout_offsets, heldout = np.array([0, 2, 3, 5]), np.array([2, 30, 5, 9, 11])
        one_block = evaluate_batch(ItemScores.of(torch.cat([blocks.block(0, 37)], 1)), rows, items,
                                   heldout_offsets, heldout, recall_ks=(5,), ndcg_ks=(10,), item_chunk=37)
        for chunk in (1, 4, 16):
            chunked = evaluate_batch(blocks, rows, items, heldout_offsets, heldout, recall_ks=(5,), ndcg_ks=(10,),
                                     item_chunk=chunk)
            assert {k: v.tolist() for k, v in chunked.items()} == {k: v.tolist() for k, v in one_block.items()}
