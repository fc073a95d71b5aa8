"""The collectives of ``Workers`` on both backends, under ``horovodrun -np 2`` and ``torchrun
--nproc-per-node 2`` (a helper script per rank), their single-rank short cuts in this process,
and how the launcher is told from the environment."""
import json
import sys
from pathlib import Path

import pytest
import torch
from _data import ROOT, environment, launch, run_launched

from recoder_dist.distributed import EXCHANGES, Workers, launched_by
from recoder_dist.models import RecoderAutoencoder

SCRIPT = Path(__file__).resolve().parent / "_distributed_check.py"
BACKENDS = {"horovodrun": "horovod", "torchrun": "torchrun"}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def reports(request, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp(f"distributed-{request.param}")
    code, stdout, stderr = run_launched(launch([sys.executable, str(SCRIPT), str(out)], 2, request.param),
                                        ROOT, environment(2), timeout=120)
    assert code == 0, f"{stdout[-4000:]}\n{stderr[-4000:]}"
    found = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    assert all(r["launcher"] == BACKENDS[request.param] for r in found)
    return found


def test_both_ranks_reported(reports):
    assert [(r["rank"], r["size"]) for r in reports] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("mode", EXCHANGES)
def test_exchange_matches_dense_allreduce(reports, mode):
    # the helper asserts allclose to a dense allreduce of the full grads on each rank; with two
    # ranks every exchange adds the same two numbers and halves, so they agree exactly
    for report in reports:
        assert report["exchanges"][mode]["max_abs_error"] == 0.0


def test_row_exchanges_send_less_than_dense(reports):
    for report in reports:
        sent = {mode: report["exchanges"][mode]["bytes_sent"] for mode in EXCHANGES}
        assert 0 < sent["sync_union"] < sent["dense"]
        assert 0 < sent["sparse"] < sent["dense"]


@pytest.mark.parametrize("mode", EXCHANGES)
def test_row_sparse_gradients_stay_rows_and_match_dense_allreduce(reports, mode):
    # the helper asserts allclose to a dense allreduce and a sparse layout on each rank
    union = len(reports[0]["union"])
    for report in reports:
        got = report["row_exchanges"][mode]
        assert got["max_abs_error"] == 0.0
        # never more rows than the ranks touched together: |U| for the decoder, fewer for the encoder
        assert got["rows"]["output_weight"] == got["rows"]["output_bias"] == union
        assert got["rows"]["item_embedding.weight"] < union
    rows = [r["row_exchanges"][mode]["rows"] for r in reports]
    assert rows[0] == rows[1]


def test_row_sparse_exchanges_send_rows_not_tables(reports):
    for report in reports:
        sent = {mode: report["row_exchanges"][mode]["bytes_sent"] for mode in EXCHANGES}
        dense_rows = report["exchanges"]["dense"]["bytes_sent"]
        assert all(0 < s for s in sent.values())
        assert sent["sync_union"] <= sent["dense"] < dense_rows  # no mode moves the full tables


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


def test_the_launcher_is_read_from_the_environment():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launched_by({}) == "none"
    assert launched_by({"PATH": "/bin", "OMP_NUM_THREADS": "1"}) == "none"
    assert launched_by(torchrun) == "torchrun"
    assert launched_by({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}) == "horovod"
    assert launched_by({"OMPI_COMM_WORLD_RANK": "0"}) == "horovod"  # horovodrun over mpirun
    with pytest.raises(ValueError, match="LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        launched_by({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="both Horovod's"):
        launched_by({**torchrun, "HOROVOD_RANK": "0"})


def test_one_process_needs_no_backend_and_several_do():
    assert Workers.start({}) == Workers(rank=0, size=1, local_rank=0, local_size=1)
    assert Workers.start({}).backend is None
    with pytest.raises(ValueError, match="Workers.start"):
        Workers(rank=0, size=2, local_rank=0, local_size=2)


def test_one_process_trains_without_horovod_installed(tmp_path):
    """Horovod is imported only under horovodrun: with its import blocked, one process starts."""
    import subprocess

    code = ("import sys; sys.modules['horovod'] = None\n"
            "from recoder_dist.distributed import Workers\n"
            "w = Workers.start(); assert (w.rank, w.size) == (0, 1)\n"
            "import recoder_dist.trainer, recoder_dist.train\n"
            "assert 'horovod.torch' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment(1), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
