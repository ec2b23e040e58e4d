"""Files mmvsd writes get the modes any tool's files get: 0666 / 0777 less the user's umask
(safetensors writes its files 0600 and mkdtemp makes its folders 0700); what the shared cache
under $MMVSD_HOME builds is built by one process at a time (`cache_lock`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def cache_lock(path: Path, what: str, log=print) -> Iterator[None]:
    """Hold `path`.lock while `what` is built in the shared cache: a second process asking for the
    same build waits (and says so), then finds it built."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another process is building {what}; waiting for it ({path}.lock)")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
