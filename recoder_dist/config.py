"""The one typed configuration object, loaded from ``conf/*.yaml`` with ``section.key=value`` overrides.

The dataclasses are the schema; OmegaConf (structured configs) merges the layers over them, in
order: the dataclass defaults, the chain of ``base:`` files a config extends, the file itself,
the command-line overrides; it rejects unknown keys and values of the wrong type. Its errors
come back as :class:`ConfigError` naming the file (or the command line), the key and the value.
:func:`validate` adds the checks a type cannot express.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

from pipeline.config import DUPLICATES, PrepareConfig, SyntheticConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


@dataclass
class ModelConfig:
    """The autoencoder (Recoder's options)."""

    hidden_sizes: List[int] = field(default_factory=lambda: [200])
    activation: str = "tanh"  # a key of recoder_dist.models.ACTIVATIONS
    tied: bool = False
    input_dropout: float = 0.5
    bottleneck_dropout: float = 0.0
    variational: bool = False  # Mult-VAE: the bottleneck is a sampled Gaussian (needs >= 2 hidden_sizes; train.kl_max)


@dataclass
class TrainConfig:
    """Optimisation, sampling, distribution and evaluation of ``recoder_dist.train``."""

    loss: str = "multinomial"  # a key of recoder_dist.losses.LOSSES
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
    item_optimizer: str = "lazy_adam"  # lazy_adam | rowwise_adagrad (row-sparse) | adam (dense): item tables (recoder_dist.optim)
    item_lr: float = 0.0  # learning rate of the item tables; 0: train.lr
    milestones: List[int] = field(default_factory=lambda: [60, 80])
    gamma: float = 0.1
    warmup_epochs: int = 0  # warmup_cosine: epochs of linear warm-up before the cosine
    lr_floor: float = 0.0  # warmup_cosine: the last epochs' rate, as a fraction of lr
    patience: int = 0  # stop after this many evaluations without a better validation NDCG@100; 0: never
    logq_correction: bool = False  # batch union: subtract log P(item in the union) from its logits (losses.union_log_inclusion)
    kl_max: float = 0.2  # model.variational: the KL term's final weight (Liang et al.'s anneal cap)
    kl_anneal_steps: int = 2000  # model.variational: steps of linear growth of the KL weight from 0 to kl_max
    grad_exchange: str = "dense"  # one of recoder_dist.distributed.EXCHANGES
    dtype: str = "float32"  # float32 | bfloat16 (autocast; float32 where bf16 is emulated, recoder_dist.precision)
    force_dtype: bool = False  # keep train.dtype=bfloat16 even where the device only emulates it
    eval_every: int = 1
    eval_batch_size: int = 1000
    seed: int = 1234
    threads: int = 0  # torch threads per rank; 0: cores / local ranks
    reader_pool: str = "thread"  # petastorm pool: thread | process
    reader_pool_size: int = 2  # petastorm pool's threads or processes (not the ranks: distributed.Workers)
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


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then ``conf/default.yaml`` (or ``path``, which may name a ``base:`` file), then overrides."""
    merged = OmegaConf.structured(Config)
    for origin, layer in _layers(Path(path) if path else CONF_DIR / "default.yaml"):
        merged = _merge(merged, layer, str(origin))
    merged = _merge(merged, _dotlist(overrides), "command line")
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # an ${interpolation} that does not resolve
        raise ConfigError(_explain(error)) from None
    validate(config)
    return config


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str],
                       config_help: str = "YAML config (default: conf/default.yaml)",
                       overrides_help: str = "config overrides, e.g. train.lr=0.01") -> argparse.Namespace:
    """Add ``--config FILE`` and the ``section.key=value`` overrides to an entry point's ``parser``
    and parse ``argv``: options and overrides may come in any order (``--data D a.b=1 --config C
    c.d=2``); the overrides apply over the file wherever they stand. ``args.config`` and
    ``args.overrides`` are :func:`load_config`'s arguments."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=overrides_help)
    return parser.parse_intermixed_args(argv)


def parse_overrides(pairs: Sequence[str]) -> dict:
    """Turn ``["train.lr=0.01", "model.hidden_sizes=[600,200]"]`` into a nested dict (YAML values)."""
    return OmegaConf.to_container(_dotlist(pairs))


def _dotlist(pairs: Sequence[str]) -> DictConfig:
    """The overrides as one layer; values are read as YAML (``[600, 200]``, ``null``, ``1e-4``)."""
    layer = OmegaConf.create()
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {pair!r} must look like section.key=value, e.g. train.lr=0.01")
        try:
            layer.merge_with_dotlist([pair])
        except (OmegaConfBaseException, yaml.YAMLError) as error:
            raise ConfigError(f"override {pair!r} is not a readable value: {error}") from None
    return layer


def _layers(path: Path) -> list[tuple[Path, DictConfig]]:
    """The file and the chain of ``base:`` files it extends, base first, each read."""
    chain: list[tuple[Path, DictConfig]] = []
    while path is not None:
        path = path.resolve()  # a base reached through ../ must still be seen as a cycle
        if path in [seen for seen, _ in chain]:
            raise ConfigError(f"{path}: circular base")
        layer, base = _read_yaml(path)
        chain.append((path, layer))
        path = (path.parent / base) if base else None
    return list(reversed(chain))


def _read_yaml(path: Path) -> tuple[DictConfig, str | None]:
    """One layer (a mapping of sections) and the ``base:`` file it names, if any."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (configs live in {CONF_DIR})")
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = data.pop("base", None)
    for section, values in data.items():
        if not isinstance(values, DictConfig):
            raise ConfigError(f"{path}: section {section!r} must be a mapping, got {values!r}")
    return data, base


def _merge(merged: DictConfig, layer: DictConfig, origin: str) -> DictConfig:
    """``layer`` over ``merged``, type-checked against the schema by OmegaConf."""
    try:
        result = OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: {_explain(error)}") from None
    for section, values in OmegaConf.to_container(layer).items():  # OmegaConf reads 1 and "yes" as true
        for key, value in values.items():
            if _declared(f"{section}.{key}") is bool and not isinstance(value, bool) \
                    and not OmegaConf.is_interpolation(layer[section], key):
                raise ConfigError(f"{origin}: {section}.{key} must be {_KINDS[bool]}, got {value!r}")
    return result


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _explain(error: OmegaConfBaseException) -> str:
    """OmegaConf's error as ``key must be KIND, got VALUE`` (or the unknown key and the known ones)."""
    key = error.full_key
    if isinstance(error, ConfigKeyError):
        section, _, name = key.partition(".")
        if not name:
            return f"unknown section {section!r} (known: {', '.join(_fields(Config))})"
        return f"unknown key {key} (known: {', '.join(_fields(_declared(section)))})"
    if isinstance(error, InterpolationResolutionError):
        return f"{key}: {error.msg.splitlines()[0]}"
    if error.value is None:
        return f"{key} must not be null"
    kind = _KINDS.get(typing.get_origin(_declared(key)) or _declared(key))
    return f"{key} must be {kind}, got {error.value!r}" if kind else f"{key}: {error.msg.splitlines()[0]}"


def _declared(key: str) -> Any:
    """The declared type of ``section``, ``section.key`` or an element ``section.key[i]``, Optional unwrapped."""
    kind: Any = Config
    for part in key.split("."):
        name, element, _ = part.partition("[")
        kind = typing.get_type_hints(kind)[name]
        if typing.get_origin(kind) is Union:  # Optional[X]
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if element:
            kind = typing.get_args(kind)[0]
    return kind


def _fields(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def validate(config: Config) -> None:
    """Cross-field checks with messages that say how to fix the value. The names a setting may take
    are read from the modules that implement them (which import torch: here, not at import)."""
    from recoder_dist.distributed import EXCHANGES
    from recoder_dist.losses import LOSSES, MSE_FORMS
    from recoder_dist.models import ACTIVATIONS
    from recoder_dist.optim import ITEM_OPTIMIZERS
    from recoder_dist.precision import DTYPES
    from recoder_dist.schedule import SCHEDULES

    p, t = config.prepare, config.train
    checks = [
        *[(value in names, f"{key} must be {_one_of(names)}, got {value!r}") for key, value, names in (
            ("prepare.duplicates", p.duplicates, DUPLICATES), ("train.loss", t.loss, tuple(LOSSES)),
            ("train.mse_form", t.mse_form, MSE_FORMS), ("train.grad_exchange", t.grad_exchange, EXCHANGES),
            ("train.dtype", t.dtype, DTYPES), ("train.item_optimizer", t.item_optimizer, ITEM_OPTIMIZERS),
            ("train.lr_schedule", t.lr_schedule, SCHEDULES),
            ("model.activation", config.model.activation, tuple(ACTIVATIONS)))],
        (0 < p.heldout_fraction < 1, "prepare.heldout_fraction must be in (0, 1)"),
        *[(0 < value < 1 or (value >= 1 and value == int(value)),
           f"prepare.{name} must be a fraction in (0, 1) or a whole number of users >= 1, got {value:g}")
          for name, value in (("validation_users", p.validation_users), ("test_users", p.test_users))],
        (p.min_user_interactions >= 1 and p.min_item_interactions >= 1, "minimum counts must be >= 1"),
        (p.max_ranks >= 1 and p.row_groups_per_rank >= 1, "prepare.max_ranks and row_groups_per_rank must be >= 1"),
        (1 <= p.min_rows_per_group <= p.max_rows_per_group,
         "prepare.min_rows_per_group must be >= 1 and <= prepare.max_rows_per_group"),
        (t.item_lr >= 0, "train.item_lr must be >= 0 (0: train.lr)"),
        (t.batch_size >= 1 and t.epochs >= 1, "train.batch_size and train.epochs must be >= 1"),
        (t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (0.0 <= t.lr_floor <= 1.0, "train.lr_floor must be in [0, 1] (a fraction of train.lr)"),
        (t.patience >= 0, "train.patience must be >= 0 (0: no early stopping)"),
        (t.num_neg_samples >= 0, "train.num_neg_samples must be >= 0"),
        (t.eval_every >= 1, f"train.eval_every must be >= 1 (validate every N epochs), got {t.eval_every}"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.num_sampling_users <= 0 or t.num_sampling_users % t.batch_size == 0,
         "train.num_sampling_users must be a multiple of train.batch_size (or 0: one batch per group)"),
        (len(config.model.hidden_sizes) >= 1 and all(h > 0 for h in config.model.hidden_sizes),
         f"model.hidden_sizes must be a non-empty list of positive sizes, got {config.model.hidden_sizes}"),
        (not config.model.variational or len(config.model.hidden_sizes) >= 2,
         "model.variational needs at least two model.hidden_sizes (the last is the Gaussian latent, e.g. [600, 200])"),
        (t.kl_max >= 0 and t.kl_anneal_steps >= 0, "train.kl_max and train.kl_anneal_steps must be >= 0"),
        (not t.logq_correction or (not t.full and t.num_neg_samples == 0),
         "train.logq_correction corrects the batch union's sampling: it needs train.full=false and "
         "train.num_neg_samples=0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _one_of(names: Sequence[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def dumps(config: Config) -> str:
    """The resolved config as YAML (saved next to outputs so a run can be repeated)."""
    return OmegaConf.to_yaml(config)
