"""Kill a ``horovodrun -np 2`` training run after its first checkpoint, resume it with only
rank 0 seeing the checkpoint folder, compare it with an uninterrupted run; refuse to resume a
checkpoint written with other settings or by another number of ranks."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from _data import GLOBAL_BATCH, ROOT, TRAIN, command, environment, prepared_dataset, run_folder, train
from _faults import corrupt

from recoder_dist import checkpoint

RANKS = 2
EPOCHS = int(next(o for o in TRAIN if o.startswith("train.epochs=")).split("=")[1])


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run (the same one the Horovod trainer contract checks)."""
    return train(RANKS, data, tmp_path_factory.getbasetemp(), "contract")


def _kill_after_first_checkpoint(args: list[str], checkpoint_dir, log_path, timeout: float = 180) -> None:
    """Start ``args`` in a new session, wait for its run's ``last.pt``, kill the whole job (SIGKILL)."""
    with open(log_path, "w") as log:
        job = subprocess.Popen(args, cwd=ROOT, env=environment(RANKS), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not list(checkpoint_dir.glob(f"*/{checkpoint.LAST}")):
            assert job.poll() is None, f"training ended ({job.returncode}) before a checkpoint:\n" \
                                       f"{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        ranks = psutil.Process(job.pid).children(recursive=True) if job.poll() is None else []
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # horovodrun and what shares its process group
        job.wait()
        # horovodrun puts each rank in a session of its own and stops them when it dies; make sure
        _, alive = psutil.wait_procs(ranks, timeout=15)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """Run folder and last state of a run killed after its first checkpoint, and an untouched
    copy of that folder (the resumes refused below must find it as the kill left it)."""
    base = tmp_path_factory.getbasetemp()
    out, checkpoint_dir = base / "run-interrupted", base / "resume-checkpoints"
    out.mkdir()
    overrides = [*TRAIN, f"train.batch_size={GLOBAL_BATCH // RANKS}", f"train.checkpoint_dir={checkpoint_dir}"]
    _kill_after_first_checkpoint(command(RANKS, data, out, overrides), checkpoint_dir, base / "interrupted.log")
    run_dir = run_folder(checkpoint_dir)
    state = checkpoint.load(run_dir / checkpoint.LAST)
    assert not (out / "rank-0.json").exists(), "the run finished before it was killed"
    copy = shutil.copytree(run_dir, base / "interrupted-copy" / run_dir.name)
    return run_dir, state, copy


@pytest.fixture(scope="module")
def rank1_checkpoints(tmp_path_factory, interrupted):
    """Rank 1's train.checkpoint_dir: another folder, as on a host that does not see rank 0's
    disk, holding a stale copy of the run with its checkpoints corrupted (rank 1 must not read it)."""
    _, _, copy = interrupted
    folder = tmp_path_factory.getbasetemp() / "rank1-checkpoints"
    stale = shutil.copytree(copy, folder / copy.name)
    for name in (checkpoint.LAST, checkpoint.BEST):
        corrupt(stale / name, length=4096)
    return folder


@pytest.fixture(scope="module")
def resumed(data, tmp_path_factory, interrupted, rank1_checkpoints):
    run_dir, _, _ = interrupted
    return train(RANKS, data, tmp_path_factory.getbasetemp(), "resumed", resume=True, checkpoint_dir=run_dir.parent,
                 env={"TEST_CHECKPOINT_DIR_RANK_1": str(rank1_checkpoints)})


def test_killed_mid_run(interrupted):
    _, state, _ = interrupted
    assert 1 <= state["epoch"] < EPOCHS
    assert [h["epoch"] for h in state["history"]] == list(range(1, state["epoch"] + 1))


def test_resume_reads_rank_0s_folder_only_and_continues_that_run(resumed, interrupted, rank1_checkpoints):
    run_dir, _, copy = interrupted
    assert [r["checkpoint_dir"] for r in resumed.reports] == [str(run_dir.parent), str(rank1_checkpoints)]
    assert [r["result"]["best_checkpoint"] for r in resumed.reports] == [str(run_dir / checkpoint.BEST)] * RANKS
    assert checkpoint.is_finished(run_dir)
    # rank 1 neither read (its copies are corrupt) nor wrote its own folder
    assert sorted(p.relative_to(rank1_checkpoints) for p in rank1_checkpoints.rglob("*")) == \
        sorted(p.relative_to(copy.parent) for p in copy.parent.rglob("*"))


def test_resumed_run_ends_where_an_uninterrupted_one_does(resumed, reference, interrupted):
    _, state, _ = interrupted
    result, expected = resumed.root["result"], reference.root["result"]
    assert result["epochs"] == expected["epochs"] == EPOCHS
    assert [h["epoch"] for h in result["history"]] == list(range(1, EPOCHS + 1))
    assert result["history"][:state["epoch"]] == state["history"]  # the killed run's epochs, kept
    # only the epochs after the checkpoint were trained again, in step on both ranks
    digests = [r["digests"] for r in resumed.reports]
    assert list(digests[0]) == [str(e) for e in range(state["epoch"] + 1, EPOCHS + 1)]
    assert digests[0] == digests[1]
    assert result["steps_per_epoch"] == expected["steps_per_epoch"]


def test_resumed_metrics_match_within_noise(resumed, reference):
    result, expected = resumed.root["result"], reference.root["result"]
    final, final_expected = result["history"][-1], expected["history"][-1]
    assert abs(final["val_ndcg_at_100"] - final_expected["val_ndcg_at_100"]) < 0.05
    assert abs(final["train_loss"] - final_expected["train_loss"]) / final_expected["train_loss"] < 0.05
    assert abs(result["test"]["ndcg_at_100"] - expected["test"]["ndcg_at_100"]) < 0.05


def _refused_resume(data, run_dir, ranks: int, *extra: str) -> str:
    """``[horovodrun -np R] python -m recoder_dist.train --resume-from run_dir``: checks that every
    rank refuses it with a message (exit 2, no traceback) and leaves the folder alone; the output."""
    def files():  # the checkpoints (the lock file is rewritten by whoever takes the lock)
        return sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir() if p.name != checkpoint.LOCK)

    saved = files()
    args = [sys.executable, "-m", "recoder_dist.train", "--data", str(data), "--resume-from", str(run_dir), *TRAIN,
            f"train.checkpoint_dir={run_dir.parent}", *extra]
    if ranks > 1:
        args = [str(Path(sys.executable).with_name("horovodrun")), "-np", str(ranks), "--gloo", *args]
    done = subprocess.run(args, cwd=ROOT, env=environment(ranks), capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    for rank in range(ranks):
        assert f"train: error (rank {rank}): " in output, output[-3000:]
    assert "ResumeError" not in output, output[-3000:]  # a message, not a traceback
    assert files() == saved
    return output


def test_resume_with_other_settings_fails_clearly_on_every_rank(data, interrupted):
    _, _, copy = interrupted
    output = _refused_resume(data, copy, RANKS, f"train.batch_size={GLOBAL_BATCH // RANKS}", "train.lr=0.02")
    assert "was written for other data or settings" in output
    assert "train.lr: 0.01 in the checkpoint, 0.02 now" in output


def test_resume_with_other_ranks_is_refused_naming_them(data, interrupted):
    _, _, copy = interrupted
    output = _refused_resume(data, copy, 1, f"train.batch_size={GLOBAL_BATCH // RANKS}")
    assert "it was written by 2 ranks and this run has 1 (resume with horovodrun -np 2)" in output
    assert "ranks: 2 in the checkpoint, 1 now" in output
    assert "global_batch: 100 in the checkpoint, 50 now" in output


def test_settings_that_cannot_change_the_weights_do_not_block_a_resume(data, interrupted, tmp_path):
    """Threads, reader and evaluation settings, epochs and the checkpoint folder may change."""
    _, state, copy = interrupted
    run_dir = shutil.copytree(copy, tmp_path / copy.name)
    epochs = state["epoch"] + 1
    args = command(RANKS, data, tmp_path, [*TRAIN, f"train.batch_size={GLOBAL_BATCH // RANKS}",
                                           f"train.checkpoint_dir={tmp_path}", f"train.epochs={epochs}",
                                           "train.threads=1", "train.reader_pool=process", "train.reader_pool_size=2",
                                           "train.eval_batch_size=123", "train.eval_every=3"], resume_from=run_dir)
    done = subprocess.run(args, cwd=ROOT, env=environment(RANKS), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [h["epoch"] for h in checkpoint.load(run_dir / checkpoint.LAST)["history"]] == list(range(1, epochs + 1))
    assert checkpoint.is_finished(run_dir)
