"""The README's main job end to end (scripts/run_pipeline.sh) on a small synthetic default, run twice."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def run_pipeline(work: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORK": str(work), "NP": "2",
           "SYNTHETIC_ARGS": "synthetic.num_users=800 synthetic.num_items=300"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "run_pipeline.sh"), "default", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_main_job_runs_every_stage_and_reruns(tmp_path: Path) -> None:
    first = run_pipeline(tmp_path, "train.epochs=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "test metrics     recall_at_20" in first.stdout

    data = tmp_path / "data" / "default"
    manifest = json.loads((data / "manifest.json").read_text())
    interactions = manifest["interactions"]
    assert interactions["kept"] + sum(interactions["dropped"].values()) == interactions["input"]
    nnz = sum(sum(split.values()) for split in manifest["nnz"].values())
    assert nnz == interactions["kept"]
    users = pq.read_table(data / "users").to_pandas()
    assert (users["split"] == "test").sum() == manifest["num_users"]["test"] > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("recoder")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["test_ndcg_at_100"] > 0
    champion = client.get_model_version_by_alias("recoder", "champion")
    assert int(champion.version) == 1 and champion.run_id == runs[0].info.run_id

    recs = pq.read_table(tmp_path / "runs" / "default" / "recommendations" / "recommendations").to_pandas()
    assert len(recs) == manifest["num_users"]["test"]
    assert recs["user_id"].is_unique
    assert set(recs["user_id"]) == set(users.loc[users["split"] == "test", "user_id"])
    assert recs["recommended"].map(len).eq(100).all()

    second = run_pipeline(tmp_path, "train.epochs=1")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    versions = client.search_model_versions("name='recoder'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert int(client.get_model_version_by_alias("recoder", "candidate").version) == 2
