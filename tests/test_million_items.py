"""benchmarks/million_items.py end to end at a reduced size (the full run is the benchmark's).

Every stage runs as a real subprocess — jobs/generate.py, spark-submit jobs/prepare.py,
horovodrun -np 2 python -m recoder_dist.train, the checkpoint and the MLflow model loaded in
processes of their own, spark-submit jobs/recommend.py, mlflow models serve — and the test checks
what each produced, not only that it ran.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from _data import original_histories

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_stage_runs_and_answers_with_known_items(tmp_path):
    work = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "million_items.py"), "--work", str(work),
                           "--users", "1500", "--items", "40000", "--mean-interactions", "60",
                           "--candidates", "400", "--hidden", "32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["generate", "prepare", "train", "load", "recommend", "serve"]

    data = work / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert results["prepare"]["num_items"] == manifest["num_items"] > 10_000  # a long tail, not 300 items
    assert results["train"]["registered"]["version"] == 1 and results["train"]["registered"]["promoted"]

    items = set(pq.read_table(data / "items", columns=["item_id"]).to_pydict()["item_id"])
    users = pq.read_table(data / "users").to_pandas()
    test_users = set(users.loc[users["split"] == "test", "user_id"])
    recs = pq.read_table(work / "recommendations" / "recommendations").to_pandas()
    assert results["recommend"]["rows"] == len(recs) == len(test_users) > 0
    assert set(recs["user_id"]) == test_users
    assert all(len(r) == 100 and set(r) <= items for r in recs["recommended"])

    histories = list(original_histories(data, "test").values())[:3]
    served = results["serve"]["answer"]
    assert len(served) == 3
    for answer, history in zip(served, histories):
        assert len(answer) == 10 == len(set(answer)) and set(answer) <= items and not set(answer) & set(history)
    # the checkpoint, the registered model and the server give the first user the same top 10
    assert results["load"]["checkpoint"]["answer"] == results["load"]["mlflow-model"]["answer"] == served[0]
    for stage in ("generate", "prepare", "train", "recommend", "serve"):
        assert results[stage]["seconds"] > 0 and results[stage]["peak_gb"] > 0, stage
    assert "| load: mlflow-model |" in done.stdout
