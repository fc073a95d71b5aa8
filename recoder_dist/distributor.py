"""Training as a Spark job: pyspark's ``TorchDistributor`` starts the torchrun ranks.

Under a local master (``local[*]``) it runs ``torchrun --nproc-per-node N`` on the driver;
under a cluster master it runs N barrier tasks on the executors, one single-rank torchrun node
each, that rendezvous at the first task's host. Every rank runs
:func:`recoder_dist.train.train_everywhere`, so training, checkpoints, MLflow logging and
registration are those of ``python -m recoder_dist.train``; the package must be installed
where the ranks run (on a cluster: on every executor).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from recoder_dist.config import Config


def distributor_settings(spark_conf: Mapping[str, str]) -> tuple[bool, bool]:
    """``(local_mode, use_gpu)`` for TorchDistributor from a session's Spark configuration.

    Local mode exactly when the master is local (as Spark itself decides: ``local`` or
    ``local[…]``); GPUs only when Spark was given them (``spark.driver.resource.gpu.amount`` in
    local mode, ``spark.task.resource.gpu.amount`` on a cluster): TorchDistributor's default
    ``use_gpu=True`` refuses to start without GPU resources."""
    master = spark_conf.get("spark.master", "")
    local_mode = master == "local" or master.startswith("local[")
    key = "spark.driver.resource.gpu.amount" if local_mode else "spark.task.resource.gpu.amount"
    try:
        use_gpu = float(spark_conf.get(key, "0")) > 0
    except ValueError:
        raise ValueError(f"Spark configuration {key}={spark_conf[key]!r} is not a number") from None
    return local_mode, use_gpu


def train_argv(data: str, config_path: str | None, resume: bool, resume_from: str | None,
               overrides: Sequence[str]) -> list[str]:
    """The ``recoder_dist.train`` command line of the ranks."""
    return ["--data", data, *(["--config", config_path] if config_path else []), *(["--resume"] if resume else []),
            *(["--resume-from", resume_from] if resume_from else []), *overrides]


def train_on_spark(spark, num_processes: int, argv: Sequence[str], config: Config) -> dict:
    """Train with ``recoder_dist.train``'s command line ``argv`` on ``num_processes`` ranks
    started by TorchDistributor in ``spark``'s application; returns rank 0's summary (test
    metrics, MLflow run id, registered version).

    ``config`` is ``argv``'s configuration: on executors, unless ``train.threads`` is set, each
    rank takes ``spark.task.cpus`` threads (the cores Spark gave its task); on the driver the
    local ranks share its cores, as under torchrun. Raises RuntimeError when a rank fails
    (its output precedes the error)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    conf = dict(spark.sparkContext.getConf().getAll())
    local_mode, use_gpu = distributor_settings(conf)
    argv = list(argv)
    if not local_mode and not config.train.threads:
        argv.append(f"train.threads={conf.get('spark.task.cpus', '1')}")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    from recoder_dist.train import train_everywhere

    return distributor.run(train_everywhere, argv)
