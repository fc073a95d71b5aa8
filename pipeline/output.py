"""Job outputs that never lose data: one lock and one private stage per run, published by rename.

A job that writes ``OUT`` (a prepared dataset, a recommendations folder):

- holds ``.OUT.lock`` (an ``flock`` next to ``OUT``) for as long as it runs, so a second job on
  the same output refuses instead of racing it;
- builds everything in its own stage ``.OUT.stage-<host>-<pid>-<random>``, whose marker file
  records its owner (host, PID, start time); a stage is only ever removed by its own run, or as
  stale when its owner is a dead process on this host (or, from another host, older than
  :data:`STALE_AFTER_S`), never because of its name;
- publishes by renaming the stage to ``OUT``; with ``--overwrite`` the old ``OUT`` is first
  moved aside (``.OUT.old-…``) and removed only once the new one is in place.

``--overwrite`` replaces only a folder whose marker says this project wrote it, as the same
kind of output, and never a folder that holds one of the job's inputs.

Spark-free and torch-free: pure file-system logic, testable on its own.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pipeline.manifest import local_path

log = logging.getLogger("recoder.output")

MARKER = ".recoder-output.json"
PROJECT = "recoder-dist"
STALE_AFTER_S = 24 * 3600  # a stage from another host (whose PID cannot be checked) is stale after this
KINDS = {"prepared-dataset": 1, "recommendations": 1}  # kind -> layout version this code writes


class OutputBusyError(FileExistsError):
    """Another live job is writing the same output."""


def check_output(out: Path, kind: str, overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse early what :func:`staged` would refuse: a live job on ``out``, an existing ``out``
    without ``overwrite``, an ``out`` this project did not write as ``kind``, or one that holds an input."""
    out = Path(out).resolve()
    if not out.parent.is_dir():
        return  # nothing can be there yet (and a check creates no folders)
    with _locked(out):
        _check(out, kind, overwrite, inputs)


@contextmanager
def staged(out: Path, kind: str, overwrite: bool = False,
           inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """A private stage for ``out`` (locked for the whole run); published when the block succeeds,
    removed when it fails. The previous ``out`` is kept until the new one is in place."""
    out = Path(out).resolve()
    with _locked(out):
        _remove_stale_stages(out)
        _check(out, kind, overwrite, inputs)
        stage = out.parent / f".{out.name}.stage-{_owner_tag()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir(parents=True)
        started = _now()
        _write_marker(stage, {"project": PROJECT, "kind": kind, "version": KINDS[kind], "state": "staging",
                              **_owner(), "started_at": started})
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _write_marker(stage, {"project": PROJECT, "kind": kind, "version": KINDS[kind], "state": "complete",
                              **_owner(), "started_at": started, "completed_at": _now()})
        _publish(stage, out)


def read_marker(directory: Path) -> Optional[dict[str, Any]]:
    """The marker of a folder this project wrote (``None`` when absent or unreadable)."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("project") == PROJECT else None


def _check(out: Path, kind: str, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    for stage in _stages(out):
        owner = read_marker(stage)
        if owner is not None and _alive(owner, stage):
            raise OutputBusyError(f"another job ({_describe(owner)}) is writing {out} (its stage is {stage}); "
                                  f"wait for it to finish or choose another --output")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output {out} already exists; pass --overwrite to replace it")
    for path in inputs:
        path = local_path(path).resolve()
        if path == out or out in path.parents:
            raise FileExistsError(f"output {out} holds the input {path}; refusing to replace it even with "
                                  f"--overwrite: choose another --output")
    marker = read_marker(out) if out.is_dir() else None
    if marker is None or marker.get("state") != "complete":
        raise FileExistsError(f"output {out} exists and was not written by {PROJECT} (no {MARKER}); refusing "
                              f"to replace it even with --overwrite: choose another --output (an output of an "
                              f"older {PROJECT} has no marker either: delete it yourself if it is one)")
    if marker.get("kind") != kind:
        raise FileExistsError(f"output {out} holds {marker.get('kind')!r}, not {kind!r}; refusing to replace it "
                              f"even with --overwrite: choose another --output")


def _publish(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out``; an old ``out`` is moved aside first and removed last."""
    aside = None
    if out.exists():
        aside = out.parent / f".{out.name}.old-{_owner_tag()}-{uuid.uuid4().hex[:8]}"
        out.rename(aside)
    try:
        stage.rename(out)
    except BaseException:
        if aside is not None:
            aside.rename(out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _stages(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.glob(f".{out.name}.stage-*") if p.is_dir())


def _remove_stale_stages(out: Path) -> None:
    """Remove stages of this output whose owner is gone; leave (and mention) anything else."""
    for stage in _stages(out):
        owner = read_marker(stage)
        if owner is None:
            log.warning("leaving %s alone: it has no readable %s, so its owner is unknown", stage, MARKER)
        elif not _alive(owner, stage):
            log.warning("removing %s, left by a job that did not finish (%s)", stage, _describe(owner))
            shutil.rmtree(stage, ignore_errors=True)


def _alive(owner: dict, stage: Path) -> bool:
    """Whether the job that owns a stage may still be running."""
    if owner.get("host") == socket.gethostname():
        return _pid_alive(int(owner.get("pid", -1)))
    try:
        age = time.time() - (stage / MARKER).stat().st_mtime
    except OSError:
        return False
    return age < STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``.OUT.lock`` exclusively, or refuse naming its holder. The file is removed on release;
    a holder checks that the path still names the file it locked, so removal cannot split the lock."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                try:
                    owner = _describe(json.loads(holder))
                except ValueError:
                    owner = "owner unknown"
                raise OutputBusyError(f"another job ({owner}) is writing {out} (it holds {path}); wait for it "
                                      f"to finish or choose another --output") from None
            log.warning("cannot lock %s (%s): relying on stage owners alone", path, error)
            handle = None
            break
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # its holder removed it after we opened it: lock the new file
    try:
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({**_owner(), "started_at": _now()}))
            handle.flush()
        yield
    finally:
        if handle is not None:
            path.unlink(missing_ok=True)
            handle.close()


def _write_marker(directory: Path, marker: dict) -> None:
    tmp = directory / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, directory / MARKER)


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _describe(owner: dict) -> str:
    return f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('started_at', 'at an unknown time')}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
