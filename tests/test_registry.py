"""Alias policy and CLI of the model registry, on a real (temporary) sqlite MLflow registry.

Model versions point at fake model URIs: the policy and the CLI never load a model.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from recoder_dist import registry
from recoder_dist.registry import CANDIDATE, CHAMPION


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private registry (one per module: creating a sqlite store costs seconds; every test
    registers its own model name)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("registry-tests", artifact_location=(folder / "mlruns").as_uri())
    return uri, client, experiment


@pytest.fixture
def name(request) -> str:
    return request.node.name.replace("[", "-").replace("]", "")


def training_run(client: MlflowClient, experiment: str, test_ndcg: float) -> str:
    """A finished run shaped like a training run (config and data.* params, test metrics)."""
    run = client.create_run(experiment)
    run_id = run.info.run_id
    for key, value in {"train.lr": "0.001", "model.hidden_sizes": "[64]", "data.num_items": "400",
                       "data.fingerprint": "abc123"}.items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, "test_ndcg_at_100", test_ndcg)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def register(store, name: str, val_ndcg: float, uri: str | None = None, dataset: str = "dataset-a") -> dict:
    _, client, experiment = store
    run_id = training_run(client, experiment, val_ndcg - 0.01)
    return registry.register(client, name, uri or f"runs:/{run_id}/model", run_id, val_ndcg, dataset)


def aliases(client: MlflowClient, name: str) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_first_version_becomes_champion(store, name):
    result = register(store, name, 0.30)
    assert result["version"] == 1 and result["promoted"] and result["previous_champion"] is None
    assert aliases(store[1], name) == {CANDIDATE: 1, CHAMPION: 1}
    assert store[1].get_model_version(name, "1").tags[registry.SCORE_TAG] == "0.300000"


def test_a_worse_version_is_candidate_only(store, name):
    register(store, name, 0.30)
    result = register(store, name, 0.20)
    assert result["version"] == 2 and not result["promoted"]
    assert result["previous_champion"] == 1 and result["previous_champion_val_ndcg_at_100"] == pytest.approx(0.3)
    assert aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 1}
    register(store, name, 0.30)  # a tie does not move the champion either
    assert aliases(store[1], name) == {CANDIDATE: 3, CHAMPION: 1}


def test_the_champion_stays_with_its_dataset(store, name, caplog):
    """Scores on other validation users are not comparable: another dataset's version, however
    high it scores, never displaces the champion; a better one of the champion's dataset does."""
    register(store, name, 0.30, dataset="dataset-a")
    with caplog.at_level("WARNING", logger="recoder.registry"):
        other = register(store, name, 0.90, dataset="dataset-b")
    assert not other["promoted"] and other["dataset"] == "dataset-b"
    assert other["previous_champion"] == 1 and other["previous_champion_dataset"] == "dataset-a"
    assert other["decision"].startswith(f"{name} version 2 was trained on dataset dataset-b, the champion (version 1) "
                                        f"on dataset-a: their scores are not comparable, so the champion stays")
    assert [r.getMessage() for r in caplog.records] == [other["decision"]]
    assert aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 1}
    assert store[1].get_model_version(name, "2").tags[registry.DATASET_TAG] == "dataset-b"

    worse = register(store, name, 0.29, dataset="dataset-a")
    assert not worse["promoted"] and "does not beat the champion (version 1) on dataset dataset-a" in worse["decision"]
    better = register(store, name, 0.31, dataset="dataset-a")
    assert better["promoted"] and better["decision"] == (f"{name} version 4 beats the champion (version 1) on dataset "
                                                         f"dataset-a: validation NDCG@100 0.3100 vs 0.3000")
    assert aliases(store[1], name) == {CANDIDATE: 4, CHAMPION: 4}
    assert [row["dataset"] for row in registry.versions(store[1], name)] == ["dataset-a", "dataset-b", "dataset-a",
                                                                             "dataset-a"]


def test_a_champion_without_a_recorded_dataset_is_not_displaced(store, name):
    """A champion registered before versions recorded their dataset: nothing to compare with."""
    _, client, experiment = store
    run_id = training_run(client, experiment, 0.1)
    client.create_registered_model(name)
    legacy = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id,
                                         tags={registry.SCORE_TAG: "0.100000"})
    client.set_registered_model_alias(name, CHAMPION, legacy.version)
    result = register(store, name, 0.5)
    assert not result["promoted"] and "the champion (version 1) on an unrecorded dataset" in result["decision"]
    assert aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 1}


@pytest.mark.parametrize("quoted", ["o'brien", 'say "hi"', """it's "quoted" """.strip(), "50%_off'"])
def test_quotes_in_a_model_name_do_not_break_the_cli(store, quoted):
    """MLflow's filter strings have no escape for quotes; every command still finds the versions."""
    register(store, quoted, 0.30)
    register(store, quoted, 0.20)
    register(store, quoted.replace("'", "x").replace('"', "x"), 0.40)  # a name the LIKE fallback also matches
    code, out, err = cli(store, "--name", quoted, "list")
    assert code == 0, err
    assert [(row["version"], row["aliases"]) for row in json.loads(out)] == [(1, [CHAMPION]), (2, [CANDIDATE])]
    code, out, err = cli(store, "--name", quoted, "lineage", "2")
    assert code == 0 and json.loads(out)["version"] == 2, err
    code, _, err = cli(store, "--name", quoted, "promote", "3")
    assert code == 2 and f"model {quoted!r} has no version 3; versions: [1, 2]" in err


def test_a_better_version_takes_champion(store, name):
    register(store, name, 0.30)
    register(store, name, 0.20)
    result = register(store, name, 0.40)
    assert result["version"] == 3 and result["promoted"] and result["previous_champion"] == 1
    assert aliases(store[1], name) == {CANDIDATE: 3, CHAMPION: 3}


def test_versions_are_never_overwritten(store, name):
    sources = [f"file:///models/fake-{i}" for i in range(3)]
    results = [register(store, name, score, uri) for score, uri in zip([0.3, 0.5, 0.1], sources)]
    register(store, name, 0.2, sources[0])  # the same model again: a new version too
    assert [r["version"] for r in results] == [1, 2, 3]
    found = {int(v.version): v.source for v in store[1].search_model_versions(f"name='{name}'")}
    assert found == {1: sources[0], 2: sources[1], 3: sources[2], 4: sources[0]}
    assert [row["version"] for row in registry.versions(store[1], name)] == [1, 2, 3, 4]


def cli(store, *args: str) -> tuple[int, str, str]:
    """``python -m recoder_dist.registry --tracking-uri STORE ...`` in this process (the process
    itself, ``sys.exit(main())``, is run once below: its start-up costs seconds)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = registry.main(["--tracking-uri", store[0], *args])
    return code, out.getvalue(), err.getvalue()


def test_cli_lists_promotes_demotes_and_shows_lineage(store, name):
    register(store, name, 0.30)
    register(store, name, 0.20)
    done = subprocess.run([sys.executable, "-m", "recoder_dist.registry", "--tracking-uri", store[0], "--name", name,
                           "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(row["version"], row["aliases"]) for row in listed] == [(1, [CHAMPION]), (2, [CANDIDATE])]
    assert listed[0]["val_ndcg_at_100"] == pytest.approx(0.3)
    assert listed[0]["test_ndcg_at_100"] == pytest.approx(0.29)

    code, out, _ = cli(store, "--name", name, "promote", "2")
    assert code == 0 and json.loads(out) == {"name": name, "alias": CHAMPION, "version": 2}
    assert aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 2}
    code, out, _ = cli(store, "--name", name, "promote", "1", "--alias", "staging")
    assert code == 0 and aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 2, "staging": 1}
    code, out, _ = cli(store, "--name", name, "demote", CANDIDATE)
    assert code == 0 and json.loads(out) == {"name": name, "removed_alias": CANDIDATE}
    assert aliases(store[1], name) == {CHAMPION: 2, "staging": 1}

    code, out, _ = cli(store, "--name", name, "lineage", "staging")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 1 and shown["status"] == "FINISHED"
    assert shown["run_id"] == store[1].get_model_version(name, "1").run_id
    assert shown["dataset"] == {"num_items": "400", "fingerprint": "abc123"}
    assert shown["config"] == {"train.lr": "0.001", "model.hidden_sizes": "[64]"}
    code, out, _ = cli(store, "--name", name, "lineage", "2")
    assert code == 0 and json.loads(out)["version"] == 2


@pytest.mark.parametrize("args, needle, existing", [
    (["--name", "no-such-model", "list"], "no registered model named 'no-such-model'; registered models: ", "{name!r}"),
    (["--name", "no-such-model", "lineage", "champion"], "no registered model named 'no-such-model'", "{name!r}"),
    (["lineage", "gold"], "model {name!r} has no alias 'gold'; aliases: ", "'candidate': 2, 'champion': 1"),
    (["demote", "gold"], "model {name!r} has no alias 'gold'; aliases: ", "'candidate': 2, 'champion': 1"),
    (["promote", "7"], "model {name!r} has no version 7; versions: ", "[1, 2]"),
    (["lineage", "7"], "model {name!r} has no version 7; versions: ", "[1, 2]"),
], ids=["list-model", "lineage-model", "lineage-alias", "demote-alias", "promote-version", "lineage-version"])
def test_cli_bad_lookups_exit_2_naming_what_exists(store, name, args, needle, existing):
    register(store, name, 0.30)
    register(store, name, 0.20)
    code, out, err = cli(store, *(args if "--name" in args else ["--name", name, *args]))
    assert code == 2 and out == ""
    assert err.startswith("registry: error: "), err
    assert needle.format(name=name) in err and existing.format(name=name) in err, err
    assert aliases(store[1], name) == {CANDIDATE: 2, CHAMPION: 1}  # nothing changed


def test_cli_reads_the_store_from_the_config_and_the_environment_wins(store, name, tmp_path, monkeypatch):
    from recoder_dist.config import CONF_DIR

    register(store, name, 0.30)
    config = tmp_path / "store.yaml"
    config.write_text(f"base: {CONF_DIR / 'default.yaml'}\nmlflow:\n  tracking_uri: {store[0]}\n")
    monkeypatch.chdir(tmp_path)  # the default store (sqlite:///mlflow.db) would be created here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = registry.main(["--config", str(config), "--name", name, *args])
        return code, out.getvalue(), err.getvalue()

    code, out, err = run("list")
    assert code == 0, err
    assert [row["version"] for row in json.loads(out)] == [1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    code, _, err = run("list")
    assert code == 2 and f"no registered model named {name!r}" in err


def test_cli_takes_the_model_name_from_the_config_unless_given(store, name, tmp_path, monkeypatch):
    from recoder_dist.config import CONF_DIR

    register(store, name, 0.30)
    register(store, "another-" + name, 0.30)
    register(store, "another-" + name, 0.40)
    config = tmp_path / "named.yaml"
    config.write_text(f"base: {CONF_DIR / 'default.yaml'}\nmlflow:\n  tracking_uri: {store[0]}\n"
                      f"  registered_model: {name}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def versions_listed(*args: str) -> list[int]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = registry.main(["--config", str(config), *args, "list"])
        assert code == 0, err.getvalue()
        return [row["version"] for row in json.loads(out.getvalue())]

    assert versions_listed() == [1]  # mlflow.registered_model of the config
    assert versions_listed("--name", "another-" + name) == [1, 2]  # --name wins


def test_lineage_masks_store_passwords_even_of_runs_logged_unmasked(store, name):
    _, client, experiment = store
    secret = "hunter2-pw"
    run_id = training_run(client, experiment, 0.2)
    client.log_param(run_id, "mlflow.tracking_uri", f"postgresql://alice:{secret}@db.example/mlflow")
    client.set_tag(run_id, "store", f"https://alice:{secret}@mlflow.example")
    registry.register(client, name, f"runs:/{run_id}/model", run_id, 0.3, "data-a")
    code, out, err = cli(store, "--name", name, "lineage", "champion")
    assert code == 0, err
    assert secret not in out
    shown = json.loads(out)
    assert shown["config"]["mlflow.tracking_uri"] == "postgresql://alice:***@db.example/mlflow"
    assert shown["tags"]["store"] == "https://alice:***@mlflow.example"
