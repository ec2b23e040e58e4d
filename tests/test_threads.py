"""threads=N sizes torch's pool; mmvsd processes that together oversubscribe the cores are warned about."""

import os
import subprocess
import sys

import torch

from mmvsd.threads import configure_threads


def test_threads_sets_the_pool_and_auto_divides_the_cores_among_a_launch(monkeypatch, capsys):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        cores = len(os.sched_getaffinity(0))
        assert configure_threads(0) == max(1, cores // 2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_threads(0) == 1
        assert "warning" not in capsys.readouterr().err
        configure_threads(cores)  # two processes launched together, each with every core
        assert f"ask for {2 * cores} threads on {cores} cores" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_a_second_process_hears_about_the_first():
    """Two independent mmvsd processes (not launched together) with every core each: the second warns."""
    cores = len(os.sched_getaffinity(0))
    first = subprocess.Popen([sys.executable, "-c", f"from mmvsd.threads import configure_threads; import sys, time; "
                              f"configure_threads({cores}); print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        second = subprocess.run([sys.executable, "-c", f"from mmvsd.threads import configure_threads; "
                                 f"configure_threads({cores})"], capture_output=True, text=True, timeout=120)
        assert f"pid {first.pid}: {cores}" in second.stderr and "threads=" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_ancestor_processes_do_not_count():
    """A script that runs mmvsd in a child (here: a grandchild) and waits for it is not competing
    for the cores."""
    cores = len(os.sched_getaffinity(0))
    configure_threads(cores)
    code = f"from mmvsd.threads import configure_threads; configure_threads({cores})"
    child = subprocess.run(["sh", "-c", f"{sys.executable} -c '{code}'"], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and f"pid {os.getpid()}:" not in child.stderr
    torch.set_num_threads(cores)


def test_an_unwritable_registry_costs_the_warning_not_the_run(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("MMVSD_THREADS_DIR", str(tmp_path / "a_file" / "threads"))
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
    finally:
        torch.set_num_threads(before)
