"""Per-epoch checkpoints: written atomically, read back without unpickling arbitrary objects."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

LAST = "last.pt"
BEST = "best.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> Optional[dict[str, Any]]:
    """The saved state (tensors, numbers, strings, lists, dicts only), or None if absent."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
