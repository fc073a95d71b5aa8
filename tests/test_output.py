"""Output staging, locking and ``--overwrite`` rules (pipeline.output), with real processes.

Spark-free: a writer process enters :func:`pipeline.output.staged` and is stopped or killed at
a named point (its stage on disk) by ``tests/_faults.py``; the prepare and recommend jobs are
held to the same rules end to end in their own test modules.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from _faults import Job, kill_at
from pipeline.output import MARKER, OutputBusyError, check_output, read_marker, staged

KIND = "prepared-dataset"
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.output import staged
    out, hold = Path(sys.argv[1]), sys.argv[2]
    with staged(out, "prepared-dataset", overwrite=True) as stage:
        (stage / "part-0").write_text("new")
        while hold == "hold" and not (out.parent / "go").exists():
            time.sleep(0.05)
    print("published")
""")


def writer(out: Path, log: Path, hold: bool = True) -> Job:
    """A real process writing ``out`` through staged(); with ``hold`` it waits in its stage for ``go``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return Job([sys.executable, "-c", WRITER, out, "hold" if hold else "go"], log, cwd=ROOT, env=env)


def stage_of(out: Path) -> str:
    return str(out.parent / f".{out.name}.stage-*" / "part-0")


def ours(out: Path, kind: str = KIND, content: str = "old", overwrite: bool = True) -> Path:
    """An output this project wrote (through staged itself)."""
    with staged(out, kind, overwrite=overwrite) as stage:
        (stage / "part-0").write_text(content)
    return out


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_second_run_refuses_while_the_first_is_staging_and_leaves_its_stage_alone(tmp_path):
    out = ours(tmp_path / "out")
    with writer(out, tmp_path / "a.log") as first:
        first.wait_for(stage_of(out))
        stage = Path(next(iter(Path(tmp_path).glob(".out.stage-*"))))
        for attempt in (lambda: check_output(out, KIND, overwrite=True),
                        lambda: staged(out, KIND, overwrite=True).__enter__()):
            with pytest.raises(OutputBusyError, match=rf"another job \(PID {first.process.pid} on .*\) is writing "
                                                      rf"{out} .*wait for it to finish or choose another --output"):
                attempt()
        second = subprocess.run([sys.executable, "-c", WRITER, str(out), "go"], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert second.returncode != 0 and "OutputBusyError: another job" in second.stderr
        assert (stage / "part-0").read_text() == "new" and (out / "part-0").read_text() == "old"
        (tmp_path / "go").touch()
        assert first.finish(60) == 0, first.output()
    assert (out / "part-0").read_text() == "new" and read_marker(out)["state"] == "complete"
    assert names(tmp_path) == ["a.log", "go", "out"]  # no stage, aside folder or lock left


def test_a_killed_run_keeps_the_old_output_and_its_stage_is_cleaned_by_the_next_run(tmp_path):
    out = ours(tmp_path / "out")
    killed = kill_at([sys.executable, "-c", WRITER, out, "hold"], stage_of(out), tmp_path / "a.log",
                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.process.returncode == -signal.SIGKILL
    assert (out / "part-0").read_text() == "old"  # the old output stays until a new one is in place
    left = list(tmp_path.glob(".out.stage-*"))
    assert len(left) == 1 and read_marker(left[0])["pid"] == killed.process.pid
    unknown = tmp_path / ".out.stage-elsewhere-1-0badf00d"  # no marker: owner unknown, never removed by name
    (unknown / "keep").parent.mkdir()
    (unknown / "keep").write_text("not ours to judge")
    ours(out, content="newer")
    assert (out / "part-0").read_text() == "newer"
    assert not left[0].exists() and (unknown / "keep").is_file()


def test_a_stage_of_another_host_is_stale_only_when_old(tmp_path, monkeypatch):
    import pipeline.output as output

    out = tmp_path / "out"
    remote = tmp_path / ".out.stage-otherhost-1-12345678"
    remote.mkdir()
    (remote / MARKER).write_text(json.dumps({"project": "recoder-dist", "kind": KIND, "state": "staging",
                                             "host": "otherhost", "pid": 1, "started_at": "then"}))
    with pytest.raises(OutputBusyError, match="PID 1 on otherhost"):
        ours(out)
    old = os.stat(remote / MARKER).st_mtime - output.STALE_AFTER_S - 60
    os.utime(remote / MARKER, (old, old))
    ours(out)
    assert not remote.exists() and (out / "part-0").read_text() == "old"


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "manifest.json").write_text("{}"), "was not written by recoder-dist"),  # a name anyone can have
    (lambda d: (d / MARKER).write_text('{"project": "other", "kind": "prepared-dataset"}'), "not written by"),
    (lambda d: (d / MARKER).write_text('{"project": "recoder-dist", "kind": "prepared-dataset", "state": "staging"}'),
     "not written by"),
    (lambda d: (d / MARKER).write_text('{"project": "recoder-dist", "kind": "recommendations", "state": "complete"}'),
     "holds 'recommendations', not 'prepared-dataset'"),
])
def test_overwrite_replaces_only_a_complete_output_of_the_same_kind(tmp_path, setup, message):
    out = tmp_path / "webapp"
    out.mkdir()
    (out / "index.html").write_text("precious")
    setup(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=message if overwrite else "already exists; pass --overwrite"):
            ours(out, overwrite=overwrite)
        with pytest.raises(FileExistsError):
            check_output(out, KIND, overwrite)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert names(tmp_path) == ["webapp"]


def test_overwrite_never_replaces_a_folder_that_holds_an_input(tmp_path):
    out = ours(tmp_path / "data")
    raw = out / "raw" / "ratings.csv"
    raw.parent.mkdir()
    raw.write_text("user_id,item_id\n1,2\n")
    for inputs in ([out], [raw], [f"file://{raw}"]):
        with pytest.raises(FileExistsError, match=f"output {out} holds the input .*refusing to replace it"):
            check_output(out, KIND, overwrite=True, inputs=inputs)
    with pytest.raises(FileExistsError, match="holds the input"):
        with staged(out, KIND, overwrite=True, inputs=[raw]):
            pytest.fail("must not stage")
    assert raw.read_text() == "user_id,item_id\n1,2\n"
    check_output(out, KIND, overwrite=True, inputs=[tmp_path / "elsewhere.csv"])  # an input outside is fine


def test_a_failing_block_removes_its_stage_and_keeps_the_old_output(tmp_path):
    out = ours(tmp_path / "out")
    with pytest.raises(RuntimeError, match="boom"):
        with staged(out, KIND, overwrite=True) as stage:
            (stage / "part-0").write_text("half")
            assert (out / "part-0").read_text() == "old"  # untouched while the new one is built
            raise RuntimeError("boom")
    assert (out / "part-0").read_text() == "old" and names(tmp_path) == ["out"]


def test_a_check_creates_no_folders(tmp_path):
    check_output(tmp_path / "a" / "b" / "out", KIND, overwrite=False)
    assert names(tmp_path) == []
