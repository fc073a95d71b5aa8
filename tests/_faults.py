"""Fault injection shared by the safety and resume tests: stop or kill a real job at a named
point, corrupt or remove a named file.

A *point* is something a job leaves on disk (a path or glob appearing, e.g. the stage folder
of an output or a checkpoint), so the product code carries no test hooks: :class:`Job` starts
a real process in its own process group, :meth:`Job.wait_for` blocks (bounded) until the point
is reached, and :meth:`Job.pause` / :meth:`Job.resume` / :meth:`Job.kill` act on the whole
group (spark-submit's JVM and Python driver, horovodrun's ranks).
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

Point = Union[str, Path, Callable[[], bool]]


def reached(point: Point) -> bool:
    """Whether ``point`` is reached: a callable's answer, or a path/glob that matches something."""
    return bool(point()) if callable(point) else bool(glob.glob(str(point)))


class Job:
    """A real process group started for a test; always stop it with :meth:`kill` (or a ``with``)."""

    def __init__(self, command: Sequence[Union[str, Path]], log: Path, cwd: Optional[Path] = None,
                 env: Optional[dict] = None) -> None:
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as output:
            self.process = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *_) -> None:
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, point: Point, timeout: float = 180, poll: float = 0.05) -> None:
        """Block until ``point`` is reached; fails (with the job's output) if the job exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not reached(point):
            assert self.process.poll() is None, \
                f"job exited ({self.process.returncode}) before reaching {point}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"{point} not reached in {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(poll)

    def pause(self) -> None:
        """SIGSTOP the whole group (the job stays exactly where it is)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def finish(self, timeout: float = 300) -> int:
        """Wait for the job to exit; its return code."""
        return self.process.wait(timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the group (continued first, so a paused job can act on it) and reap it."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def kill_at(command: Sequence[Union[str, Path]], point: Point, log: Path, sig: int = signal.SIGKILL,
            timeout: float = 180, **popen) -> Job:
    """Run ``command`` until ``point``, then send ``sig`` to it (default SIGKILL: no clean-up runs)."""
    job = Job(command, log, **popen)
    try:
        job.wait_for(point, timeout)
    finally:
        job.kill(sig)
    return job


def truncate(path: Path, keep: float = 0.5) -> int:
    """Cut a file to ``keep`` of its size (a torn copy or a full disk); returns the new size."""
    size = int(Path(path).stat().st_size * keep)
    os.truncate(path, size)
    return size


def corrupt(path: Path, offset: int = 0, length: int = 64) -> None:
    """Overwrite ``length`` bytes at ``offset`` with garbage (a flipped copy), keeping the size."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(length)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def remove(path: Path) -> None:
    """Delete a named file (a lost part file)."""
    Path(path).unlink()
