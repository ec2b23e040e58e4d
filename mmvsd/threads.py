"""CPU threads: torch's pool sized to the cores, shared among the processes launched together, and a
warning when the mmvsd processes on this machine ask for more threads than there are cores.

Oversubscribed, torch's spinning worker threads take turns on the cores: on a 2-core machine two
processes with default threads each ran 4x slower than alone. Every mmvsd process writes its thread
count to a small file named by its pid (in the temporary folder, or $MMVSD_THREADS_DIR), so that a
later one sees the earlier ones, whoever started them (except its ancestors: a test or script that
started it waits for it).
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path


def configure_threads(threads: int = 0) -> int:
    """Set torch's thread count (0 = OMP_NUM_THREADS when set, else the cores divided among the
    processes of this launch) and warn when this machine's mmvsd processes oversubscribe it."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    launched = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun / accelerate launch
    if threads == 0:
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(omp) if omp.isdigit() and int(omp) > 0 else max(1, cores // launched)
    torch.set_num_threads(threads)
    try:
        others = _register(threads)
    except OSError:  # no writable temporary folder: no warning, but the run goes on
        return threads
    total = max(threads * launched, threads + sum(others.values()))
    if total > cores:
        who = ", ".join(f"pid {pid}: {n}" for pid, n in sorted(others.items())) or f"{launched} launched together"
        print(f"warning: mmvsd processes on this machine ask for {total} threads on {cores} cores (this one: {threads}; "
              f"{who}); each will run many times slower: give each threads={max(1, cores // max(launched, len(others) + 1))} "
              "(or set OMP_NUM_THREADS)", file=sys.stderr)
    return threads


def _register(threads: int) -> dict[int, int]:
    """Note this process's threads; return the other live mmvsd processes' {pid: threads}, leaving
    out this process's ancestors."""
    user = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(os.environ.get("MMVSD_THREADS_DIR") or Path(tempfile.gettempdir()) / f"mmvsd-threads-{user}")
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / str(os.getpid())
    if not mine.exists():
        atexit.register(mine.unlink, missing_ok=True)
    mine.write_text(str(threads))
    others, ancestors = {}, _ancestors()
    for file in folder.iterdir():
        if not file.name.isdigit() or file == mine or int(file.name) in ancestors:
            continue
        try:
            os.kill(int(file.name), 0)
            others[int(file.name)] = int(file.read_text() or 0)
        except ProcessLookupError:  # a process that died without cleaning up
            file.unlink(missing_ok=True)
        except (OSError, ValueError):  # another user's process, or a file being written
            continue
    return others


def _ancestors() -> set[int]:
    """The pids above this process (Linux's /proc; elsewhere the parent only)."""
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids
