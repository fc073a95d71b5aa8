"""Per-run checkpoint folders: written atomically, read back without unpickling arbitrary objects.

Every training run writes into a folder of its own under ``train.checkpoint_dir``
(``<UTC time>-<random>``), so runs started side by side never read each other's files:
``last.pt`` after every epoch, ``best.pt`` at the best validation score, and ``finished.json``
once the run has trained all its epochs. A live run holds an exclusive lock on its folder's
``.lock`` (released by the kernel when the process dies, however it dies), so ``--resume``
never picks a folder another process is still writing. Only rank 0 touches these files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

log = logging.getLogger("recoder.train")

LAST = "last.pt"
BEST = "best.pt"
FINISHED = "finished.json"
LOCK = ".lock"


CONTINUE_FINISHED = ("--resume continues only unfinished runs; to train more, start a new run from a run's final "
                     "weights with --init-from RUN_FOLDER instead of --resume")


class ResumeError(ValueError):
    """``--resume`` cannot continue: the message says which run folder, why, and what to do."""


def save(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when saving failed


def load(path: Path) -> Optional[dict[str, Any]]:
    """The saved state (tensors, numbers, strings, lists, dicts only), or None if absent."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def new_run_dir(root: Path) -> Path:
    """A fresh, uniquely named run folder under ``root`` (created here)."""
    path = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def mark_finished(run_dir: Path, info: dict[str, Any]) -> None:
    """Record that the run in ``run_dir`` trained all its epochs (``--resume`` then refuses it)."""
    tmp = run_dir / f".{FINISHED}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    os.replace(tmp, run_dir / FINISHED)


def is_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained all its epochs."""
    return (Path(run_dir) / FINISHED).is_file()


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs; ResumeError if a live process holds it."""
    path = Path(run_dir) / LOCK
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ResumeError(f"{run_dir} is in use by a training run that is still alive ({handle.read().strip()}); "
                              f"wait for it to end or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()


def _busy(run_dir: Path) -> bool:
    try:
        with hold(run_dir):
            return False
    except ResumeError:
        return True


def runs(root: Path) -> list[Path]:
    """Run folders under ``root`` holding a ``last.pt``, the most recently written first."""
    root = Path(root)
    found = [p for p in root.iterdir() if (p / LAST).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (p / LAST).stat().st_mtime, reverse=True)


def resume_target(root: Path, explicit: Optional[Path] = None) -> Optional[Path]:
    """The run folder ``--resume`` continues: ``explicit`` (a run folder or its ``last.pt``),
    else the latest unfinished, idle run under ``root``; None when ``root`` holds no run at all.

    Raises ResumeError for a finished or live run, a folder without ``last.pt``, or a ``root``
    whose runs are all finished or live.
    """
    if explicit is not None:
        run_dir = Path(explicit).parent if Path(explicit).name == LAST else Path(explicit)
        if not (run_dir / LAST).is_file():
            raise ResumeError(f"--resume-from {explicit}: no {LAST} there; give a run folder under "
                              f"train.checkpoint_dir (one is written per run) or its {LAST}")
        _check_unfinished(run_dir)
        with hold(run_dir):  # raises, naming the live process, when one holds it
            return run_dir
    found = runs(root)
    if not found:
        log.warning("--resume: no run to continue in %s, starting from epoch 1", root)
        return None
    for run_dir in found:
        if not is_finished(run_dir) and not _busy(run_dir):
            return run_dir
    finished = [p.name for p in found if is_finished(p)]
    raise ResumeError(f"--resume: no unfinished run to continue in {root}: "
                      f"{len(finished)} finished ({', '.join(finished[:3])}{', …' if len(finished) > 3 else ''}), "
                      f"{len(found) - len(finished)} still running. {CONTINUE_FINISHED}")


def _check_unfinished(run_dir: Path) -> None:
    if is_finished(run_dir):
        info = json.loads((run_dir / FINISHED).read_text())
        raise ResumeError(f"{run_dir} is a finished run (trained {info.get('epochs')} epochs, "
                          f"finished {info.get('finished_at')}). {CONTINUE_FINISHED}")
