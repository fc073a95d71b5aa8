"""horovodrun -np N | torchrun --nproc-per-node N  python tests/_distributed_check.py OUT_DIR

Test helper: checks ``recoder_dist.distributed.Workers`` on every rank and writes
``<OUT_DIR>/rank-<r>.json`` with what it found (assertions fail the rank, and so the launcher).

- Each gradient exchange (dense, sparse, sync_union) leaves the same averaged gradients as a
  dense allreduce of the full tables made with the launcher's library directly (Horovod's or
  torch.distributed's), for item tables whose rows are touched only at rank-specific, partly
  overlapping row sets.
- ``global_union`` is the sorted union of the ranks' item ids.
- ``broadcast_object`` delivers rank 0's object to ranks that pass None.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recoder_dist.distributed import EXCHANGES, Workers, launched_by  # noqa: E402
from recoder_dist.models import RecoderAutoencoder  # noqa: E402

NUM_ITEMS, HIDDEN = 40, [6, 3]


def rows_of(rank: int) -> np.ndarray:
    """Rank-specific item rows: some shared by all ranks, some only this rank's, sorted."""
    rng = np.random.default_rng(100 + rank)
    own = rng.choice(np.arange(10, NUM_ITEMS), size=8, replace=False)
    return np.unique(np.concatenate([[0, 3, 7], own]))


def fill_gradients(model: RecoderAutoencoder, rank: int, rows: np.ndarray) -> None:
    """Known gradients: item tables nonzero only at ``rows``, everything else dense."""
    gen = torch.Generator().manual_seed(1000 + rank)
    items = model.item_parameter_names()
    for name, p in model.named_parameters():
        grad = torch.randn(p.shape, generator=gen)
        if name in items:
            mask = torch.zeros(p.shape[0], dtype=torch.bool)
            mask[torch.from_numpy(rows)] = True
            grad[~mask] = 0.0
        p.grad = grad


def dense_average(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """The reference: a plain allreduce-average of the whole tensor with the launcher's library."""
    if launched_by(os.environ) == "horovod":
        import horovod.torch as hvd

        return hvd.allreduce(tensor.clone(), op=hvd.Average, name=name)
    import torch.distributed as dist

    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def check_exchange(workers: Workers, mode: str) -> dict:
    model = RecoderAutoencoder(NUM_ITEMS, HIDDEN)
    mine = rows_of(workers.rank)
    if mode == "sync_union":  # the trainer scores the global union, so it passes that as the targets
        targets = workers.global_union(torch.from_numpy(mine))
    else:
        targets = torch.from_numpy(mine)
    fill_gradients(model, workers.rank, mine)
    reference = {n: dense_average(p.grad, f"reference.{mode}.{n}") for n, p in model.named_parameters()}
    sent = workers.exchange_gradients(model, model.item_parameter_names(), mode, targets)
    worst = 0.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"{mode}: {name}: {m}")
        worst = max(worst, float((p.grad - reference[name]).abs().max()))
    return {"bytes_sent": sent, "max_abs_error": worst, "targets": int(targets.numel())}


def check_row_exchange(workers: Workers, mode: str) -> dict:
    """Row-sparse item gradients (sparse COO, as ``RecoderAutoencoder(sparse=True)`` makes them):
    the exchange averages them like a dense allreduce of the full tables, and leaves them row-sparse
    with no more rows than the ranks touched."""
    model = RecoderAutoencoder(NUM_ITEMS, HIDDEN, sparse=True)
    mine = torch.from_numpy(rows_of(workers.rank))
    targets = workers.global_union(mine) if mode == "sync_union" else mine
    encoder_rows = mine[::2]  # the batch's items: a subset of the target set
    gen = torch.Generator().manual_seed(2000 + workers.rank)
    for name, p in model.named_parameters():
        if name in model.item_parameter_names():
            rows = encoder_rows if name == "item_embedding.weight" else targets
            values = torch.randn((rows.numel(), *p.shape[1:]), generator=gen)
            p.grad = torch.sparse_coo_tensor(rows[None], values, p.shape, check_invariants=True)
        else:
            p.grad = torch.randn(p.shape, generator=gen)
    reference = {n: dense_average(p.grad.to_dense(), f"rows.{mode}.{n}") for n, p in model.named_parameters()}
    sent = workers.exchange_gradients(model, model.item_parameter_names(), mode, targets)
    worst, nnz = 0.0, {}
    for name, p in model.named_parameters():
        if name in model.item_parameter_names():
            assert p.grad.is_sparse, f"{mode}: {name} came back dense"
            touched = p.grad.coalesce().indices()[0]
            nnz[name] = int(touched.numel())
        got = p.grad.to_dense()
        torch.testing.assert_close(got, reference[name], rtol=1e-6, atol=1e-6, msg=lambda m: f"rows {mode}: {name}: {m}")
        worst = max(worst, float((got - reference[name]).abs().max()))
    return {"bytes_sent": sent, "max_abs_error": worst, "rows": nnz}


def main() -> int:
    out = Path(sys.argv[1])
    workers = Workers.start()
    report: dict = {"rank": workers.rank, "size": workers.size, "launcher": launched_by(os.environ), "exchanges": {}}
    for mode in EXCHANGES:
        report["exchanges"][mode] = check_exchange(workers, mode)
    report["row_exchanges"] = {mode: check_row_exchange(workers, mode) for mode in EXCHANGES}

    expected = np.unique(np.concatenate([rows_of(r) for r in range(workers.size)]))
    union = workers.global_union(torch.from_numpy(rows_of(workers.rank)))
    assert union.dtype == torch.int64 and union.tolist() == expected.tolist(), (union, expected)
    report["union"] = union.tolist()

    payload = {"weights": torch.arange(6, dtype=torch.float32).reshape(2, 3), "epoch": 3, "name": "best"}
    received = workers.broadcast_object(payload if workers.is_root else None, "check_object")
    assert received is not None and received["epoch"] == 3 and received["name"] == "best"
    assert torch.equal(received["weights"], payload["weights"])
    nothing = workers.broadcast_object(None, "check_none")
    assert nothing is None
    report["broadcast"] = {"epoch": received["epoch"], "weights": received["weights"].tolist()}

    summed = workers.sum(torch.tensor([1.0, float(workers.rank)], dtype=torch.float64))
    biggest = workers.max(torch.tensor([float(workers.rank)]))
    report["sum"], report["max"] = summed.tolist(), biggest.tolist()
    Path(out, f"rank-{workers.rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
