"""Atomic training checkpoints: a killed run finds either the previous checkpoint or the new one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none yet."""
    path = Path(path)
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
