"""The training loop: feed → batch-union batches → forward/backward → gradient exchange → step.

Runs identically on one process and on every Horovod rank; rank 0 alone logs, checkpoints and
reports to the tracker.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Union

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from pipeline.manifest import DatasetError, read_manifest, verify_files
from recoder_dist import checkpoint
from recoder_dist.allocator import reuse_freed_memory
from recoder_dist.config import Config, TrainConfig
from recoder_dist.csr import column_order
from recoder_dist.distributed import Workers
from recoder_dist.evaluation import METRICS, means, metric_sums, model_scorer
from recoder_dist.feed import HeldoutRows, prefetch, read_heldout, train_rows
from recoder_dist.losses import HiddenLossFn, LossFn, get_hidden_loss, get_loss, union_log_inclusion
from recoder_dist.metrics import SELECTION_METRIC
from recoder_dist.models import RecoderAutoencoder
from recoder_dist.optim import ROW_RULES, build_optimizer
from recoder_dist.precision import training_dtype
from recoder_dist.schedule import evaluations_since_best, kl_weight, lr_scheduler, should_stop
from recoder_dist.sampling import Batch, make_batches, retarget
from recoder_dist.trained import ItemMap, TrainedModel, build_network

log = logging.getLogger("recoder.train")


class Tracker(Protocol):
    """What the trainer reports (rank 0 only); MLflow implements it in ``recoder_dist.tracking``."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    """What a finished run produced."""

    epochs: int  # trained (fewer than train.epochs when early stopping ended the run)
    steps_per_epoch: int
    best_epoch: int
    best_validation: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Optional[Path] = None
    stopped_early: bool = False
    model: Optional[TrainedModel] = None  # rank 0: the best weights with the item ids (what tracking logs); else None


def build_model(num_items: int, config: Config) -> RecoderAutoencoder:
    """The network the trainer trains: ``config.model``'s for a catalogue of ``num_items``, with
    row-sparse item gradients when ``train.item_optimizer`` updates item rows lazily."""
    return build_network(num_items, config.model, sparse=config.train.item_optimizer in ROW_RULES)


def steps_per_epoch(num_train_users: int, batch_size: int, ranks: int) -> int:
    """Steps every rank takes per epoch so that the ranks together see each user about once."""
    return max(1, math.ceil(num_train_users / (batch_size * ranks)))


def shuffle_buffer_users(num_sampling_users: int, shard_users: int) -> int:
    """Users the feed shuffles together: several sampling groups, but at most about one pass of this
    rank's shard (a larger buffer reads several passes before the first batch and mixes them,
    so an epoch would not see each user about once)."""
    return min(max(4 * num_sampling_users, 2048), shard_users)


def _batches(data_dir: str, config: Config, workers: Workers, num_items: int, num_train_users: int,
             first_epoch: int) -> Iterator[Batch]:
    """This rank's endless stream of batches from ``first_epoch`` on, from one Petastorm reader for
    the whole run (see ``recoder_dist.feed``). The seeds derive from ``first_epoch``, so a resumed
    run reads a fresh, seeded order."""
    t = config.train
    sampling_users = t.num_sampling_users if t.num_sampling_users > 0 else t.batch_size
    rng = np.random.default_rng([t.seed, first_epoch, workers.rank])
    shard = max(sampling_users, math.ceil(num_train_users / workers.size))
    rows = train_rows(data_dir, workers.rank, workers.size, seed=t.seed * 1000 + first_epoch,
                      num_sampling_users=sampling_users,
                      shuffle_buffer_users=shuffle_buffer_users(sampling_users, shard), reader_pool=t.reader_pool,
                      reader_pool_size=t.reader_pool_size)
    with contextlib.closing(rows):  # an error in sampling must stop the reader too
        for part in rows:
            yield from make_batches(part, t.batch_size, sampling_users, num_items, t.num_neg_samples, t.full, rng)


# Settings that cannot change the weights a run produces: a resume may change them freely.
NOT_IDENTITY = frozenset({"epochs", "checkpoint_dir", "threads", "reader_pool", "reader_pool_size", "eval_every",
                          "eval_batch_size", "patience", "mse_form"})  # mse_form: the same loss, two ways


def run_identity(config: Config, manifest: dict, ranks: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: what changes the optimisation (the data, the
    model, every training setting but ``NOT_IDENTITY``, and the ranks: each rank's batch and
    shard depend on them, and the global batch is ranks × ``train.batch_size``) and nothing else."""
    return {"data": manifest["source"].get("fingerprint", ""), "created_at": manifest["created_at"],
            "ranks": ranks, "global_batch": ranks * config.train.batch_size, "model": asdict(config.model),
            "train": {k: v for k, v in asdict(config.train).items() if k not in NOT_IDENTITY}}


def _open_run(root: Path, resume: Union[bool, str, Path], identity: dict) -> tuple[Path, Optional[dict]]:
    """Rank 0: the run folder to write and the checkpoint to continue (None: a fresh run).

    ``resume`` is False (a fresh folder), True (the latest unfinished run under ``root``, or a
    fresh one when there is none) or a run folder. Raises ResumeError when it cannot continue."""
    target = checkpoint.resume_target(root, None if resume is True else Path(resume)) if resume else None
    if target is None:
        return checkpoint.new_run_dir(root), None
    state = checkpoint.load(target / checkpoint.LAST)
    if state["identity"] != identity:
        differences = _differences(state["identity"], identity)
        ranks = state["identity"].get("ranks")
        lead = (f"it was written by {ranks} ranks and this run has {identity['ranks']} (resume with horovodrun -np "
                f"{ranks}): " if ranks not in {None, identity["ranks"]} else "")
        raise checkpoint.ResumeError(
            f"{target / checkpoint.LAST} was written for other data or settings ({lead}{'; '.join(differences)}); "
            f"resume with the same settings, or train without --resume")
    return target, state


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: saved vs current`` for every leaf where two identities differ."""
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} in the checkpoint, {new!r} now")
    return found


def _initial_weights(source: Path, identity: dict) -> dict[str, torch.Tensor]:
    """The final weights of the run in folder ``source`` (or its ``last.pt``), checked to be of
    the same data and model; ResumeError otherwise."""
    path = source if source.suffix == ".pt" else source / checkpoint.LAST
    state = checkpoint.load(path)
    if state is None:
        raise checkpoint.ResumeError(f"--init-from {source}: no {path.name} there; give a run folder under "
                                     f"train.checkpoint_dir or its {checkpoint.LAST}")
    saved = {k: state["identity"].get(k) for k in ("data", "created_at", "model")}
    differences = _differences(saved, {k: identity[k] for k in saved})
    if differences:
        raise checkpoint.ResumeError(f"--init-from {path}: its weights are for other data or another model "
                                     f"({'; '.join(differences)}); start from a run of this dataset and model")
    return state["model"]


@dataclass(frozen=True)
class Step:
    """Everything one training step uses besides the batch."""

    model: RecoderAutoencoder
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    item_names: set[str]
    config: Config
    workers: Workers
    autocast: torch.autocast
    device: torch.device
    hidden_loss_fn: Optional[HiddenLossFn] = None  # set: the loss reads model.hidden + target_rows, no logits
    log_q: Optional[torch.Tensor] = None  # train.logq_correction: log P(item in the union), subtracted from its logits

    def __call__(self, batch: Batch, kl_beta: float = 0.0) -> tuple[float, int]:
        """One forward/backward/exchange/update on ``batch``; returns its loss and target-set size.
        ``kl_beta``: the weight of a variational model's KL term (``schedule.kl_weight``)."""
        t = self.config.train
        batch = batch.to(self.device)
        if t.grad_exchange == "sync_union" and batch.target_items is not None:
            batch = retarget(batch, self.workers.global_union(batch.target_items))
        self.optimizer.zero_grad()
        # the entries sorted by item once, for the encoder's backward and the Gramian loss's (its target
        # columns increase with the items: the same order)
        by_item = column_order(batch.items, batch.rows, self.model.num_items)
        with self.autocast:
            z, kl = self.model.hidden_kl(batch.items, batch.values, batch.offsets, by_item)
            weight, bias = self.model.target_rows(batch.target_items)
            if self.log_q is not None and batch.target_items is not None:
                bias = bias - self.log_q[batch.target_items]  # = the logits minus log q_j
            if self.hidden_loss_fn is None:
                logits = torch.addmm(bias, z, weight.t())  # the model's forward
        if self.hidden_loss_fn is None:
            loss = self.loss_fn(logits, batch.rows, batch.target_cols, batch.values)
        else:
            loss = self.hidden_loss_fn(z, weight, bias, batch.rows, batch.target_cols, batch.values,
                                       offsets=batch.offsets, by_col=by_item)
        if kl is not None:
            loss = loss + kl_beta * kl
        loss.backward()
        self.workers.exchange_gradients(self.model, self.item_names, t.grad_exchange, batch.target_items)
        self.optimizer.step()
        target = self.model.num_items if batch.target_items is None else batch.target_items.numel()
        return loss.item(), target


def hidden_loss(t: TrainConfig) -> Optional[HiddenLossFn]:
    """The loss the step computes without logits, if ``t`` (``config.train``) trains one: the
    Gramian MSE for ``loss=mse`` with ``mse_form=gramian``; None otherwise."""
    return get_hidden_loss(t.loss, t.confidence) if t.mse_form == "gramian" else None


def union_log_q(data_dir: str, num_items: int, num_train_users: int, t: TrainConfig, ranks: int) -> torch.Tensor:
    """``log q_j`` of every item (``losses.union_log_inclusion``) for ``train.logq_correction``:
    ``p_j`` is the share of train users holding item ``j`` (the prepared ``items`` table's
    counts), ``B`` the users of one union (``num_sampling_users``, × ``ranks`` under
    ``grad_exchange=sync_union``, whose union spans the ranks)."""
    import pyarrow.parquet as pq
    table = pq.read_table(Path(data_dir) / "items", columns=["item_idx", "count"]).to_pydict()
    counts = torch.zeros(num_items, dtype=torch.float64)
    counts[torch.tensor(table["item_idx"], dtype=torch.int64)] = torch.tensor(table["count"], dtype=torch.float64)
    sampling_users = t.num_sampling_users if t.num_sampling_users > 0 else t.batch_size
    users = sampling_users * (ranks if t.grad_exchange == "sync_union" else 1)
    return union_log_inclusion(counts / num_train_users, users).float()


def _train_epoch(step: Step, stream: Iterator[Batch], steps: int, epoch: int) -> dict[str, float]:
    """``steps`` steps from ``stream``; the epoch's record, summed over ranks."""
    workers, epochs = step.workers, step.config.train.epochs
    step.model.train()
    started = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, users, target size sum
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", disable=not (workers.is_root and sys.stderr.isatty()),
               unit="step", leave=False, dynamic_ncols=True)
    with bar:
        for i in bar:
            batch = next(stream)
            loss, target = step(batch, kl_weight(step.config.train, (epoch - 1) * steps + i))
            totals += torch.tensor([loss * batch.num_users, batch.num_users, target], dtype=torch.float64)
            if bar.n % 5 == 0:
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{totals[0] / totals[1]:.4f}", users_s=f"{totals[1] * workers.size / elapsed:.0f}",
                                target=int(target))
    totals = workers.sum(totals)
    seconds = float(workers.max(torch.tensor([time.perf_counter() - started]))[0])
    return {"epoch": epoch, "train_loss": float(totals[0] / totals[1]), "users_per_s": float(totals[1]) / seconds,
            "epoch_s": seconds, "target_size": float(totals[2] / (steps * workers.size))}


def _stops_early(history: list[dict], best: dict, patience: int, workers: Workers) -> bool:
    """Whether the run ends here by ``train.patience`` (also right after a resume from a run that
    had already stopped: the count comes from the checkpointed history). Rank 0 decides, on the
    metrics already summed over ranks, and every rank follows, so all stop after the same epoch."""
    stop = should_stop(history, int(best["epoch"]), patience)
    stop = bool(workers.broadcast_object(stop, "early_stop")) if patience > 0 else False
    if stop and workers.is_root:
        log.info("early stopping: validation NDCG@100 has not improved for %d evaluations since epoch %d (%.4f)",
                 evaluations_since_best(history, int(best["epoch"])), best["epoch"], best[SELECTION_METRIC])
    return stop


def _check_dataset(data_dir: str, workers: Workers) -> dict:
    """The manifest of ``data_dir``, its files verified and its train split shardable over the ranks."""
    manifest = read_manifest(data_dir)
    verify_files(data_dir, manifest)  # a lost or torn part file would silently train on fewer users
    groups = manifest["row_groups"]["train"]
    if groups < workers.size:
        raise DatasetError(f"{data_dir}: train has {groups} row groups, fewer than the {workers.size} ranks "
                           f"(Petastorm shards by row group); prepare it with a larger prepare.max_ranks")
    if groups % workers.size and workers.is_root:
        log.warning("train has %d row groups for %d ranks: Petastorm deals them out by index, so some ranks "
                    "hold one group more and see their users more often per epoch; prepare with "
                    "prepare.max_ranks a multiple of the ranks for equal shares", groups, workers.size)
    return manifest


def _set_up_process(t: TrainConfig, workers: Workers) -> tuple[torch.device, str]:
    """Seed torch, set its threads and malloc's thresholds; the device and the dtype to train in."""
    torch.manual_seed(t.seed)
    torch.set_num_threads(t.threads or workers.default_threads())
    if not reuse_freed_memory() and workers.is_root:
        log.info("could not raise malloc's thresholds (not glibc?): step buffers are mapped afresh each step")
    device = workers.device()
    dtype, dtype_note = training_dtype(t.dtype, t.force_dtype, device)
    if dtype_note and workers.is_root:
        log.warning(dtype_note)
    return device, dtype


def build_step(config: Config, num_items: int, workers: Workers, device: torch.device, dtype: str,
               log_q: Optional[torch.Tensor] = None) -> Step:
    """A fresh model, its optimizer and loss as one :class:`Step` (``log_q``: the union's
    inclusion log-probabilities, with ``train.logq_correction``); benchmarks build theirs here too."""
    t = config.train
    model = build_model(num_items, config).to(device)
    optimizer = build_optimizer(model, t.item_optimizer, t.lr, t.weight_decay, t.item_lr or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    return Step(model, optimizer, get_loss(t.loss, t.confidence), model.item_parameter_names(), config, workers,
                autocast, device, hidden_loss(t), None if log_q is None else log_q.to(device))


@dataclass
class Progress:
    """Where a run stands: the last epoch trained (0 before the first), every epoch's record and the
    best validation so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, SELECTION_METRIC: -1.0})
    stopped_early: bool = False


RESUMED = ("optimizer", "scheduler", "torch_rng", "epoch", "history", "best")  # what last.pt gives every rank


def _start(step: Step, scheduler: LambdaLR, identity: dict, workers: Workers, resume: Union[bool, str, Path],
           init_from: Optional[Path]) -> tuple[Path, Progress]:
    """The run folder and where training starts: afresh, from ``init_from``'s weights, or where the
    resumed checkpoint left off, with its weights, optimizer, schedule and RNG on every rank.

    Rank 0 alone reads the checkpoint folder (other hosts need not see it) and sends the rest
    what they need; a refusal reaches every rank, so all of them stop with the same message."""
    model = step.model
    run_dir, state, opened = None, None, {}
    if workers.is_root:
        try:
            run_dir, state = _open_run(Path(step.config.train.checkpoint_dir), resume, identity)
            if init_from is not None:
                model.load_state_dict(_initial_weights(Path(init_from), identity))
                log.info("starting from the weights of %s", init_from)
            opened = {"run_dir": str(run_dir)}
        except checkpoint.ResumeError as error:
            opened = {"error": str(error)}
    opened = workers.broadcast_object(opened, "resume_opened")
    if "error" in opened:
        raise checkpoint.ResumeError(opened["error"])
    run_dir = Path(opened["run_dir"])
    resumed = workers.broadcast_object(None if state is None else {k: state[k] for k in RESUMED}, "resume_state")
    progress = Progress()
    if resumed is not None:
        if workers.is_root:
            model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["torch_rng"])
        progress = Progress(resumed["epoch"], resumed["history"], resumed["best"])
        if workers.is_root:
            log.info("resumed from %s after epoch %d", run_dir / checkpoint.LAST, resumed["epoch"])
    elif workers.is_root:
        log.info("checkpoints in %s", run_dir)
    workers.broadcast_model(model)
    return run_dir, progress


@dataclass(frozen=True)
class _Checkpoints:
    """The two checkpoints of one run folder, written by rank 0: ``best.pt`` (the best validation's
    weights) and ``last.pt`` (everything :func:`_start` resumes from)."""

    run_dir: Path
    config: Config
    identity: dict
    run_state: dict  # the tracker's, e.g. the MLflow run id

    def save_best(self, model: RecoderAutoencoder, epoch: int, scores: dict[str, float]) -> None:
        checkpoint.save(self.run_dir / checkpoint.BEST, {
            "model": model.state_dict(), "epoch": epoch, "num_items": model.num_items,
            "config": self.config.to_dict(), "validation": scores})

    def save_last(self, step: Step, scheduler: LambdaLR, epoch: int, progress: Progress) -> None:
        checkpoint.save(self.run_dir / checkpoint.LAST, {
            "model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
            "history": progress.history, "best": progress.best, "identity": self.identity,
            "run_state": dict(self.run_state)})


def _evaluate(model: RecoderAutoencoder, rows: HeldoutRows, t: TrainConfig, workers: Workers,
              device: torch.device) -> dict[str, float]:
    """The metrics of ``model`` on held-out ``rows`` (this rank's shard), averaged over all ranks' users."""
    return means(workers.sum(metric_sums(model_scorer(model), rows, t.eval_batch_size, device)))


def _log_epoch(record: dict[str, float], epochs: int) -> None:
    log.info("epoch %d/%d  loss %.4f  %s  %.0f users/s  %.1f s  |target| %.0f", record["epoch"], epochs,
             record["train_loss"], "  ".join(f"{k} {record[k]:.4f}" for k in record if k.startswith("val_")),
             record["users_per_s"], record["epoch_s"], record["target_size"])


def _train_epochs(step: Step, scheduler: LambdaLR, stream: Iterator[Batch], steps: int, validation: HeldoutRows,
                  progress: Progress, checkpoints: _Checkpoints, tracker: Optional[Tracker],
                  on_epoch_end: Optional[Callable[[int, torch.nn.Module, dict], None]]) -> None:
    """The epochs after ``progress.epoch`` up to ``train.epochs`` (fewer when early stopping ends the
    run): train, evaluate every ``train.eval_every``, checkpoint, log and report (rank 0); updates
    ``progress``."""
    t, workers = step.config.train, step.workers
    for epoch in range(progress.epoch + 1, t.epochs + 1):
        if _stops_early(progress.history, progress.best, t.patience, workers):
            progress.stopped_early = True
            return
        record = _train_epoch(step, stream, steps, epoch)
        scheduler.step()
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            scores = _evaluate(step.model, validation, t, workers, step.device)
            record.update({f"val_{k}": v for k, v in scores.items()})
            if scores[SELECTION_METRIC] > progress.best[SELECTION_METRIC]:
                progress.best = {"epoch": epoch, **scores}
                if workers.is_root:
                    checkpoints.save_best(step.model, epoch, scores)
        progress.epoch = epoch
        progress.history.append(record)
        if workers.is_root:
            checkpoints.save_last(step, scheduler, epoch, progress)
            _log_epoch(record, t.epochs)
            if tracker is not None:
                tracker.log_epoch(epoch, {k: v for k, v in record.items() if k != "epoch"})
        if on_epoch_end is not None:
            on_epoch_end(epoch, step.model, record)


def _restore_best(model: RecoderAutoencoder, run_dir: Path, workers: Workers) -> None:
    """Load the best validation's weights (rank 0 reads ``best.pt``, every rank gets them); the model
    keeps its last weights when no epoch was evaluated."""
    # rank 0 loads them into its model, which is then broadcast in place: pickling the state dict
    # through broadcast_object costs several copies of the item tables (and Horovod's int32 size
    # limits it to 2 GB), which a million-item catalogue cannot afford (benchmarks/README.md)
    best_state = checkpoint.load(run_dir / checkpoint.BEST) if workers.is_root else None
    if best_state is not None:
        model.load_state_dict(best_state["model"])
    if workers.broadcast_object(best_state is not None, "best_model"):
        workers.broadcast_model(model)


def _finish(model: RecoderAutoencoder, config: Config, data_dir: str, run_dir: Path, progress: Progress, steps: int,
            test: dict[str, float], workers: Workers) -> TrainResult:
    """Mark the run finished (rank 0) and hand back its result; rank 0's carries the model, with the
    best weights, as a :class:`~recoder_dist.trained.TrainedModel` (on the CPU, with the item ids)."""
    best_epoch = int(progress.best["epoch"])
    trained = None
    if workers.is_root:
        checkpoint.mark_finished(run_dir, {"epochs": progress.epoch, "best_epoch": best_epoch,
                                           "stopped_early": progress.stopped_early})
        trained = TrainedModel(model.cpu(), config.model, ItemMap.of_dataset(data_dir))
    return TrainResult(epochs=progress.epoch, steps_per_epoch=steps, best_epoch=best_epoch,
                       best_validation={k: progress.best[k] for k in METRICS if k in progress.best}, test=test,
                       history=progress.history, best_checkpoint=run_dir / checkpoint.BEST,
                       stopped_early=progress.stopped_early, model=trained)


def fit(config: Config, data_dir: str, workers: Workers, resume: Union[bool, str, Path] = False,
        tracker: Optional[Tracker] = None, run_state: Optional[dict] = None,
        on_epoch_end: Optional[Callable[[int, torch.nn.Module, dict], None]] = None,
        init_from: Optional[Path] = None) -> TrainResult:
    """Train on ``data_dir`` (a prepared dataset), evaluate, checkpoint; returns the result.

    ``on_epoch_end(epoch, model, record)`` is called on every rank after each epoch (e.g. to
    check that the ranks hold the same weights).

    Each run checkpoints into a folder of its own under ``train.checkpoint_dir``
    (``recoder_dist.checkpoint``). ``resume``: False trains afresh; True continues the latest
    unfinished run there (afresh when there is none); a run folder continues that run. Only
    rank 0's value and files are used: it reads the checkpoint and broadcasts it, so the other
    ranks' hosts need not see the folder. A checkpoint of other data, settings or number of ranks,
    or a finished or live run, is refused on every rank with ``checkpoint.ResumeError``.
    ``init_from`` (a run folder, read by rank 0; not with ``resume``) starts a fresh run from that
    run's final weights, for the same data and model; its optimizer and schedule start afresh.

    ``run_state`` is opaque tracker state stored in checkpoints (the MLflow run id), so that a
    resumed run continues the same tracked run.

    Sets this process's torch threads and malloc thresholds (``recoder_dist.allocator``).
    """
    t = config.train
    manifest = _check_dataset(data_dir, workers)
    num_items, n_train = int(manifest["num_items"]), int(manifest["num_users"]["train"])
    device, dtype = _set_up_process(t, workers)
    log_q = union_log_q(data_dir, num_items, n_train, t, workers.size) if t.logq_correction else None
    step = build_step(config, num_items, workers, device, dtype, log_q)
    scheduler = lr_scheduler(step.optimizer, t)
    steps = steps_per_epoch(n_train, t.batch_size, workers.size)
    identity = run_identity(config, manifest, workers.size)
    run_dir, progress = _start(step, scheduler, identity, workers, resume, init_from)
    # rank 0 holds the run folder until the run is finished or stops
    with checkpoint.hold(run_dir) if workers.is_root else contextlib.nullcontext():
        validation = read_heldout(data_dir, "validation").shard(workers.rank, workers.size)
        if workers.is_root:
            log.info("training %d items, %d train users on %d rank(s): %d steps/epoch of %d users, "
                     "target set per %d users, exchange=%s, dtype=%s, %d thread(s)/rank", num_items, n_train,
                     workers.size, steps, t.batch_size, t.num_sampling_users or t.batch_size,
                     t.grad_exchange, dtype, torch.get_num_threads())
        stream = prefetch(_batches(data_dir, config, workers, num_items, n_train, progress.epoch + 1), depth=8)
        try:
            _train_epochs(step, scheduler, stream, steps, validation, progress,
                          _Checkpoints(run_dir, config, identity, run_state or {}), tracker, on_epoch_end)
        finally:
            stream.close()
        _restore_best(step.model, run_dir, workers)
        test = _evaluate(step.model, read_heldout(data_dir, "test").shard(workers.rank, workers.size), t, workers,
                         device)
        return _finish(step.model, config, data_dir, run_dir, progress, steps, test, workers)
