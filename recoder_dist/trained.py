"""The trained model: the autoencoder, the settings it was built from and its item-id map, in one object.

The one home of the model's life outside training: :func:`build_network` makes the network of
``config.model`` (for the trainer and for loading alike); :class:`TrainedModel` carries its weights
with the :class:`ItemMap` (original item ids in index order, train counts) from ``trainer.fit`` to
tracking, the registered MLflow model and the recommender, and saves and loads them as a folder:

- ``weights.pt``: the network's state dict, plain tensors (read with ``weights_only=True``: a
  tampered file raises ``pickle.UnpicklingError`` instead of running code);
- ``model.json``: ``{"num_items": N, "model": {config.model's keys}}``;
- ``items.parquet``: ``item_idx``, ``item_id``, ``count``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from pipeline.manifest import DatasetError
from recoder_dist.config import ModelConfig
from recoder_dist.models import RecoderAutoencoder

WEIGHTS = "weights.pt"
ITEMS = "items.parquet"
SPEC = "model.json"


def build_network(num_items: int, settings: ModelConfig, sparse: bool = False) -> RecoderAutoencoder:
    """The autoencoder of ``settings`` (``config.model``: its keys are the network's own settings) for a
    catalogue of ``num_items``; ``sparse``: row-sparse item gradients (a training choice, see
    :class:`~recoder_dist.models.RecoderAutoencoder`)."""
    values = asdict(settings)
    values["hidden_sizes"] = [int(h) for h in values["hidden_sizes"]]
    return RecoderAutoencoder(num_items, **values, sparse=sparse)


@dataclass(frozen=True, eq=False)
class ItemMap:
    """The catalogue's original item ids in index order (entry ``i`` is item index ``i``) and each
    item's train count, as the prepared dataset's ``items`` table holds them (lightfm's mapping)."""

    ids: np.ndarray  # object array of str
    counts: np.ndarray  # int64

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray(self.ids, dtype=object))
        object.__setattr__(self, "counts", np.asarray(self.counts, dtype=np.int64))
        if len(self.ids) != len(self.counts):
            raise ValueError(f"{len(self.ids)} item ids but {len(self.counts)} counts")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of_dataset(cls, data_dir: Union[str, Path]) -> "ItemMap":
        """The item table of a prepared dataset (``DATA/items``), ordered by ``item_idx``."""
        path = Path(data_dir) / "items"
        items = pq.read_table(path, columns=["item_idx", "item_id", "count"]).to_pandas().sort_values("item_idx")
        if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
            raise DatasetError(f"{path}: item_idx is not 0..{len(items) - 1} without gaps; prepare the dataset again")
        return cls(items["item_id"].astype(str).tolist(), items["count"].to_numpy())

    def write(self, path: Path) -> None:
        pd.DataFrame({"item_idx": np.arange(len(self), dtype=np.int32), "item_id": self.ids.astype(str),
                      "count": self.counts}).to_parquet(path, index=False)

    @classmethod
    def read(cls, path: Path) -> "ItemMap":
        """Inverse of :meth:`write`."""
        items = pq.read_table(path).to_pandas().sort_values("item_idx")
        return cls(items["item_id"].tolist(), items["count"].to_numpy())


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A network with the settings it was built from and the ids of its items."""

    network: RecoderAutoencoder
    settings: ModelConfig
    items: ItemMap

    def __post_init__(self) -> None:
        if self.network.num_items != len(self.items):
            raise ValueError(f"the network scores {self.network.num_items} items but the item map has "
                             f"{len(self.items)}")

    def save(self, directory: Path) -> Path:
        """Write the folder described in the module docstring; returns ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, directory / WEIGHTS)
        (directory / SPEC).write_text(json.dumps({"num_items": self.network.num_items,
                                                  "model": asdict(self.settings)}))
        self.items.write(directory / ITEMS)
        return directory

    @classmethod
    def load(cls, directory: Path) -> "TrainedModel":
        """Inverse of :meth:`save`, on the CPU; the weights load with ``weights_only=True`` (no arbitrary
        unpickling)."""
        spec = json.loads((directory / SPEC).read_text())
        settings = ModelConfig(**spec["model"])
        network = build_network(int(spec["num_items"]), settings)
        network.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
        return cls(network, settings, ItemMap.read(directory / ITEMS))
