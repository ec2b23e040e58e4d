"""Settings checked before any work: the device, the paths a run will write, the shared cache.

Every entry point calls these first, so a wrong setting costs a second and one line, not a model
load followed by a traceback (value ranges are checked earlier still, by the configs themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmvsd.errors import UserError


def check_device(device: str) -> None:
    """Refuse a torch device this machine and torch build do not have, naming what they offer."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device {device!r} is not a torch device; this machine offers {offered_devices()}") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            why = "this torch build has no CUDA support (a CPU-only wheel)"
        elif not torch.cuda.is_available():
            why = "torch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            why = f"there are {torch.cuda.device_count()} GPUs (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        else:
            return
    elif dev.type == "mps":
        if torch.backends.mps.is_available():
            return
        why = "MPS (Apple GPUs) is not available here"
    else:
        backend = getattr(torch, dev.type, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return
        why = f"{dev.type} is not available here"
    raise UserError(f"device {device}: {why}; this machine offers {offered_devices()}")


def offered_devices() -> str:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return ", ".join(devices)


def check_output_file(path: str | os.PathLike, key: str) -> Path:
    """A file a run will write at its end: refuse a folder, or a place where it cannot be created."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{key}={path} is a folder; give a file name inside it, e.g. {file / 'out.json'}")
    _check_creatable(file.parent, f"{key}={path}")
    return file


def check_output_dir(path: str | os.PathLike, key: str) -> Path:
    """A folder a run will write into: refuse an existing file, or a place where it cannot be made."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key}={path} is an existing file, not a folder; choose another {key}")
    _check_creatable(folder, f"{key}={path}")
    return folder


def mmvsd_home() -> Path:
    """$MMVSD_HOME (default ~/.cache/mmvsd): toy builds, datasets, task files; checked writable."""
    return check_output_dir(os.environ.get("MMVSD_HOME", "~/.cache/mmvsd"), "MMVSD_HOME")


def _check_creatable(folder: Path, what: str) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder (nothing is created)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write into {existing} (permission denied); choose a writable place")
