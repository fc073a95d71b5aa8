"""The SparkSession used by jobs and tests."""
from __future__ import annotations

import io
import os
import sys
from typing import TextIO

from pyspark.sql import SparkSession


DEFAULT_MASTER = "local[*]"


def spark_session(app_name: str) -> SparkSession:
    """Get or create a job's session on the master spark-submit chose.

    spark-submit's ``--master``, a properties file's or ``$SPARK_CONF_DIR``'s ``spark.master``
    reach the driver's SparkConf; ``SparkSession.builder.master`` would override them, so it is
    called (with ``local[*]``) only when that SparkConf holds no master at all.
    """
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # under spark-submit: its JVM, whose conf holds its settings
    builder = SparkSession.builder.appName(app_name)
    if not SparkConf().contains("spark.master"):
        builder = builder.master(DEFAULT_MASTER)
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.adaptive.enabled", "true")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")  # id maps to/from pandas
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark


class _JvmStderr(io.TextIOBase):
    """Text written to the JVM's ``System.err``."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.print(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def driver_stderr() -> TextIO:
    """The terminal's stderr, for a job's errors and progress lines.

    Under spark-submit the driver's Python stderr is merged into its stdout (Spark's
    PythonRunner redirects it), mixing errors and logs with what the job prints as its result.
    The JVM's own stderr is still the terminal's, and spark-submit has already started the
    gateway that reaches it. Elsewhere this is ``sys.stderr``.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return sys.stderr
    try:
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
        return _JvmStderr(SparkContext._jvm.System.err)
    except Exception:  # no gateway after all: the merged stream is better than none
        return sys.stderr


def start_job_logging() -> TextIO:
    """Set up a spark-submit job's driver: logs to the terminal's stderr (returned, for error
    messages), py4j quiet, executors on this Python unless told otherwise. The bind address and
    the advertised host come from the Spark conf (``conf/spark-defaults.conf`` binds both to loopback)."""
    import logging

    stderr = driver_stderr()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines would follow the job's summary
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return stderr
