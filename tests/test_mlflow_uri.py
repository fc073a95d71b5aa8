"""The one tracking-URI rule and credential masking (no store, no Spark)."""
from __future__ import annotations

import pytest
import yaml

from recoder_dist.config import dumps, load_config
from recoder_dist.mlflow_uri import mask, mask_values, resolve_tracking_uri

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("uri, shown", [
    (f"postgresql://alice:{SECRET}@db.example:5432/mlflow", "postgresql://alice:***@db.example:5432/mlflow"),
    (f"mysql+pymysql://bob:{SECRET}@10.0.0.2/mlflow?charset=utf8", "mysql+pymysql://bob:***@10.0.0.2/mlflow?charset=utf8"),
    (f"https://carol:{SECRET}@mlflow.example", "https://carol:***@mlflow.example"),
    (f"postgresql://db/mlflow?user=dave&password={SECRET}", "postgresql://db/mlflow?user=dave&password=***"),
    (f"https://mlflow.example/?token={SECRET}&x=1", "https://mlflow.example/?token=***&x=1"),
    ("postgresql://erin@db/mlflow", "postgresql://erin@db/mlflow"),  # no password: unchanged
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("file:///srv/mlruns", "file:///srv/mlruns"),
    ("mlruns", "mlruns"),
    ("[64]", "[64]"),
])
def test_mask_hides_passwords_only(uri, shown):
    assert mask(uri) == shown
    assert SECRET not in mask(uri)


def test_mask_values_masks_nested_strings_and_keeps_the_rest():
    values = {"mlflow.tracking_uri": f"postgresql://u:{SECRET}@db/m", "train.lr": 0.1, "nested": {"u": f"https://u:{SECRET}@h"}}
    assert mask_values(values) == {"mlflow.tracking_uri": "postgresql://u:***@db/m", "train.lr": 0.1,
                                   "nested": {"u": "https://u:***@h"}}


def test_one_rule_argument_then_environment_then_config():
    env = {"MLFLOW_TRACKING_URI": "sqlite:///env.db"}
    assert resolve_tracking_uri("sqlite:///arg.db", env, "sqlite:///conf.db") == "sqlite:///arg.db"
    assert resolve_tracking_uri(None, env, "sqlite:///conf.db") == "sqlite:///env.db"
    assert resolve_tracking_uri(None, {}, "sqlite:///conf.db") == "sqlite:///conf.db"
    assert resolve_tracking_uri("", {"MLFLOW_TRACKING_URI": ""}, "sqlite:///conf.db") == "sqlite:///conf.db"


def test_run_params_and_the_config_artifact_mask_the_store_password():
    from recoder_dist.tracking import run_params, shown

    uri = f"postgresql://alice:{SECRET}@db/mlflow"
    config = load_config(None, [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location=https://a:{SECRET}@s3/x"])
    params = run_params(config)
    assert params["mlflow.tracking_uri"] == "postgresql://alice:***@db/mlflow"
    assert params["mlflow.artifact_location"] == "https://a:***@s3/x"
    assert not [k for k, v in params.items() if SECRET in v]
    artifact = dumps(shown(config))
    assert SECRET not in artifact and yaml.safe_load(artifact)["mlflow"]["tracking_uri"] == "postgresql://alice:***@db/mlflow"
    assert config.mlflow.tracking_uri == uri  # the run itself still uses the real store
