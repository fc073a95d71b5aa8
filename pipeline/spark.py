"""The SparkSession used by jobs and tests."""
from __future__ import annotations

from typing import Optional

from pyspark.sql import SparkSession


def spark_session(app_name: str, master: Optional[str] = None) -> SparkSession:
    """Get or create a session; ``master`` only applies when spark-submit did not set one."""
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.adaptive.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark
