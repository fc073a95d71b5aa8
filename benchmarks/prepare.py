"""Benchmark of ``spark-submit jobs/prepare.py`` against a bare Spark job on the same input.

    python benchmarks/prepare.py [--sizes 1M,5M,20M] [--formats csv,parquet]

For each size a seeded synthetic input (pipeline.synthetic, ML-20M-like shape at 20M: 138K
users x 27K items) is generated once and cached as CSV and Parquet. Each input is prepared by
the real job (conf/default.yaml's rules: ratings > 3.5 kept as 1, users with >= 5, 10% + 10%
held-out users; train in 64 x 4 row groups as conf/ml-20m.yaml) through spark-submit with
conf/spark-defaults.conf; the wall time, input
interactions per second and the peak resident memory of the job's process tree (driver JVM +
Python, sampled with psutil) are printed. In the same run, a bare Spark job over the same
Parquet input (threshold + dedupe + user filter + item index + collect_list written to
Parquet: the least any prepare must do) gives the baseline, and the ratio prepare / bare is
the figure to compare across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {  # name -> synthetic users, items, mean interactions per user
    "1M": (7_000, 10_000, 145.0),
    "5M": (34_500, 20_000, 145.0),
    "20M": (138_000, 27_000, 145.0),
}
FORMATS = ("csv", "parquet")
# conf/default.yaml's rules, with train row groups sized as the public datasets' configs do
# (conf/ml-20m.yaml: 64 ranks x up to 4, groups of >= 500 users), not for the small local default.
PREPARE_OVERRIDES = ("prepare.max_ranks=64", "prepare.row_groups_per_rank=4")
DEFAULT_CACHE = Path("~/.cache/recoder-dist/benchmarks").expanduser()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, of csv, parquet")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"inputs and scratch (default {DEFAULT_CACHE})")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare Spark job")
    parser.add_argument("--bare-job", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_job:
        return bare_job(*args.bare_job)

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [s for s in sizes if s not in SIZES] + [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown size/format {unknown}")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    scratch = args.cache_dir / "scratch"
    print(f"machine: {os.cpu_count()} cores, {_total_memory_gb():.0f} GB; spark: conf/spark-defaults.conf "
          f"(driver {_spark_default('spark.driver.memory')}, shuffle partitions "
          f"{_spark_default('spark.sql.shuffle.partitions')})", flush=True)
    header = (f"{'size':>5} {'format':>7} {'interactions':>12} {'seconds':>8} {'inter/s':>10} "
              f"{'peak RSS GB':>11} {'(jvm':>5} {'py)':>5} {'bare s':>7} {'ratio':>6} {'others CPU':>10}")
    results = []
    for size in sizes:
        inputs = ensure_inputs(size, formats, args.cache_dir)
        bare = None
        if not args.no_baseline:
            parquet = ensure_inputs(size, ["parquet"], args.cache_dir)["parquet"]
            bare = run_bare(parquet, scratch, env)
            print(f"{size}: bare Spark job {bare['seconds']:.1f} s, peak RSS {bare['peak_gb']:.2f} GB, "
                  f"other processes used {bare['others_cpu']:.0%} of the CPUs", flush=True)
        for fmt in formats:
            result = run_prepare(inputs[fmt], scratch, env, log=args.cache_dir / f"prepare-{size}-{fmt}.log")
            result.update(size=size, format=fmt, bare=bare["seconds"] if bare else None)
            results.append(result)
            print(f"{size} {fmt}: {result['seconds']:.1f} s, stages: "
                  + ", ".join(f"{k} {v:.0f}s" for k, v in result["stages"].items()), flush=True)
    print()
    print(header)
    for r in results:
        ratio = f"{r['seconds'] / r['bare']:.2f}" if r["bare"] else "-"
        bare = f"{r['bare']:.1f}" if r["bare"] else "-"
        print(f"{r['size']:>5} {r['format']:>7} {r['input']:>12,} {r['seconds']:>8.1f} "
              f"{r['input'] / r['seconds']:>10,.0f} {r['peak_gb']:>11.2f} {r['peak_jvm_gb']:>5.1f} "
              f"{r['peak_py_gb']:>5.1f} {bare:>7} {ratio:>6} {r['others_cpu']:>10.0%}")
    return 0


def ensure_inputs(size: str, formats: list[str], cache: Path) -> dict[str, Path]:
    """Cached synthetic inputs of ``size`` in each format (generated once, seeded)."""
    paths = {fmt: cache / "inputs" / f"synthetic-{size}.{fmt}" for fmt in formats}
    missing = [fmt for fmt, path in paths.items() if not path.exists()]
    if missing:
        sys.path.insert(0, str(ROOT))
        from pipeline.synthetic import generate, write
        from recoder_dist.config import SyntheticConfig

        users, items, mean = SIZES[size]
        started = time.perf_counter()
        frame = generate(SyntheticConfig(num_users=users, num_items=items, mean_interactions=mean, seed=2024))
        for fmt in missing:
            write(frame, paths[fmt])
        print(f"generated {len(frame):,} interactions ({size}) in {time.perf_counter() - started:.0f} s "
              f"-> {', '.join(str(paths[f]) for f in missing)}", flush=True)
        del frame
    return paths


def run_prepare(source: Path, scratch: Path, env: dict, log: Path) -> dict:
    out = scratch / "prepared"
    shutil.rmtree(out, ignore_errors=True)
    command = [_spark_submit(), "--properties-file", "conf/spark-defaults.conf",
               "--conf", "spark.ui.showConsoleProgress=false",
               "jobs/prepare.py", "--input", str(source), "--output", str(out), *PREPARE_OVERRIDES]
    measured = _measure(command, env, log)
    if measured["returncode"] != 0:
        raise SystemExit(f"prepare failed ({measured['returncode']}); see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {**measured, "input": manifest["interactions"]["input"], "job_seconds": manifest["seconds"],
            "stages": _stages(log.read_text())}


def run_bare(source: Path, scratch: Path, env: dict) -> dict:
    out = scratch / "bare"
    shutil.rmtree(out, ignore_errors=True)
    command = [_spark_submit(), "--properties-file", "conf/spark-defaults.conf",
               "--conf", "spark.ui.showConsoleProgress=false",
               str(Path(__file__).resolve()), "--bare-job", str(source), str(out)]
    log = scratch.parent / "bare.log"
    measured = _measure(command, env, log)
    if measured["returncode"] != 0:
        raise SystemExit(f"bare job failed ({measured['returncode']}); see {log}")
    shutil.rmtree(out, ignore_errors=True)
    return measured


def bare_job(source: str, output: str) -> int:
    """The baseline, run under spark-submit: what any prepare must do, nothing more."""
    import numpy as np
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("bare-prepare").getOrCreate()
    pairs = (spark.read.parquet(source).select("user_id", "item_id", "rating")
             .where(F.col("rating") > 3.5).dropDuplicates(["user_id", "item_id"]))
    users = pairs.groupBy("user_id").count().where(F.col("count") >= 5).select("user_id")
    pairs = pairs.join(users, "user_id", "left_semi").cache()
    items = pairs.groupBy("item_id").count().toPandas().sort_values(["count", "item_id"], ascending=[False, True])
    items["item_idx"] = np.arange(len(items), dtype=np.int32)
    index = F.broadcast(spark.createDataFrame(items[["item_id", "item_idx"]]))
    rows = pairs.join(index, "item_id").groupBy("user_id").agg(
        F.array_sort(F.collect_list("item_idx")).alias("items"))
    rows.write.parquet(output)
    spark.stop()
    return 0


def _measure(command: list[str], env: dict, log: Path) -> dict:
    """Run ``command`` (in the repository root), sampling the RSS of its process tree.

    Counted: the driver JVM (spark-submit execs into it) and every Python process under it.
    Short-lived forks of the JVM (``chmod`` through jspawnhelper, which Hadoop's local file
    system runs per file) share its pages and would double its RSS: they are skipped. The
    CPU time that other processes on the machine used during the run is reported too, since
    it makes a run slower than it would be alone.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    peak = {"total": 0, "jvm": 0, "py": 0}
    ours: dict[int, float] = {}  # pid -> CPU seconds last seen
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    root = psutil.Process(process.pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    break
                rss = {"jvm": 0, "py": 0}
                for p in tree:
                    try:
                        with p.oneshot():
                            name, mem, cpu = p.name(), p.memory_info().rss, p.cpu_times()
                    except psutil.Error:
                        continue
                    ours[p.pid] = cpu.user + cpu.system
                    if p.pid == process.pid and name == "java":
                        rss["jvm"] += mem
                    elif name.startswith("python"):
                        rss["py"] += mem
                rss["total"] = rss["jvm"] + rss["py"]
                for key, value in rss.items():
                    peak[key] = max(peak[key], value)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = process.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    cpu_after = psutil.cpu_times()
    busy = sum(cpu_after) - sum(cpu_before) - (cpu_after.idle - cpu_before.idle) \
        - (getattr(cpu_after, "iowait", 0) - getattr(cpu_before, "iowait", 0))
    others = max(0.0, busy - sum(ours.values())) / (seconds * (os.cpu_count() or 1))
    gb = 1 << 30
    return {"returncode": returncode, "seconds": seconds, "peak_gb": peak["total"] / gb,
            "peak_jvm_gb": peak["jvm"] / gb, "peak_py_gb": peak["py"] / gb, "others_cpu": others}


def _stages(log: str) -> dict[str, float]:
    """Seconds up to each of the job's progress lines (``HH:MM:SS recoder.prepare LEVEL message``),
    named by the line's first words."""
    marks = []
    for line in log.splitlines():
        match = re.match(r"(\d\d):(\d\d):(\d\d) recoder\.prepare \w+ (.*)", line)
        if match:
            h, m, s, message = match.groups()
            marks.append((int(h) * 3600 + int(m) * 60 + int(s), " ".join(message.split()[:2])))
    return {b[1]: b[0] - a[0] for a, b in zip(marks, marks[1:])}


def _spark_submit() -> str:
    local = Path(sys.executable).parent / "spark-submit"
    return str(local) if local.exists() else "spark-submit"


def _spark_default(key: str) -> str:
    for line in (ROOT / "conf" / "spark-defaults.conf").read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] == key:
            return parts[1].strip()
    return "?"


def _total_memory_gb() -> float:
    import psutil
    return psutil.virtual_memory().total / (1 << 30)


if __name__ == "__main__":
    sys.exit(main())
