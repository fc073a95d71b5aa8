import importlib

import pytest

from recoder_dist.config import CONF_DIR, Config, ConfigError, dumps, load_config, parse_overrides


def test_defaults_load_from_default_yaml():
    config = load_config()
    assert isinstance(config, Config)
    assert config.synthetic.num_users == 3000 and config.synthetic.num_items == 1000
    assert config.prepare.rating_threshold == 3.5 and isinstance(config.prepare.rating_threshold, float)
    assert config.prepare.binarize is True
    assert config.prepare.duplicates == "max"
    assert config.prepare.min_user_interactions == 5
    assert config.prepare.max_ranks == 8 and config.prepare.max_rows_per_group == 10000  # YAML; dataclass default
    assert config.model.hidden_sizes == [200]
    assert config.train.loss == "mse" and config.train.confidence == pytest.approx(1.5)
    assert config.train.lr_schedule == "warmup_cosine" and config.train.warmup_epochs == 2
    assert config.train.weight_decay == pytest.approx(2e-5)


def test_base_chain_ml20m_extends_default():
    config = load_config(CONF_DIR / "ml-20m.yaml")
    # from ml-20m.yaml
    assert (config.prepare.user_col, config.prepare.item_col) == ("userId", "movieId")
    assert config.prepare.validation_users == 10000.0 and config.prepare.test_users == 10000.0
    assert config.train.batch_size == 500 and config.train.loss == "mse"
    assert config.train.lr_schedule == "warmup_cosine" and config.train.patience == 3
    # inherited from default.yaml (differs from the dataclass default)
    assert config.prepare.duplicates == "max"
    assert config.synthetic.num_users == 3000


def test_base_chain_of_three_files_and_relative_base(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: " + str(CONF_DIR / "default.yaml") + "\ntrain:\n  epochs: 3\n  lr: 0.5\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ntrain:\n  epochs: 4\n")
    config = load_config(tmp_path / "sub" / "b.yaml")
    assert config.train.epochs == 4  # child wins
    assert config.train.lr == 0.5  # middle layer
    assert config.prepare.min_user_interactions == 5  # default.yaml


def test_circular_base_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: ../" + tmp_path.name + "/a.yaml\n")
    with pytest.raises(ConfigError, match="circular base"):
        load_config(tmp_path / "a.yaml")


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_use_yaml_typing():
    config = load_config(None, [
        "model.hidden_sizes=[600, 200]",
        "prepare.rating_threshold=null",
        "prepare.value_col=",
        "prepare.validation_users=250",
        "train.lr=0.01",
        "train.weight_decay=1e-4",
        "model.tied=true",
        "prepare.user_col=userId",
        "train.milestones=[2]",
    ])
    assert config.model.hidden_sizes == [600, 200]
    assert config.prepare.rating_threshold is None
    assert config.prepare.value_col is None
    assert config.prepare.validation_users == 250.0 and type(config.prepare.validation_users) is float
    assert config.train.lr == 0.01
    assert config.train.weight_decay == pytest.approx(1e-4) and type(config.train.weight_decay) is float
    assert config.model.tied is True
    assert config.prepare.user_col == "userId"
    assert config.train.milestones == [2]


def test_parse_overrides_nests_sections():
    assert parse_overrides(["a.b=1", "a.c=x", "d.e=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": {"e": [1, 2]}}


@pytest.mark.parametrize("override, message", [
    ("nosuch.key=1", "unknown section 'nosuch'"),
    ("prepare.nosuch=1", "unknown key prepare.nosuch"),
    ("prepare.min_user_interactions=abc", "prepare.min_user_interactions must be an integer, got 'abc'"),
    ("prepare.min_user_interactions=2.5", "prepare.min_user_interactions must be an integer, got 2.5"),
    ("prepare.rating_threshold=high", "prepare.rating_threshold must be a number, got 'high'"),
    ("prepare.binarize=1", "prepare.binarize must be true or false, got 1"),
    ("prepare.user_col=null", "prepare.user_col must not be null"),
    ("prepare.user_col=[a]", "prepare.user_col must be a string"),
    ("model.hidden_sizes=200", "model.hidden_sizes must be a list, got 200"),
    ("model.hidden_sizes=[a, 2]", "model.hidden_sizes[0] must be an integer, got 'a'"),
    ("model.hidden_sizes=[200, 0]", "model.hidden_sizes must be a non-empty list of positive sizes, got [200, 0]"),
    ("model.hidden_sizes=[]", "model.hidden_sizes must be a non-empty list of positive sizes, got []"),
    ("train.milestones=[6, 8.5]", "train.milestones[1] must be an integer, got 8.5"),
    ("train.epochs=true", "train.epochs must be an integer, got True"),
    ("prepare.duplicates=first", "prepare.duplicates must be sum, max or last"),
    ("prepare.heldout_fraction=1", "prepare.heldout_fraction must be in"),
    ("train.num_sampling_users=150", "train.num_sampling_users must be a multiple of train.batch_size"),
    ("train.mse_form=sparse", "train.mse_form must be gramian or dense"),
    ("prepare.validation_users=0", "prepare.validation_users must be a fraction in (0, 1) or a whole number of users >= 1, got 0"),
    ("prepare.test_users=-0.1", "prepare.test_users must be a fraction in (0, 1) or a whole number"),
    ("prepare.validation_users=2.5", "prepare.validation_users must be a fraction in (0, 1) or a whole number of users >= 1, got 2.5"),
    ("train.eval_every=0", "train.eval_every must be >= 1 (validate every N epochs), got 0"),
    ("trainlr=1", "must look like section.key=value"),
    ("train.lr", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=_literal(message)):
        load_config(None, [override])


@pytest.mark.parametrize("key, module, names", [
    ("train.loss", "recoder_dist.losses", "LOSSES"),
    ("train.mse_form", "recoder_dist.losses", "MSE_FORMS"),
    ("train.grad_exchange", "recoder_dist.distributed", "EXCHANGES"),
    ("train.dtype", "recoder_dist.precision", "DTYPES"),
    ("train.item_optimizer", "recoder_dist.optim", "ITEM_OPTIMIZERS"),
    ("train.lr_schedule", "recoder_dist.schedule", "SCHEDULES"),
    ("model.activation", "recoder_dist.models", "ACTIVATIONS"),
    ("prepare.duplicates", "pipeline.config", "DUPLICATES"),
])
def test_names_come_from_the_implementing_module(key, module, names):
    names = list(getattr(importlib.import_module(module), names))
    assert len(names) >= 2
    section, field = key.split(".")
    for name in names:  # every implemented name is accepted ...
        assert getattr(getattr(load_config(None, [f"{key}={name}"]), section), field) == name
    with pytest.raises(ConfigError) as error:  # ... and a wrong one is refused, listing them all
        load_config(None, [f"{key}=nosuch"])
    assert str(error.value) == f"{key} must be {', '.join(names[:-1])} or {names[-1]}, got 'nosuch'"


def test_unknown_key_in_a_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: " + str(CONF_DIR / "default.yaml") + "\nprepare:\n  min_users: 3\n")
    with pytest.raises(ConfigError, match=_literal(f"{path}: unknown key prepare.min_users")):
        load_config(path)


def test_wrong_type_in_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prepare:\n  max_ranks: many\n")
    with pytest.raises(ConfigError, match="prepare.max_ranks must be an integer, got 'many'"):
        load_config(path)


def test_wrong_type_in_a_base_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("prepare:\n  binarize: 1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=_literal(f"{tmp_path / 'base.yaml'}: prepare.binarize must be true or false, got 1")):
        load_config(tmp_path / "child.yaml")


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=_literal(f"{path}: section 'train' must be a mapping, got 5")):
        load_config(path)


def test_the_last_override_of_a_key_wins():
    config = load_config(None, ["train.epochs=3", "train.lr=0.5", "train.epochs=4"])
    assert (config.train.epochs, config.train.lr) == (4, 0.5)


def test_dumps_round_trips(tmp_path):
    config = load_config(CONF_DIR / "ml-20m.yaml", ["train.lr=0.002"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dumps(config))
    assert load_config(path) == config


@pytest.mark.parametrize("name", sorted(p.name for p in CONF_DIR.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    load_config(CONF_DIR / name)


def _literal(text: str) -> str:
    import re
    return re.escape(text)
