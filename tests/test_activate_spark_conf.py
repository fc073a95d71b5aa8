"""``scripts/activate_spark_conf.sh``: the environment's activate script exports SPARK_CONF_DIR.

Run on a copy of this environment's own ``bin/activate`` (never the real one), then sourced in
a fresh bash: the project's conf unless SPARK_CONF_DIR was already set; running it again
replaces its block instead of repeating it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "activate_spark_conf.sh"
BEGIN = "# >>> recoder-dist: Spark settings >>>"


@pytest.fixture
def activate(tmp_path) -> Path:
    """A copy of the running environment's activate script (a stand-in when there is none)."""
    real = Path(sys.prefix) / "bin" / "activate"
    copy = tmp_path / "activate"
    copy.write_text(real.read_text() if real.is_file() else 'export VIRTUAL_ENV="/some/venv"\n')
    return copy


def run_script(activate: Path, conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(activate), str(conf)], capture_output=True, text=True, timeout=30)


def sourced(activate: Path, **env: str) -> str:
    """SPARK_CONF_DIR after sourcing ``activate`` in a fresh bash with ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "SPARK_CONF_DIR"}
    done = subprocess.run(["bash", "-c", f'source "{activate}" && printf %s "${{SPARK_CONF_DIR:-}}"'],
                          env={**base, **env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_activate_exports_the_projects_conf_once(activate):
    original = activate.read_text()
    for _ in range(2):
        result = run_script(activate, ROOT / "conf")
        assert result.returncode == 0, result.stderr
    text = activate.read_text()
    assert text.startswith(original) and text.count(BEGIN) == 1
    assert sourced(activate) == str(ROOT / "conf")


def test_a_spark_conf_dir_set_before_activating_wins(activate, tmp_path):
    assert run_script(activate, ROOT / "conf").returncode == 0
    cluster_conf = tmp_path / "cluster-conf"
    assert sourced(activate, SPARK_CONF_DIR=str(cluster_conf)) == str(cluster_conf)


def test_a_folder_without_spark_defaults_is_refused(activate, tmp_path):
    original = activate.read_text()
    result = run_script(activate, tmp_path)
    assert result.returncode == 2 and f"{tmp_path} has no spark-defaults.conf" in result.stderr
    assert activate.read_text() == original
