"""Atomic job outputs: build in a hidden sibling folder, rename into place when complete."""
from __future__ import annotations

import logging
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("recoder.output")


def check_output(out: Path, overwrite: bool, marker: str) -> None:
    """Refuse to clobber: an existing output needs ``overwrite``, and must be one of ours
    (holds ``marker``) or empty. Leftovers of killed jobs are removed."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        log.warning("removing %s, left by a job that did not finish", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output {out} already exists; pass --overwrite to replace it")
    if out.is_file() or (any(out.iterdir()) and not (out / marker).is_file()):
        raise FileExistsError(f"output {out} exists and was not written by this job (no {marker}); "
                              f"refusing to replace it even with --overwrite: choose another --output")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to ``out``; on success it replaces ``out``, on failure it is removed."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
