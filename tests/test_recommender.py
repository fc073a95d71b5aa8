"""Recommender: the logic behind the MLflow model, on a tiny hand-built model (no MLflow, no Spark)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from recoder_dist.config import ModelConfig
from recoder_dist.models import RecoderAutoencoder
from recoder_dist.recommender import Recommender
from recoder_dist.trained import WEIGHTS, ItemMap, TrainedModel

ITEMS = ["a", "b", "c", "d", "e"]
COUNTS = np.array([5, 50, 10, 1, 20])  # popularity order: b, e, c, a, d
POPULAR = ["b", "e", "c", "a", "d"]
# Decoder item vectors with known cosines to "a": b 0.99, e 0.71, c 0, d -1.
VECTORS = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]
MODEL = ModelConfig(hidden_sizes=[2], activation="identity", input_dropout=0.0)


@pytest.fixture
def recommender() -> Recommender:
    torch.manual_seed(0)
    model = RecoderAutoencoder(len(ITEMS), hidden_sizes=MODEL.hidden_sizes, activation=MODEL.activation,
                               input_dropout=MODEL.input_dropout)
    with torch.no_grad():
        model.output_weight.copy_(torch.tensor(VECTORS))
        model.output_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, -0.1]))
    return Recommender(TrainedModel(model, MODEL, ItemMap(ITEMS, COUNTS)))


def model_ranking(recommender: Recommender, history: list[str], values: list[float] | None = None) -> list[str]:
    """Every item not in ``history`` ordered by the model's own logits (the reference)."""
    idx = torch.tensor([ITEMS.index(i) for i in history])
    vals = torch.tensor(values if values is not None else [1.0] * len(history))
    with torch.no_grad():
        logits = recommender.network(idx, vals, torch.tensor([0, len(history)]))[0]
    order = torch.argsort(logits, descending=True).tolist()
    return [ITEMS[i] for i in order if ITEMS[i] not in history]


def test_recommend_ranks_unseen_items_by_the_model(recommender):
    histories = [["a", "c"], ["b"], ["e", "d", "a"]]
    result = recommender.recommend(histories, k=2)
    assert result.items == [model_ranking(recommender, h)[:2] for h in histories]
    for history, items in zip(histories, result.items):
        assert not set(items) & set(history)
    assert result.unknown == [0, 0, 0]
    assert all(s[0] >= s[1] for s in result.scores)


def test_unknown_ids_are_ignored_and_counted(recommender):
    result = recommender.recommend([["a", "zzz", "yyy"], ["a"], ["nope"]], k=3)
    assert result.unknown == [2, 0, 1]
    assert result.items[0] == result.items[1]
    assert result.scores[0] == result.scores[1]
    assert result.items[2] == POPULAR[:3]  # nothing known: like an empty history
    numeric = Recommender(TrainedModel(recommender.network, MODEL, ItemMap(["1", "2", "3", "4", "5"], COUNTS)))
    assert numeric.recommend([[1, 3]], k=3).items == numeric.recommend([["1", "3"]], k=3).items


def test_empty_history_gets_the_most_popular_items(recommender):
    result = recommender.recommend([[], None], k=3)
    assert result.items == [POPULAR[:3], POPULAR[:3]]
    assert result.scores[0] == pytest.approx([1.0, 0.4, 0.2])
    assert result.unknown == [0, 0]


def test_k_is_respected(recommender):
    assert [len(r) for r in recommender.recommend([["a"], []], k=2).items] == [2, 2]
    assert recommender.recommend([["a", "b"]], k=10).items == [model_ranking(recommender, ["a", "b"])]
    assert len(recommender.recommend([["a", "b"]], k=10).items[0]) == 3  # all unseen items, no more
    assert recommender.recommend([ITEMS], k=5).items == [[]]
    for k in (0, -1, 2.5, True):
        for method in (recommender.recommend, recommender.similar):
            with pytest.raises(ValueError, match=f"k must be an integer >= 1 .*, got {k!r}"):
                method([["a"]], k=k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_values_must_be_finite(recommender, bad):
    with pytest.raises(ValueError, match=rf"row 1: values must be finite numbers, got {bad!r}"):
        recommender.recommend([["a"], ["a", "c"]], k=2, values=[[1.0], [1.0, bad]])


def test_values_are_optional(recommender):
    ones = recommender.recommend([["a", "c"]], k=3, values=[[1.0, 1.0]])
    plain = recommender.recommend([["a", "c"]], k=3)
    assert (ones.items, ones.scores) == (plain.items, plain.scores)
    weighted = recommender.recommend([["a", "c"], ["a"]], k=3, values=[[1.0, 5.0], None])
    assert weighted.items[0] == model_ranking(recommender, ["a", "c"], [1.0, 5.0])[:3]
    assert weighted.scores[0] != plain.scores[0]
    assert weighted.items[1] == recommender.recommend([["a"]], k=3).items[0]
    with pytest.raises(ValueError, match="row 0: 2 items but 1 values"):
        recommender.recommend([["a", "c"]], values=[[1.0]])


def test_a_repeated_id_counts_once(recommender):
    assert recommender.recommend([["a", "a", "c"]], k=3).items == recommender.recommend([["a", "c"]], k=3).items


def test_similar_excludes_the_query_and_ranks_by_cosine(recommender):
    result = recommender.similar([["a"], ["a", "c"], ["zzz"]], k=4)
    assert result.items[0] == ["b", "e", "c", "d"]
    norm = np.sqrt(0.9**2 + 0.1**2)
    assert result.scores[0] == pytest.approx([0.9 / norm, np.sqrt(0.5), 0.0, -1.0], abs=1e-6)
    assert result.items[1] == ["e", "b", "d"]  # "a" and "c" excluded; e lies between them
    assert result.items[2] == POPULAR[:4] and result.unknown == [0, 0, 1]
    assert recommender.similar([["a"]], k=2).items == [["b", "e"]]


def test_save_and_load_give_identical_outputs(recommender, tmp_path):
    saved = recommender.model.save(tmp_path / "rec")
    loaded = Recommender(TrainedModel.load(saved))
    histories = [["a", "c"], [], ["b", "zzz"], ["d"]]
    for method in ("recommend", "similar"):
        before, after = getattr(recommender, method)(histories, k=3), getattr(loaded, method)(histories, k=3)
        assert (before.items, before.scores, before.unknown) == (after.items, after.scores, after.unknown)
    assert loaded.item_ids.tolist() == ITEMS
    assert loaded.model.items.counts.tolist() == COUNTS.tolist()
    assert loaded.model.settings == MODEL
    for name, tensor in recommender.network.state_dict().items():
        assert torch.equal(tensor, loaded.network.state_dict()[name]), name


class _Planted:
    """Unpickling this runs ``os.mkdir(path)``: what a tampered weights file could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_load_refuses_weights_that_are_not_plain_tensors(recommender, tmp_path):
    saved = recommender.model.save(tmp_path / "rec")
    marker = tmp_path / "code-ran"
    torch.save({**recommender.network.state_dict(), "extra": _Planted(str(marker))}, saved / WEIGHTS)
    with pytest.raises(pickle.UnpicklingError):
        TrainedModel.load(saved)
    assert not marker.exists()


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_scoring_in_item_chunks_answers_as_one_block(recommender, chunk):
    chunked = Recommender(recommender.model, item_chunk=chunk)
    histories = [["a"], ["b", "e"], [], ["zzz"], ITEMS[:4]]
    for method in ("recommend", "similar"):
        whole, parts = getattr(recommender, method)(histories, k=4), getattr(chunked, method)(histories, k=4)
        assert parts.items == whole.items and parts.unknown == whole.unknown, method
        assert np.allclose(np.concatenate(parts.scores), np.concatenate(whole.scores)), method
