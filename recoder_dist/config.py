"""The one typed configuration object, loaded from ``conf/*.yaml`` with ``key=value`` overrides.

Torch-free on purpose: the Spark jobs import it too.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


@dataclass
class SyntheticConfig:
    """Generator of the embedded default dataset: latent user/item factors, Zipf popularity."""

    num_users: int = 3000
    num_items: int = 1000
    mean_interactions: float = 40.0
    num_factors: int = 16
    zipf_exponent: float = 1.0
    seed: int = 7


@dataclass
class PrepareConfig:
    """How ``jobs/prepare.py`` reads, filters, indexes and splits raw interactions."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    value_col: Optional[str] = "rating"
    timestamp_col: Optional[str] = "timestamp"
    csv_delimiter: str = ","
    csv_header: bool = True
    rating_threshold: Optional[float] = None  # keep value > threshold (Liang et al.: 3.5)
    binarize: bool = False  # replace kept values by 1.0
    duplicates: str = "sum"  # how repeated (user, item) pairs merge: sum | max | last
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    max_filter_rounds: int = 50
    validation_users: float = 0.1  # in (0, 1): fraction of users (at least one user); >= 1: a whole count
    test_users: float = 0.1
    heldout_fraction: float = 0.2
    max_ranks: int = 64  # train row groups: max_ranks × (1 to row_groups_per_rank) ...
    row_groups_per_rank: int = 4
    min_rows_per_group: int = 500  # ... fewer per rank while groups would be smaller than this
    max_rows_per_group: int = 10000
    seed: int = 98765


@dataclass
class ModelConfig:
    """The autoencoder (Recoder's options)."""

    hidden_sizes: list = field(default_factory=lambda: [200])
    activation: str = "tanh"
    tied: bool = False
    input_dropout: float = 0.5
    bottleneck_dropout: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation, sampling, distribution and evaluation of ``recoder_dist.train``."""

    loss: str = "multinomial"  # multinomial | mse | logistic
    confidence: float = 3.0  # weighted MSE: w = 1 + confidence * [x > 0]
    mse_form: str = "gramian"  # mse only: gramian (no logits, O((B + |T|)·h²)) | dense (B × |T| logits)
    batch_size: int = 500
    num_sampling_users: int = 0  # users whose item union is the target set; <= 0: batch_size
    num_neg_samples: int = 0  # extra uniform negatives added to the union
    full: bool = False  # score all items (the unsampled baseline)
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 2e-5
    lr_schedule: str = "step"  # step (milestones, gamma) | warmup_cosine (warmup_epochs, lr_floor); recoder_dist.schedule
    item_optimizer: str = "adam"  # adam (dense) | lazy_adam | rowwise_adagrad: item tables (recoder_dist.optim)
    item_lr: float = 0.0  # learning rate of the item tables; 0: train.lr
    milestones: list = field(default_factory=lambda: [60, 80])
    gamma: float = 0.1
    warmup_epochs: int = 0  # warmup_cosine: epochs of linear warm-up before the cosine
    lr_floor: float = 0.0  # warmup_cosine: the last epochs' rate, as a fraction of lr
    patience: int = 0  # stop after this many evaluations without a better validation NDCG@100; 0: never
    grad_exchange: str = "dense"  # dense | sparse | sync_union
    dtype: str = "float32"  # float32 | bfloat16 (autocast; float32 where bf16 is emulated, recoder_dist.precision)
    force_dtype: bool = False  # keep train.dtype=bfloat16 even where the device only emulates it
    eval_every: int = 1
    eval_batch_size: int = 1000
    seed: int = 1234
    threads: int = 0  # torch threads per rank; 0: cores / local ranks
    reader_pool: str = "thread"  # petastorm pool: thread | process
    reader_workers: int = 2
    checkpoint_dir: str = "runs/checkpoints"


@dataclass
class MlflowConfig:
    """Tracking store, experiment and registry names (embedded default: local sqlite)."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlruns"  # a path: local stores only (a server keeps its own root); or a URI
    experiment: str = "recoder"
    registered_model: str = "recoder"
    enabled: bool = True


@dataclass
class Config:
    """Everything one run needs; sections mirror the stages of the pipeline."""

    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def to_dict(self) -> dict:
        """Nested plain dict (what YAML files hold and what MLflow logs)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``section.key -> value`` (for MLflow params)."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(section: str, key: str, value: Any, default: Any, annotation: str) -> Any:
    """Check ``value`` against the field's declared type, converting ints to floats."""
    where = f"{section}.{key}"
    if value is None:
        if "Optional" in annotation:
            return None
        raise ConfigError(f"{where} must not be null")
    if isinstance(default, bool) or annotation == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if "float" in annotation:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-4 as a string, not a float
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if "int" in annotation:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if "str" in annotation:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if annotation == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value


def _apply(config: Config, updates: dict, origin: str) -> None:
    for section, values in updates.items():
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"{origin}: unknown section {section!r} "
                              f"(known: {', '.join(f.name for f in dataclasses.fields(Config))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        target = getattr(config, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{origin}: unknown key {section}.{key} (known: {', '.join(fields)})")
            current = getattr(target, key)
            setattr(target, key, _coerce(section, key, value, current, str(fields[key].type)))


def parse_overrides(pairs: Sequence[str]) -> dict:
    """Turn ``["train.lr=0.01", "model.hidden_sizes=[600,200]"]`` into a nested dict (YAML values)."""
    nested: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {pair!r} must look like section.key=value, e.g. train.lr=0.01")
        section, name = key.strip().split(".", 1)
        nested.setdefault(section, {})[name] = yaml.safe_load(raw) if raw.strip() else None
    return nested


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then ``conf/default.yaml`` (or ``path``, which may name a ``base:`` file), then overrides."""
    config = Config()
    path = Path(path) if path else CONF_DIR / "default.yaml"
    for layer in _layers(path):
        _apply(config, _read_yaml(layer), str(layer))
    _apply(config, parse_overrides(overrides), "command line")
    validate(config)
    return config


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (configs live in {CONF_DIR})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    data.pop("base", None)
    return data


def _layers(path: Path) -> list[Path]:
    """The file and the chain of ``base:`` files it extends, base first."""
    chain: list[Path] = []
    while path is not None:
        path = path.resolve()  # a base reached through ../ must still be seen as a cycle
        if path in chain:
            raise ConfigError(f"{path}: circular base")
        chain.append(path)
        base = (yaml.safe_load(path.read_text()) or {}).get("base") if path.is_file() else None
        path = (path.parent / base) if base else None
    return list(reversed(chain))


def validate(config: Config) -> None:
    """Cross-field checks with messages that say how to fix the value."""
    p, t = config.prepare, config.train
    checks = [
        (p.duplicates in {"sum", "max", "last"}, "prepare.duplicates must be sum, max or last"),
        (0 < p.heldout_fraction < 1, "prepare.heldout_fraction must be in (0, 1)"),
        *[(0 < value < 1 or (value >= 1 and value == int(value)),
           f"prepare.{name} must be a fraction in (0, 1) or a whole number of users >= 1, got {value:g}")
          for name, value in (("validation_users", p.validation_users), ("test_users", p.test_users))],
        (p.min_user_interactions >= 1 and p.min_item_interactions >= 1, "minimum counts must be >= 1"),
        (p.max_ranks >= 1 and p.row_groups_per_rank >= 1, "prepare.max_ranks and row_groups_per_rank must be >= 1"),
        (1 <= p.min_rows_per_group <= p.max_rows_per_group,
         "prepare.min_rows_per_group must be >= 1 and <= prepare.max_rows_per_group"),
        (t.loss in {"multinomial", "mse", "logistic"}, "train.loss must be multinomial, mse or logistic"),
        (t.mse_form in {"gramian", "dense"}, "train.mse_form must be gramian or dense"),
        (t.grad_exchange in {"dense", "sparse", "sync_union"}, "train.grad_exchange must be dense, sparse or sync_union"),
        (t.dtype in {"float32", "bfloat16"}, "train.dtype must be float32 or bfloat16"),
        (t.item_optimizer in {"adam", "lazy_adam", "rowwise_adagrad"},
         "train.item_optimizer must be adam, lazy_adam or rowwise_adagrad"),
        (t.item_lr >= 0, "train.item_lr must be >= 0 (0: train.lr)"),
        (t.batch_size >= 1 and t.epochs >= 1, "train.batch_size and train.epochs must be >= 1"),
        (t.lr_schedule in {"step", "warmup_cosine"}, "train.lr_schedule must be step or warmup_cosine"),
        (t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (0.0 <= t.lr_floor <= 1.0, "train.lr_floor must be in [0, 1] (a fraction of train.lr)"),
        (t.patience >= 0, "train.patience must be >= 0 (0: no early stopping)"),
        (t.num_neg_samples >= 0, "train.num_neg_samples must be >= 0"),
        (t.eval_every >= 1, f"train.eval_every must be >= 1 (validate every N epochs), got {t.eval_every}"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.num_sampling_users <= 0 or t.num_sampling_users % t.batch_size == 0,
         "train.num_sampling_users must be a multiple of train.batch_size (or 0: one batch per group)"),
        (config.model.activation in {"tanh", "relu", "sigmoid", "identity", "elu"},
         "model.activation must be tanh, relu, sigmoid, identity or elu"),
        (len(config.model.hidden_sizes) >= 1
         and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in config.model.hidden_sizes),
         "model.hidden_sizes must be a non-empty list of positive sizes"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def dumps(config: Config) -> str:
    """The resolved config as YAML (saved next to outputs so a run can be repeated)."""
    return yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)
