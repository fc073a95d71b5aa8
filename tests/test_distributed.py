"""Horovod collectives of ``Workers`` under ``horovodrun -np 2`` (a helper script per rank), and
their single-rank short cuts in this process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _data import ROOT, environment

from recoder_dist.distributed import EXCHANGES, Workers
from recoder_dist.models import RecoderAutoencoder

SCRIPT = Path(__file__).resolve().parent / "_distributed_check.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed")
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    done = subprocess.run([horovodrun, "-np", "2", "--gloo", sys.executable, str(SCRIPT), str(out)], cwd=ROOT,
                          env=environment(2), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


def test_both_ranks_reported(reports):
    assert [(r["rank"], r["size"]) for r in reports] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("mode", EXCHANGES)
def test_exchange_matches_dense_allreduce(reports, mode):
    # the helper asserts allclose to a dense allreduce of the full grads on each rank
    for report in reports:
        assert report["exchanges"][mode]["max_abs_error"] <= 1e-6


def test_row_exchanges_send_less_than_dense(reports):
    for report in reports:
        sent = {mode: report["exchanges"][mode]["bytes_sent"] for mode in EXCHANGES}
        assert 0 < sent["sync_union"] < sent["dense"]
        assert 0 < sent["sparse"] < sent["dense"]


def test_global_union_is_the_sorted_union_on_every_rank(reports):
    unions = [r["union"] for r in reports]
    assert unions[0] == unions[1] == sorted(set(unions[0]))
    # sync_union scored that union on both ranks
    assert all(r["exchanges"]["sync_union"]["targets"] == len(unions[0]) for r in reports)


def test_broadcast_object_and_reductions(reports):
    for report in reports:
        assert report["broadcast"] == {"epoch": 3, "weights": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}
        assert report["sum"] == [2.0, 1.0]
        assert report["max"] == [1.0]


def test_single_rank_collectives_are_identities():
    workers = Workers(rank=0, size=1, local_rank=0, local_size=1)
    model = RecoderAutoencoder(10, [4])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    for mode in EXCHANGES:
        assert workers.exchange_gradients(model, model.item_parameter_names(), mode, torch.tensor([1, 2])) == 0
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    ids = torch.tensor([2, 5, 9])
    assert torch.equal(workers.global_union(ids), ids)
    assert workers.broadcast_object({"a": 1}, "x") == {"a": 1}
    values = torch.tensor([1.5, 2.0])
    assert torch.equal(workers.sum(values), values) and torch.equal(workers.max(values), values)
    assert workers.is_root and workers.default_threads() >= 1
