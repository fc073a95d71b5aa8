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


def test_a_command_line_override_of_the_store_counts_as_the_argument():
    env = {"MLFLOW_TRACKING_URI": "sqlite:///env.db"}
    overridden = load_config(None, ["train.epochs=2", "mlflow.tracking_uri=sqlite:///override.db"])
    assert resolve_tracking_uri(None, env, overridden.mlflow.tracking_uri,
                                ["train.epochs=2", "mlflow.tracking_uri=sqlite:///override.db"]) == "sqlite:///override.db"
    assert resolve_tracking_uri("sqlite:///arg.db", env, overridden.mlflow.tracking_uri,
                                ["mlflow.tracking_uri=sqlite:///override.db"]) == "sqlite:///arg.db"
    # another key's override, or the store named only in a file, leaves the environment in charge
    assert resolve_tracking_uri(None, env, "sqlite:///conf.db", ["mlflow.experiment=x"]) == "sqlite:///env.db"


def test_run_params_are_the_config_without_the_synthetic_generator():
    from recoder_dist.tracking import run_params

    config = load_config(None, ["synthetic.num_users=77", "train.epochs=3"])
    params = run_params(config)
    assert not [k for k in params if k.startswith("synthetic.")]
    assert set(params) == {k for k in config.flat() if not k.startswith("synthetic.")}
    assert params["train.epochs"] == "3" and params["model.hidden_sizes"] == "[200]"


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
