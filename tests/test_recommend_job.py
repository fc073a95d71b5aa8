"""End to end: ``spark-submit jobs/recommend.py --model models:/NAME@champion`` on the session's
registered model (temporary sqlite store), checked against the pyfunc model in this process.

Two real Spark runs (a prepared split, a CSV of raw histories); the refusals (existing output,
unknown alias) exit before Spark starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, write_lines

from _data import original_histories, registered_model
from _faults import Job

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory):
    return registered_model(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def pyfunc(model):
    """The champion loaded in this process: what every job row must equal."""
    return model.load_pyfunc()


def submit(model, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [SPARK_SUBMIT, "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.ui.showConsoleProgress=false", "jobs/recommend.py", "--tracking-uri",
               model.tracking_uri, *args]
    return subprocess.run([str(a) for a in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def summary(result: subprocess.CompletedProcess) -> dict:
    """The job's last line, its JSON summary."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def messages(result: subprocess.CompletedProcess) -> str:
    """What the job printed: spark-submit passes the Python driver's stderr on to its stdout."""
    return result.stdout + result.stderr


def expected(pyfunc, histories: dict[str, list[str]], k: int) -> pd.DataFrame:
    users = sorted(histories)
    frame = pyfunc.predict(pd.DataFrame({"items": [histories[u] for u in users]}), params={"k": k})
    return frame.assign(user_id=users).set_index("user_id")


def assert_same(written: pd.DataFrame, reference: pd.DataFrame) -> None:
    written = written.set_index("user_id").sort_index()
    assert written.index.is_unique and list(written.index) == list(reference.index)
    for user, row in written.iterrows():
        assert list(row["recommended"]) == list(reference.at[user, "recommended"]), user
        assert list(row["scores"]) == pytest.approx(list(reference.at[user, "scores"]), rel=1e-5, abs=1e-6), user
        assert row["unknown_items"] == reference.at[user, "unknown_items"], user


@pytest.fixture(scope="module")
def split_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("recommend") / "test-recs"
    result = submit(model, "--model", f"models:/{model.name}@champion", "--data", model.data_dir, "--split", "test",
                    "--k", "10", "--output", out)
    return out, summary(result)


def test_split_gives_one_row_per_test_user_as_the_pyfunc_model(model, pyfunc, split_run):
    out, printed = split_run
    histories = original_histories(model.data_dir, "test")
    written = pd.read_parquet(out / "recommendations")
    assert len(written) == len(histories) == printed["users"]
    assert written["recommended"].map(len).eq(10).all()
    assert_same(written, expected(pyfunc, histories, 10))
    assert printed["unknown_item_ids_ignored"] == 0 and printed["k"] == 10
    assert json.loads((out / "summary.json").read_text())["users"] == len(histories)
    assert sorted(p.name for p in out.parent.iterdir()) == ["test-recs"]  # no staging leftovers


def test_existing_output_is_refused_without_overwrite(model, split_run):
    out, _ = split_run
    before = sorted(p.name for p in (out / "recommendations").iterdir())
    result = submit(model, "--model", f"models:/{model.name}@champion", "--data", model.data_dir,
                    "--output", out)
    assert result.returncode == 2
    assert f"recommend: error: output {out} already exists; pass --overwrite to replace it" in messages(result)
    assert sorted(p.name for p in (out / "recommendations").iterdir()) == before


def test_histories_csv_with_unknown_ids_overwrites_an_earlier_output(model, pyfunc, split_run, tmp_path):
    known = original_histories(model.data_dir, "test")
    a, b, c = next(iter(known.values()))[:3]
    csv = write_lines(tmp_path / "histories.csv", [
        "user_id,item_id", f"u1,{a}", f"u1,{b}", "u1,not-an-item", f"u2,{c}", f"u2,{c}", "u3,also-unknown",
        f"u4,{a}", "u4,", f"u5,{b}"])
    out = tmp_path / "recs"
    shutil.copytree(split_run[0], out)  # an earlier output of this job, replaced below
    printed = summary(submit(model, "--model", f"models:/{model.name}/1", "--histories", csv, "--k", "5",
                             "--output", out, "--overwrite"))
    histories = {"u1": sorted([a, b, "not-an-item"]), "u2": [c], "u3": ["also-unknown"], "u4": [a], "u5": [b]}
    reference = expected(pyfunc, histories, 5)
    written = pd.read_parquet(out / "recommendations")
    assert_same(written, reference)
    assert written.set_index("user_id")["unknown_items"].to_dict() == {"u1": 1, "u2": 0, "u3": 1, "u4": 0, "u5": 0}
    assert printed["users"] == 5 and printed["unknown_item_ids_ignored"] == 2
    assert printed["rejected_rows"] == {"missing_item": 1}
    assert printed["model"] == f"models:/{model.name}/1"
    popular = pyfunc.predict(pd.DataFrame({"items": [[]]}), params={"k": 5})["recommended"][0]
    assert list(written.set_index("user_id").at["u3", "recommended"]) == list(popular)


def test_a_second_run_on_the_same_output_refuses_and_the_first_completes(model, tmp_path):
    """Two real jobs: the first is stopped while writing, the second (--overwrite) must refuse."""
    out = tmp_path / "recs"
    args = ["--model", f"models:/{model.name}@champion", "--data", model.data_dir, "--k", "5", "--output", out]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [SPARK_SUBMIT, "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.enabled=false",
               "jobs/recommend.py", "--tracking-uri", model.tracking_uri, *args]
    with Job(command, tmp_path / "first.log", cwd=ROOT, env=env) as first:
        first.wait_for(tmp_path / ".recs.*-*" / "recommendations", timeout=240)
        first.pause()
        second = submit(model, *args, "--overwrite")
        assert second.returncode == 2, messages(second)[-3000:]
        assert f"recommend: error: another job (PID " in messages(second) and f"is writing {out}" in messages(second)
        first.resume()
        assert first.finish(240) == 0, first.output()[-3000:]
    assert len(pd.read_parquet(out / "recommendations")) == len(original_histories(model.data_dir, "test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "recs"]


@pytest.mark.parametrize("args, message", [
    (["--split", "users"], "has no split 'users'; choose train, validation or test"),
    (["--k", "0"], "--k must be >= 1 (recommendations per user), got 0"),
    (["--k", "-1"], "--k must be >= 1"),
])
def test_bad_arguments_exit_2_with_a_message(model, tmp_path, args, message):
    result = submit(model, "--model", f"models:/{model.name}@champion", "--data", model.data_dir,
                    "--output", tmp_path / "out", *args)
    assert result.returncode == 2, messages(result)[-3000:]
    assert f"recommend: error: " in messages(result) and message in messages(result)
    assert "Traceback" not in messages(result) and "AnalysisException" not in messages(result)
    assert not (tmp_path / "out").exists()


def test_unknown_model_alias_exits_2_naming_the_aliases(model, tmp_path):
    out = tmp_path / "never"
    result = submit(model, "--model", f"models:/{model.name}@gold", "--data", model.data_dir, "--output", out)
    assert result.returncode == 2
    printed = messages(result)
    assert f"recommend: error: model '{model.name}' has no alias 'gold'; aliases: " in printed
    assert "'champion'" in printed and "Traceback" not in printed
    assert not out.exists()
