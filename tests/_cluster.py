"""A real Spark standalone cluster and an MLflow tracking server on 127.0.0.1, for the tests.

The cluster is pyspark's own ``spark-class`` Master plus one Worker. The Worker runs in a mount
namespace of its own with a private ``/tmp`` (``unshare --mount``, as root), so that, as on
another host, it cannot read what the driver keeps in ``/tmp`` (a downloaded model, say); data
both must see lives in a folder outside ``/tmp``. Every process is started in its own process
group and stopped by its PID; every wait is bounded.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from _data import free_port, stop_process_group

BIN = Path(sys.executable).parent
PRIVATE_TMP = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
               'mount -t tmpfs none /tmp && exec "$@"', "private-tmp"]


def http_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen, log: Path,
               timeout: float = 120) -> None:
    """Poll ``ready`` until true; fail with the log's tail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{what}: process exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        try:
            if ready():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            pass
        assert time.monotonic() < deadline, f"{what}: not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def private_tmp_unavailable() -> Optional[str]:
    """Why a process cannot get a private ``/tmp`` here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to mount a private /tmp in a mount namespace (unshare --mount)"
    for path in (Path(sys.executable), Path(__file__)):
        if Path(path).resolve().is_relative_to("/tmp"):
            return f"{path} is under /tmp, which the worker's private /tmp would hide"
    try:
        probe = subprocess.run([*PRIVATE_TMP, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "unshare is not installed"
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here: {probe.stderr.strip()[:300]}"
    return None


@contextlib.contextmanager
def shared_folder(base: Path) -> Iterator[Path]:
    """A folder the driver and the worker both see: under ``base`` unless that lies in ``/tmp``
    (pytest's default), else a fresh one in ``/var/tmp``, removed afterwards."""
    if not Path(base).resolve().is_relative_to("/tmp"):
        folder = Path(base) / "cluster-shared"
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="recoder-cluster-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sees(process: subprocess.Popen, path: Path) -> bool:
    """Whether ``path`` exists in ``process``'s mount namespace (through ``/proc/PID/root``)."""
    return Path(f"/proc/{process.pid}/root{Path(path).resolve()}").exists()


@dataclass
class Cluster:
    """A running standalone cluster: ``url`` for ``--master``, ``webui`` for its JSON status."""

    url: str
    webui: str
    folder: Path
    processes: list = field(default_factory=list)

    def status(self) -> dict:
        """The master's status (``aliveworkers``, ``activeapps``, ``completedapps``, …)."""
        return http_json(f"{self.webui}/json/")

    def completed_apps(self) -> list[str]:
        """Names of the applications the master has seen finish."""
        return [app["name"] for app in self.status()["completedapps"]]

    def executor_logs(self) -> str:
        """The executors' stderr (the worker's work folder), for failure messages."""
        logs = sorted((self.folder / "work").glob("*/*/stderr"))
        return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs)

    @property
    def worker(self) -> subprocess.Popen:
        return self.processes[1]

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process_group(process)


def start_cluster(folder: Path, cores: int = 2, memory: str = "2g") -> Cluster:
    """Master and one Worker (private ``/tmp``) on 127.0.0.1, logs and work folder in ``folder``.

    The daemons read an empty ``SPARK_CONF_DIR`` of their own, as a cluster has its own settings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conf").mkdir(exist_ok=True)
    env = {**os.environ, "SPARK_CONF_DIR": str(folder / "conf"), "SPARK_LOCAL_IP": "127.0.0.1"}
    port, webui, worker_ui = free_port(), free_port(), free_port()
    spark_class = str(BIN / "spark-class")
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{webui}", folder)
    try:
        master_log = folder / "master.log"
        with open(master_log, "w") as log:
            cluster.processes.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(webui)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_until(lambda: cluster.status()["status"] == "ALIVE", "spark master", cluster.processes[0], master_log)
        worker_log = folder / "worker.log"
        with open(worker_log, "w") as log:
            cluster.processes.append(subprocess.Popen(
                [*PRIVATE_TMP, spark_class, "org.apache.spark.deploy.worker.Worker", cluster.url, "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", memory, "--webui-port", str(worker_ui),
                 "--work-dir", str(folder / "work")], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_until(lambda: cluster.status()["aliveworkers"] == 1, "spark worker", cluster.processes[1], worker_log)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class Service:
    """A running HTTP service on 127.0.0.1 (its base ``url``), stopped by its process group."""

    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process_group(self.process)


def _start_service(command: list[str], url: str, ready_path: str, folder: Path, env: dict, what: str) -> Service:
    log = folder / f"{what.replace(' ', '-')}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    service = Service(url, process)
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}{ready_path}", timeout=2).status == 200, what, process, log)
    except BaseException:
        service.stop()
        raise
    return service


def start_tracking_server(folder: Path) -> Service:
    """``mlflow server`` on 127.0.0.1 (its URL is the tracking URI): sqlite backend and proxied
    artifacts (``mlflow-artifacts:``) under ``folder``, as a team server runs with a database and
    an object store."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return _start_service(command, f"http://127.0.0.1:{port}", "/health", folder, env, "mlflow server")


def serve_model(model_uri: str, tracking_uri: str, folder: Path) -> Service:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on 127.0.0.1, the model taken from
    ``tracking_uri``; ready once ``/ping`` answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-p", str(port), "-h", "127.0.0.1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    return _start_service(command, f"http://127.0.0.1:{port}", "/ping", folder, env, "mlflow models serve")


def post_json(url: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
    """POST ``payload`` as JSON; the status and the decoded answer (errors included)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
