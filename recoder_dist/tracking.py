"""MLflow tracking for training runs (rank 0 only): params, per-epoch metrics, artifacts, model.

One training run is one MLflow run; a run resumed with ``--resume`` reopens the same MLflow
run (its id is kept in the checkpoint); a crashed run is marked FAILED, one stopped by a signal
(Ctrl-C, or the SIGTERM horovodrun and schedulers send) KILLED. A FINISHED run is never reopened.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.manifest import dataset_id
from recoder_dist.checkpoint import CONTINUE_FINISHED, ResumeError
from recoder_dist.config import Config, MlflowConfig, dumps
from recoder_dist.metrics import METRICS, SELECTION_METRIC
from recoder_dist.mlflow_uri import mask
from recoder_dist import mlflow_model, registry

if TYPE_CHECKING:  # the trainer (and with it Horovod) is not imported to record a run
    from recoder_dist.trainer import TrainResult

METRIC_NAMES = {"train_loss", "users_per_s", "epoch_s", "target_size", *(f"val_{name}" for name in METRICS)}


def configure(config: MlflowConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = experiment_location(config.tracking_uri, config.artifact_location)
        experiment_id = mlflow.create_experiment(config.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def experiment_location(tracking_uri: str, artifact_location: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: ``artifact_location`` when it is a URI
    (``s3://…``); a local path only for a local store. Against a tracking server (``http(s)://``)
    a local path would leave the artifacts on the training host, so the server's own root is used
    (``None``; proxied ``mlflow-artifacts:`` with ``mlflow server --artifacts-destination``)."""
    if "://" in artifact_location:
        return artifact_location
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return Path(artifact_location).resolve().as_uri()


class MlflowTracker:
    """Records one training run in MLflow and registers its model."""

    def __init__(self, config: Config, manifest: dict, data_dir: str, ranks: int, device: str,
                 run_id: Optional[str] = None, history: Sequence[dict] = (), init_from: Optional[Path] = None) -> None:
        """``run_id`` and ``history`` (the epochs recorded in the checkpoint) resume a run;
        ``init_from`` (the run folder a new run starts from) is recorded as a tag."""
        self.resumed_status = _resumable_status(config.mlflow.tracking_uri, run_id) if run_id else None
        configure(config.mlflow)
        self.config, self.manifest = config, manifest
        self.epochs_logged = 0
        self.run = mlflow.start_run(run_id=run_id, log_system_metrics=False)
        self.run_id = self.run.info.run_id
        if run_id is not None:
            self._backfill(history)
        else:
            mlflow.log_params(run_params(config))
            mlflow.log_params({
                "data.path": str(Path(data_dir).resolve()), "data.fingerprint": manifest["source"].get("fingerprint"),
                "data.dataset_id": dataset_id(manifest),
                "data.schema_version": manifest["schema_version"], "data.num_items": manifest["num_items"],
                **{f"data.num_users.{k}": v for k, v in manifest["num_users"].items()},
                "data.nnz_train": manifest["nnz"]["train"]["items"]})
            mlflow.set_tags({"git_commit": _git_commit(), "ranks": ranks, "device": device,
                             **({"init_from": str(Path(init_from).resolve())} if init_from else {})})

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in metrics.items() if k in METRIC_NAMES}, step=epoch)
        self.epochs_logged += 1

    def _backfill(self, history: Sequence[dict]) -> None:
        """Log the checkpointed epochs the run lacks: a kill between writing an epoch's
        checkpoint and logging its metrics would otherwise leave a gap in the curves."""
        logged = {m.step for m in MlflowClient().get_metric_history(self.run_id, "train_loss")}
        for record in history:
            if record["epoch"] not in logged:
                mlflow.log_metrics({k: v for k, v in record.items() if k in METRIC_NAMES}, step=record["epoch"])

    def finish(self, result: TrainResult) -> dict:
        """Log test metrics and artifacts, log and register the best model (``result.model``: the best
        weights with the item ids); returns the registration."""
        mlflow.log_metrics({f"test_{k}": v for k, v in result.test.items()})
        mlflow.log_metrics({f"best_val_{k}": v for k, v in result.best_validation.items()})
        mlflow.log_metric("best_epoch", result.best_epoch)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "config.yaml").write_text(dumps(shown(self.config)))
            (out / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
            (out / "test_metrics.json").write_text(json.dumps(result.test, indent=2))
            plot_curves(result.history, out / "training_curves.png")
            for name in ("config.yaml", "manifest.json", "test_metrics.json", "training_curves.png"):
                mlflow.log_artifact(str(out / name))
        info = mlflow_model.log_model(result.model)
        val_ndcg = result.best_validation.get(SELECTION_METRIC, float("nan"))
        registration = registry.register(MlflowClient(), self.config.mlflow.registered_model, info.model_uri,
                                         self.run_id, val_ndcg, dataset_id(self.manifest), model_id=info.model_id)
        mlflow.set_tags({"registered_model": registration["name"], "registered_version": registration["version"],
                         "checkpoint_dir": str(Path(result.best_checkpoint).parent)})
        mlflow.end_run("FINISHED")
        return registration

    def fail(self, status: str = "FAILED") -> None:
        """End the run as ``status`` (FAILED, or KILLED when stopped by a signal), except a resume
        rejected before its first epoch (e.g. other settings than the checkpoint's): that leaves
        the resumed run's status as it was."""
        unchanged = self.resumed_status in {"FAILED", "KILLED"} and not self.epochs_logged
        mlflow.end_run(self.resumed_status if unchanged else status)


def _resumable_status(tracking_uri: str, run_id: str) -> str:
    """The status of the run a checkpoint continues; ResumeError when the store does not hold
    it or it is FINISHED (``--resume`` continues only unfinished runs)."""
    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ResumeError(f"--resume: the checkpoint continues MLflow run {run_id}, which the configured tracking "
                          f"store (mlflow.tracking_uri or $MLFLOW_TRACKING_URI: {mask(tracking_uri)}) does not hold: "
                          f"resume against the store that run was tracked in, or train without --resume") from None
    if run.info.status == "FINISHED":
        raise ResumeError(f"--resume: MLflow run {run_id} is FINISHED. {CONTINUE_FINISHED}")
    return run.info.status


def run_params(config: Config) -> dict[str, str]:
    """The resolved config as MLflow params (``section.key``), credentials masked; not the
    ``synthetic`` generator's settings: they made an input file (``data.fingerprint`` names it),
    not the run, and the train command's copy need not be the one that made it."""
    return {k: _param(v) for k, v in shown(config).flat().items() if not k.startswith("synthetic.")}


def shown(config: Config) -> Config:
    """A copy of ``config`` fit to record or print: store URIs with their passwords masked."""
    copy = dataclasses.replace(config, mlflow=dataclasses.replace(config.mlflow))
    copy.mlflow.tracking_uri = mask(config.mlflow.tracking_uri)
    copy.mlflow.artifact_location = mask(config.mlflow.artifact_location)
    return copy


def plot_curves(history: list[dict], path: Path) -> Path:
    """Training loss and validation metrics over epochs, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(frame["epoch"], frame["train_loss"], marker="o")
    left.set(title="train loss", xlabel="epoch", ylabel="loss")
    for column in [c for c in frame.columns if c.startswith("val_")]:
        valid = frame[["epoch", column]].dropna()
        right.plot(valid["epoch"], valid[column], marker="o", label=column.removeprefix("val_"))
    right.set(title="validation", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
