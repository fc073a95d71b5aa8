"""Everything Horovod: ranks, collectives, and the three ways to exchange item-table gradients.

The rest of the trainer only calls :class:`Workers`; models, sampling, losses and metrics know
nothing of ranks. Without ``horovodrun`` Horovod initialises a single rank, so the same code
trains in one process.

Item tables (encoder embedding rows, decoder rows and biases) are touched only at the batch's
target items, so their gradients can move in three ways (``train.grad_exchange``):

``dense``
    allreduce the whole ``n_items × h`` tables, like any other parameter.
``sparse``
    allgather each rank's own target rows and their gradients, then sum them locally:
    traffic grows with the number of ranks.
``sync_union``
    before the forward pass, allgather the ranks' target item ids; every rank scores the same
    global union U, and only the ``|U| × h`` rows are allreduced: traffic independent of the
    catalogue's size (Recoder's ``num_sampling_users`` = batch_size × ranks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import horovod.torch as hvd
import torch

EXCHANGES = ("dense", "sparse", "sync_union")


@dataclass(frozen=True)
class Workers:
    """This process's place among the Horovod ranks and the collectives the trainer uses."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @classmethod
    def start(cls) -> "Workers":
        """Initialise Horovod (gloo on CPU, NCCL for GPU tensors when built with it)."""
        hvd.init()
        return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())

    @property
    def is_root(self) -> bool:
        """Rank 0 logs, checkpoints and talks to MLflow."""
        return self.rank == 0

    def device(self) -> torch.device:
        """The GPU of this local rank when there is one, else the CPU."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def default_threads(self) -> int:
        """CPU threads per rank: the cores shared among the ranks of this host."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Make every rank hold rank 0's parameters."""
        if self.size > 1:
            hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Rank 0's Python object on every rank (``name`` must be the same on all ranks:
        Horovod matches collectives by name, and its default is the object's type)."""
        return hvd.broadcast_object(obj, root_rank=0, name=name) if self.size > 1 else obj

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks."""
        return hvd.allreduce(values, op=hvd.Sum) if self.size > 1 else values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks."""
        return hvd.allreduce(values, op=hvd.Max) if self.size > 1 else values

    def global_union(self, target_items: torch.Tensor) -> torch.Tensor:
        """Sorted union of every rank's target item ids (``sync_union``)."""
        if self.size == 1:
            return target_items
        return torch.unique(hvd.allgather(target_items.cpu())).to(target_items.device)

    def exchange_gradients(self, model: torch.nn.Module, item_names: set[str], mode: str,
                           target_items: Optional[torch.Tensor]) -> int:
        """Average gradients over ranks; returns the bytes this rank sent.

        ``target_items`` are the rows of the item tables this step touched (None: all).
        """
        if self.size == 1:
            return 0
        named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        items = [(n, p) for n, p in named if n in item_names]
        dense = [p for n, p in named if n not in item_names]
        if mode == "dense" or target_items is None:
            dense += [p for _, p in items]
            items = []
        sent = _allreduce_average([p.grad for p in dense])
        if not items:
            return sent
        rows = target_items.to(items[0][1].grad.device)
        if mode == "sync_union":
            blocks = [p.grad.index_select(0, rows) for _, p in items]
            sent += _allreduce_average(blocks)
            for (_, p), block in zip(items, blocks):
                p.grad.index_copy_(0, rows, block)
            return sent
        if mode != "sparse":
            raise ValueError(f"unknown gradient exchange {mode!r}; choose one of {', '.join(EXCHANGES)}")
        all_rows = hvd.allgather(rows)
        for _, p in items:
            block = p.grad.index_select(0, rows)
            gathered = hvd.allgather(block)
            sent += block.numel() * block.element_size() + rows.numel() * rows.element_size()
            p.grad.zero_()
            p.grad.index_add_(0, all_rows, gathered)
            p.grad.div_(self.size)
        return sent


def _allreduce_average(tensors: list[torch.Tensor]) -> int:
    """In-place average of ``tensors`` over ranks in one grouped call; bytes sent."""
    if not tensors:
        return 0
    for tensor, reduced in zip(tensors, hvd.grouped_allreduce(tensors, op=hvd.Average)):
        tensor.copy_(reduced)
    return sum(t.numel() * t.element_size() for t in tensors)
