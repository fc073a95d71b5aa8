"""``mlflow models serve -m models:/NAME@champion --env-manager local`` answers like the pyfunc model.

The server listens on a free loopback port, every wait is bounded, and its process group is
always terminated.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from _data import original_histories, registered_model, stop_process_group

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory):
    return registered_model(spark, tmp_path_factory.getbasetemp())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, timeout: float = 5) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def post(url: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """The champion served on 127.0.0.1; yields its base URL."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri, "OMP_NUM_THREADS": "1"}
    log = folder / "serve.log"
    with open(log, "w") as output:
        process = subprocess.Popen([str(MLFLOW), "models", "serve", "-m", f"models:/{model.name}@champion",
                                    "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                                   cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /ping answer in 120 s:\n{log.read_text()[-3000:]}"
            try:
                if get(f"{url}/ping", timeout=2) == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        yield url
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def pyfunc(model):
    return model.load_pyfunc()


def test_server_answers_ping(server):
    assert get(f"{server}/ping") == 200


@pytest.mark.parametrize("params", [{"k": 5}, {"k": 3, "task": "similar"}])
def test_invocations_return_what_the_pyfunc_model_returns(model, server, pyfunc, params):
    histories = list(original_histories(model.data_dir, "test").values())[:5]
    histories += [[], ["no-such-item", histories[0][0]]]
    status, body = post(f"{server}/invocations", {"dataframe_records": [{"items": h} for h in histories],
                                                  "params": params})
    assert status == 200, body
    expected = pyfunc.predict(pd.DataFrame({"items": histories}), params=params)
    predictions = body["predictions"]
    assert len(predictions) == len(histories)
    for got, (_, want) in zip(predictions, expected.iterrows()):
        assert got["recommended"] == list(want["recommended"]) and len(got["recommended"]) == params["k"]
        assert got["scores"] == pytest.approx(list(want["scores"]), rel=1e-5, abs=1e-6)
        assert got["unknown_items"] == want["unknown_items"]
    assert [p["unknown_items"] for p in predictions][-2:] == [0, 1]


@pytest.mark.parametrize("record, params, message", [
    ({"items": ["1"]}, {"k": 5, "task": "nonsense"}, "unknown task 'nonsense'; choose one of recommend, similar"),
    ({"items": ["1"]}, {"k": 0}, "param k must be an integer >= 1 (recommendations per row), got 0"),
    ({"items": ["1"]}, {"k": -3}, "param k must be an integer >= 1"),
    ({"items": ["1", "2"], "values": [1.0, float("nan")]}, {"k": 5}, "row 0: values must be finite numbers, got nan"),
    ({"items": ["1", "2"], "values": [float("inf"), 1.0]}, {"k": 5}, "row 0: values must be finite numbers, got inf"),
])
def test_a_bad_request_is_a_400_with_the_models_own_message(server, record, params, message):
    status, body = post(f"{server}/invocations", {"dataframe_records": [record], "params": params})
    assert status == 400, body
    assert message in body["message"] and "unexpected error" not in body["message"]
