"""The row-sparse gradient exchange of ``Workers``, two ranks simulated by two threads in this
process over an in-memory backend with the same primitives as Horovod's and torch.distributed's
(the real libraries run the same code in ``tests/test_distributed.py``)."""
import threading

import pytest
import torch

from recoder_dist.distributed import EXCHANGES, Workers
from recoder_dist.models import RecoderAutoencoder

NUM_ITEMS, HIDDEN, RANKS = 40, [6, 3], 2


class ThreadBackend:
    """Collectives between threads: each call deposits this rank's tensors, waits for every rank,
    and computes the result from all of them in rank order."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.shared = rank, shared

    def _exchange(self, value):
        barrier, slots = self.shared["barrier"], self.shared["slots"]
        slots[self.rank] = value
        barrier.wait()
        everyone = [slots[r] for r in range(RANKS)]
        barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return everyone

    def average_(self, tensors):
        everyone = self._exchange([t.clone() for t in tensors])
        for i, tensor in enumerate(tensors):
            tensor.copy_(sum(rank[i] for rank in everyone) / RANKS)

    def allgather(self, tensors):
        everyone = self._exchange([t.clone() for t in tensors])
        return [torch.cat([rank[i] for rank in everyone]) for i in range(len(tensors))]

    def allreduce(self, tensor, op):
        everyone = self._exchange(tensor.clone())
        return sum(everyone) if op == "sum" else torch.stack(everyone).amax(0)


def rows_of(rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + rank)
    own = 10 + torch.randperm(NUM_ITEMS - 10, generator=gen)[:8]
    return torch.unique(torch.cat([torch.tensor([0, 3, 7]), own]))


def rank_gradients(rank: int, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rank-specific gradients: item tables row-sparse (encoder at a subset of the targets)."""
    model = RecoderAutoencoder(NUM_ITEMS, HIDDEN, sparse=True)
    gen = torch.Generator().manual_seed(2000 + rank)
    grads = {}
    for name, p in model.named_parameters():
        if name in model.item_parameter_names():
            rows = rows_of(rank)[::2] if name == "item_embedding.weight" else targets
            values = torch.randn((rows.numel(), *p.shape[1:]), generator=gen)
            grads[name] = torch.sparse_coo_tensor(rows[None], values, p.shape, check_invariants=True)
        else:
            grads[name] = torch.randn(p.shape, generator=gen)
    return grads


def exchange(mode: str) -> list[dict]:
    shared = {"barrier": threading.Barrier(RANKS), "slots": {}}
    union = torch.unique(torch.cat([rows_of(r) for r in range(RANKS)]))
    results: list = [None] * RANKS
    errors: list = []

    def rank_main(rank: int) -> None:
        try:
            workers = Workers(rank, RANKS, rank, RANKS, backend=ThreadBackend(rank, shared))
            model = RecoderAutoencoder(NUM_ITEMS, HIDDEN, sparse=True)
            targets = union if mode == "sync_union" else rows_of(rank)
            for name, grad in rank_gradients(rank, targets).items():
                model.get_parameter(name).grad = grad
            sent = workers.exchange_gradients(model, model.item_parameter_names(), mode, targets)
            results[rank] = {"sent": sent, "grads": {n: p.grad for n, p in model.named_parameters()}}
        except BaseException as error:  # surfaced below, with the barrier broken so the other rank stops
            errors.append(error)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(RANKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("mode", EXCHANGES)
def test_row_sparse_exchange_averages_like_a_dense_allreduce_and_stays_rows(mode):
    union = torch.unique(torch.cat([rows_of(r) for r in range(RANKS)]))
    per_rank = [rank_gradients(r, union if mode == "sync_union" else rows_of(r)) for r in range(RANKS)]
    results = exchange(mode)
    items = RecoderAutoencoder(NUM_ITEMS, HIDDEN).item_parameter_names()
    encoder_rows = torch.unique(torch.cat([rows_of(r)[::2] for r in range(RANKS)]))
    for name in per_rank[0]:
        expected = sum(g[name].to_dense() for g in per_rank) / RANKS
        got = [result["grads"][name] for result in results]
        for grad in got:
            torch.testing.assert_close(grad.to_dense(), expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(got[0].to_dense(), got[1].to_dense())  # identical on every rank
        if name in items:
            assert all(g.is_sparse for g in got), f"{mode}: {name} came back dense"
            rows = got[0].coalesce().indices()[0]
            # only rows some rank touched: the union of targets for the decoder, of batch items for the encoder
            assert rows.tolist() == (encoder_rows if name == "item_embedding.weight" else union).tolist()
    table = sum(p.numel() * 4 for n, p in RecoderAutoencoder(NUM_ITEMS, HIDDEN).named_parameters() if n in items)
    dense_params = sum(p.numel() * 4 for n, p in RecoderAutoencoder(NUM_ITEMS, HIDDEN).named_parameters()
                       if n not in items)
    assert all(0 < r["sent"] - dense_params < table for r in results)  # item tables moved as rows only
