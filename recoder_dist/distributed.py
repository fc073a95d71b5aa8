"""Ranks and collectives: the one module that knows how the training processes talk.

The rest of the trainer only calls :class:`Workers`; models, sampling, losses and metrics know
nothing of ranks. :meth:`Workers.start` picks a backend from how the process was launched
(:func:`launched_by`):

``horovod``
    under ``horovodrun`` (``HOROVOD_RANK``…) or ``mpirun`` (``OMPI_COMM_WORLD_RANK`` / ``PMI_RANK``):
    Horovod's collectives (gloo or MPI on CPU, NCCL for GPU tensors when built with it).
``torchrun``
    under ``torchrun`` (also what Spark's ``TorchDistributor`` starts: ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): ``torch.distributed``
    with gloo on CPU, NCCL on GPUs.
``none``
    one process: every collective is the identity and neither library is initialised (Horovod is
    not even imported).

Both backends implement the same four primitives (:class:`_Backend`); broadcasts, reductions,
the target-set union and the three gradient exchanges are written once, over them, in
:class:`Workers`.

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

import atexit
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

import torch

from recoder_dist.optim import touched_rows

EXCHANGES = ("dense", "sparse", "sync_union")
LAUNCHERS = ("horovod", "torchrun", "none")

_HOROVOD_MARKERS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by(environ: Mapping[str, str]) -> str:
    """Which launcher started this process, from its environment: one of :data:`LAUNCHERS`.

    Raises ValueError when the variables are contradictory (both launchers') or incomplete
    (some of torchrun's but not all), naming them."""
    horovod = [name for name in _HOROVOD_MARKERS if name in environ]
    torchrun = [name for name in _TORCHRUN_VARIABLES if name in environ]
    if horovod and "RANK" in torchrun:
        raise ValueError(f"both Horovod's ({', '.join(horovod)}) and torchrun's (RANK) variables are set: "
                         f"launch with horovodrun or with torchrun, not both")
    if horovod:
        return "horovod"
    if "RANK" in torchrun or "WORLD_SIZE" in torchrun:
        missing = [name for name in _TORCHRUN_VARIABLES if name not in environ]
        if missing:
            raise ValueError(f"RANK/WORLD_SIZE are set but not {', '.join(missing)}: start the ranks with "
                             f"torchrun (or set all of {', '.join(_TORCHRUN_VARIABLES)})")
        return "torchrun"
    return "none"


class _Backend(Protocol):
    """The primitives a collective library must provide; every call is made by all ranks in
    the same order. Tensors may be on any device: a backend moves them where it communicates."""

    def broadcast_(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Overwrite each tensor in place with rank 0's."""

    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Rank 0's picklable object."""

    def allreduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """A new tensor: the elementwise ``"sum"`` or ``"max"`` over ranks."""

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor in place by its mean over ranks, in one grouped exchange."""

    def allgather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor concatenated over ranks along dim 0, in rank order; the tensors of one
        call share their first dimension on a rank, which may differ between ranks."""


class _Horovod:
    """The primitives over ``horovod.torch`` (initialised here)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.place = (hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())

    def broadcast_(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.hvd.broadcast_parameters(dict(tensors), root_rank=0)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        # Horovod matches collectives by name (its default is the object's type, which differs
        # between rank 0's object and the others' None)
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def allreduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op={"sum": self.hvd.Sum, "max": self.hvd.Max}[op])

    def average_(self, tensors: list[torch.Tensor]) -> None:
        for tensor, reduced in zip(tensors, self.hvd.grouped_allreduce(tensors, op=self.hvd.Average)):
            tensor.copy_(reduced)

    def allgather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.hvd.allgather(t) for t in tensors]  # Horovod gathers unequal first dimensions itself


class _TorchDistributed:
    """The primitives over ``torch.distributed`` (the process group initialised here from
    torchrun's environment): gloo on CPU, NCCL on GPUs."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        import torch.distributed as dist

        self.dist = dist
        rank, size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank, local_size = int(environ["LOCAL_RANK"]), int(environ["LOCAL_WORLD_SIZE"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
            dist.init_process_group("nccl", rank=rank, world_size=size, device_id=self.device)
        else:
            self.device = torch.device("cpu")
            dist.init_process_group("gloo", rank=rank, world_size=size)
        atexit.register(dist.destroy_process_group)
        self.place = (rank, size, local_rank, local_size)
        self.size = size

    def broadcast_(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for tensor in tensors.values():
            moved = tensor.to(self.device)
            self.dist.broadcast(moved, src=0)
            if moved is not tensor:
                tensor.copy_(moved)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)  # matched by call order; ``name`` is Horovod's
        return box[0]

    def allreduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        out = tensor.to(self.device, copy=True)
        self.dist.all_reduce(out, op={"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX}[op])
        return out.to(tensor.device)

    def average_(self, tensors: list[torch.Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():  # one flat buffer per dtype: one allreduce, like Horovod's fusion
            flat = torch.cat([t.reshape(-1).to(self.device) for t in group])
            self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
            flat.div_(self.size)
            for tensor, part in zip(group, flat.split([t.numel() for t in group])):
                tensor.copy_(part.view_as(tensor))

    def allgather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # all_gather needs equal shapes: gather the first dimensions, pad to the longest, trim
        rows = {t.shape[0] for t in tensors}
        if len(rows) != 1:
            raise ValueError(f"allgather: tensors of one call must share their first dimension, got {sorted(rows)}")
        mine = torch.tensor([rows.pop()], dtype=torch.int64, device=self.device)
        counts = [torch.empty_like(mine) for _ in range(self.size)]
        self.dist.all_gather(counts, mine)
        counts = [int(c) for c in counts]
        longest = max(counts)
        gathered = []
        for tensor in tensors:
            padded = tensor.new_zeros((longest, *tensor.shape[1:]), device=self.device)
            padded[:tensor.shape[0]] = tensor
            parts = [torch.empty_like(padded) for _ in range(self.size)]
            self.dist.all_gather(parts, padded)
            gathered.append(torch.cat([p[:n] for p, n in zip(parts, counts)]).to(tensor.device))
        return gathered


@dataclass(frozen=True)
class Workers:
    """This process's place among the ranks and the collectives the trainer uses.

    ``Workers(rank=0, size=1, local_rank=0, local_size=1)`` is one process (no backend needed);
    :meth:`start` builds the right one for how the process was launched."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    backend: Optional[_Backend] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size > 1 and self.backend is None:
            raise ValueError(f"Workers of {self.size} ranks need a backend: use Workers.start()")

    @classmethod
    def start(cls, environ: Optional[Mapping[str, str]] = None) -> "Workers":
        """Join the ranks this process was launched among (see :func:`launched_by`); one
        process when it was started without horovodrun or torchrun."""
        environ = os.environ if environ is None else environ
        launcher = launched_by(environ)
        if launcher == "none":
            return cls(0, 1, 0, 1)
        backend = _Horovod() if launcher == "horovod" else _TorchDistributed(environ)
        return cls(*backend.place, backend=backend)

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
        """Make every rank hold rank 0's parameters and buffers."""
        if self.size > 1:
            self.backend.broadcast_(model.state_dict())

    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Rank 0's Python object on every rank (``name`` must be the same on all ranks)."""
        return self.backend.broadcast_object(obj, name) if self.size > 1 else obj

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks."""
        return self.backend.allreduce(values, "sum") if self.size > 1 else values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks."""
        return self.backend.allreduce(values, "max") if self.size > 1 else values

    def global_union(self, target_items: torch.Tensor) -> torch.Tensor:
        """Sorted union of every rank's target item ids (``sync_union``)."""
        if self.size == 1:
            return target_items
        gathered, = self.backend.allgather([target_items.cpu()])
        return torch.unique(gathered).to(target_items.device)

    def exchange_gradients(self, model: torch.nn.Module, item_names: set[str], mode: str,
                           target_items: Optional[torch.Tensor]) -> int:
        """Average gradients over ranks; returns the bytes this rank sent.

        ``target_items`` are the rows of the item tables this step touched (None: all). Row-sparse
        item gradients (sparse COO, ``RecoderAutoencoder(sparse=True)``) stay row-sparse and move
        as rows in every mode (:meth:`_exchange_rows`); dense ones move as described above.
        """
        if mode not in EXCHANGES:
            raise ValueError(f"unknown gradient exchange {mode!r}; choose one of {', '.join(EXCHANGES)}")
        if self.size == 1:
            return 0
        named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        row_sparse = [p for n, p in named if n in item_names and p.grad.is_sparse]
        items = [p for n, p in named if n in item_names and not p.grad.is_sparse]
        dense = [p for n, p in named if n not in item_names]
        if mode == "dense" or target_items is None:
            dense += items
            items = []
        sent = self._average([p.grad for p in dense]) + self._exchange_rows(row_sparse, mode, target_items)
        if not items:
            return sent
        rows = target_items.to(items[0].grad.device)
        blocks = [p.grad.index_select(0, rows) for p in items]
        if mode == "sync_union":  # every rank holds the same rows: average them like dense tensors
            sent += self._average(blocks)
            for p, block in zip(items, blocks):
                p.grad.index_copy_(0, rows, block)
            return sent
        all_rows, *gathered = self.backend.allgather([rows, *blocks])  # sparse: each rank's own rows
        for p, block, received in zip(items, blocks, gathered):
            sent += block.numel() * block.element_size() + rows.numel() * rows.element_size()
            p.grad.zero_()
            p.grad.index_add_(0, all_rows, received)
            p.grad.div_(self.size)
        return sent

    def _exchange_rows(self, params: list[torch.nn.Parameter], mode: str,
                       target_items: Optional[torch.Tensor]) -> int:
        """Average row-sparse gradients over ranks, keeping them row-sparse; bytes sent.

        ``sparse``: allgather each rank's rows and values, sum duplicates (traffic grows with the
        ranks). ``dense`` and ``sync_union``: each table's rows scattered into a block over the union
        of the rows the ranks touched (ids allgathered first; under ``sync_union`` the decoder's rows
        are the shared target set U already), blocks averaged in one grouped allreduce: ``≤ |U| × h``
        each. No mode builds an ``n_items × h`` tensor, and every rank ends with the same rows.
        """
        if not params:
            return 0
        sent = 0
        touched = [touched_rows(p.grad) for p in params]
        if mode == "sparse":
            for p, (rows, values) in zip(params, touched):
                all_rows, all_values = self.backend.allgather([rows, values])
                sent += rows.numel() * rows.element_size() + values.numel() * values.element_size()
                p.grad = _row_gradient(p, all_rows, all_values.div_(self.size)).coalesce()
            return sent
        unions = []
        for rows, _ in touched:
            if mode == "sync_union" and target_items is not None and torch.equal(rows, target_items.to(rows.device)):
                unions.append(target_items.to(rows.device))  # the decoder's rows: U itself, on every rank
            else:  # the rows some rank touched (the encoder's: the ranks' batch items)
                gathered, = self.backend.allgather([rows])
                unions.append(torch.unique(gathered))
                sent += rows.numel() * rows.element_size()
        blocks = []
        for (rows, values), union in zip(touched, unions):
            block = values.new_zeros((union.numel(), values.shape[1]))
            block[torch.searchsorted(union, rows.contiguous())] = values  # union ⊇ rows, both sorted
            blocks.append(block)
        sent += self._average(blocks)
        for p, union, block in zip(params, unions, blocks):
            p.grad = _row_gradient(p, union, block, coalesced=True)
        return sent

    def _average(self, tensors: list[torch.Tensor]) -> int:
        """In-place average of ``tensors`` over ranks in one grouped call; bytes sent."""
        if not tensors:
            return 0
        self.backend.average_(tensors)
        return sum(t.numel() * t.element_size() for t in tensors)


def _row_gradient(param: torch.nn.Parameter, rows: torch.Tensor, values: torch.Tensor,
                  coalesced: bool = False) -> torch.Tensor:
    """A sparse COO gradient of ``param`` holding ``values`` (r × d) at ``rows`` (sorted and unique
    when ``coalesced``)."""
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values.reshape(rows.numel(), *param.shape[1:]), param.shape,
                                   is_coalesced=coalesced or None, check_invariants=False)
