"""Files mmvsd writes get the modes any tool's files get: 0666 / 0777 less the user's umask
(safetensors writes its files 0600 and mkdtemp makes its folders 0700)."""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_modes(path: str | Path) -> None:
    """chmod `path` and, for a folder, everything under it, to the umask's default modes."""
    path, mask = Path(path), umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
