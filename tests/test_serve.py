"""``mlflow models serve -m models:/NAME@champion --env-manager local`` answers like the pyfunc model.

The server listens on a free loopback port, every wait is bounded, and its process group is
always terminated.
"""
from __future__ import annotations

import urllib.request

import pandas as pd
import pytest

from _cluster import post_json, serve_model
from _data import original_histories, registered_model


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory):
    return registered_model(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """The champion served on 127.0.0.1; yields its base URL."""
    service = serve_model(f"models:/{model.name}@champion", model.tracking_uri, tmp_path_factory.mktemp("serve"))
    try:
        yield service.url
    finally:
        service.stop()


def get(url: str, timeout: float = 5) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


@pytest.fixture(scope="module")
def pyfunc(model):
    return model.load_pyfunc()


def test_server_answers_ping(server):
    assert get(f"{server}/ping") == 200


@pytest.mark.parametrize("params", [{"k": 5}, {"k": 3, "task": "similar"}])
def test_invocations_return_what_the_pyfunc_model_returns(model, server, pyfunc, params):
    histories = list(original_histories(model.data_dir, "test").values())[:5]
    histories += [[], ["no-such-item", histories[0][0]]]
    status, body = post_json(f"{server}/invocations", {"dataframe_records": [{"items": h} for h in histories],
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
    status, body = post_json(f"{server}/invocations", {"dataframe_records": [record], "params": params})
    assert status == 400, body
    assert message in body["message"] and "unexpected error" not in body["message"]
