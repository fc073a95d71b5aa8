"""The trained model's one home (``recoder_dist.trained``): the network of ``config.model``, its folder
format, and the item-id map read from a prepared dataset (no Spark, no MLflow)."""
from __future__ import annotations

import json
from dataclasses import asdict, fields

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.manifest import DatasetError
from recoder_dist.config import ModelConfig
from recoder_dist.trained import ITEMS, SPEC, WEIGHTS, ItemMap, TrainedModel, build_network

SETTINGS = ModelConfig(hidden_sizes=[6, 3], activation="relu", tied=True, input_dropout=0.25, bottleneck_dropout=0.1)


def test_the_network_takes_every_model_setting():
    network = build_network(11, SETTINGS, sparse=True)
    assert network.num_items == 11 and network.sparse
    for field in fields(ModelConfig):
        got = getattr(network, field.name)
        assert (list(got) if field.name == "hidden_sizes" else got) == getattr(SETTINGS, field.name), field.name
    assert not build_network(11, SETTINGS).sparse


def test_a_folder_written_by_hand_in_the_documented_format_loads(tmp_path):
    """The format earlier versions wrote (and registered models hold): plain state dict, JSON spec, item table."""
    torch.manual_seed(0)
    network = build_network(4, SETTINGS)
    torch.save(network.state_dict(), tmp_path / WEIGHTS)
    (tmp_path / SPEC).write_text(json.dumps({"num_items": 4, "model": asdict(SETTINGS)}))
    pd.DataFrame({"item_idx": np.arange(4, dtype=np.int32), "item_id": ["w", "x", "y", "z"],
                  "count": [3, 1, 4, 1]}).to_parquet(tmp_path / ITEMS, index=False)
    loaded = TrainedModel.load(tmp_path)
    assert loaded.settings == SETTINGS
    assert loaded.items.ids.tolist() == ["w", "x", "y", "z"] and loaded.items.counts.tolist() == [3, 1, 4, 1]
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name
    again = loaded.save(tmp_path / "again")
    assert json.loads((again / SPEC).read_text()) == json.loads((tmp_path / SPEC).read_text())
    assert pd.read_parquet(again / ITEMS).equals(pd.read_parquet(tmp_path / ITEMS))


def test_the_item_map_must_cover_the_networks_items():
    with pytest.raises(ValueError, match="scores 4 items but the item map has 3"):
        TrainedModel(build_network(4, SETTINGS), SETTINGS, ItemMap(["a", "b", "c"], [1, 1, 1]))
    with pytest.raises(ValueError, match="3 item ids but 2 counts"):
        ItemMap(["a", "b", "c"], [1, 1])


def write_items(folder, idx, ids, counts) -> None:
    folder.mkdir()
    pd.DataFrame({"item_idx": np.asarray(idx, dtype=np.int32), "item_id": ids,
                  "count": np.asarray(counts, dtype=np.int64)}).to_parquet(folder / "part-0.parquet", index=False)


def test_the_item_map_of_a_dataset_is_in_index_order(tmp_path):
    write_items(tmp_path / "items", [2, 0, 1], ["c", "a", "b"], [30, 10, 20])
    items = ItemMap.of_dataset(tmp_path)
    assert items.ids.tolist() == ["a", "b", "c"] and items.counts.tolist() == [10, 20, 30]


def test_an_item_table_with_a_gap_is_refused(tmp_path):
    write_items(tmp_path / "items", [0, 2], ["a", "c"], [1, 1])
    with pytest.raises(DatasetError, match=r"items: item_idx is not 0\.\.1 without gaps"):
        ItemMap.of_dataset(tmp_path)
