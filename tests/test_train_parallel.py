"""Data-parallel training on CPU (torchrun, gloo): processes divide the work. Two processes with
batch_size b end with the weights of one process with batch_size 2b, not with those of one
process with b; a killed two-process run resumes exactly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["target=tiny-random", "describe_share=0.5", "steps=6", "warmup_steps=1", "lr=0.01", "eval_n=0",
        "checkpoint_every=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # two torch processes on two cores


def command(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "mmvsd.train", *args]
    with socket.socket() as s:  # a free port for this launch's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}",
            "-m", "mmvsd.train", *args]


def train(processes: int, out, *args: str) -> dict[str, torch.Tensor]:
    result = subprocess.run(command(processes, [*ARGS, *args, f"output_dir={out}"]), env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(out / "drafter" / "model.safetensors"))


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "two"
    return out, train(2, out, "drafter=eagle", "batch_size=2")


def test_two_processes_with_batch_b_train_like_one_with_batch_2b(two_processes, tmp_path):
    out, two = two_processes
    one_big = train(1, tmp_path / "one4", "drafter=eagle", "batch_size=4")
    one_small = train(1, tmp_path / "one2", "drafter=eagle", "batch_size=2")
    assert largest_difference(two, one_big) < 1e-4
    assert largest_difference(two, one_small) > 1e-2  # the other process's half of the batch counted
    big_log = (tmp_path / "one4" / "metrics.jsonl").read_text().splitlines()
    two_log = (out / "metrics.jsonl").read_text().splitlines()  # logged by the main process only, once per step
    assert len(two_log) == len(big_log) == 6
    for mine, theirs in zip(two_log, big_log):  # reduced over processes before they are logged
        a, b = json.loads(mine), json.loads(theirs)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4) for k in a)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(two_processes, tmp_path):
    _, straight = two_processes
    broken = tmp_path / "broken"
    process = subprocess.Popen(command(2, [*ARGS, "drafter=eagle", "batch_size=2", f"output_dir={broken}"]), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = broken / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, after step 3
    process.wait()
    assert not (broken / "drafter").exists()
    resumed = train(2, broken, "drafter=eagle", "batch_size=2", "resume=true")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_vispec_trains_on_two_processes_through_text_only_batches(tmp_path):
    """Its image adaptor gets no gradient from a text-only batch; DDP must not hang or fail on it."""
    weights = train(2, tmp_path / "vispec", "drafter=vispec", "batch_size=2", "text_first_steps=2")
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.slow
def test_fsdp_on_a_machine_without_gpus_is_refused_in_one_line(tmp_path):
    """accelerate's FSDP plugin needs an accelerator device: the launch says so and what to do instead."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  "recipes/accelerate/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no"]
    result = subprocess.run([*accelerate, "-m", "mmvsd.train", "target=tiny-random", "steps=2", "eval_n=0",
                             f"output_dir={tmp_path / 'run'}"], env=ENV, capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    errors = {line for line in result.stderr.splitlines() if line.startswith("error:")}
    assert result.returncode != 0 and len(errors) == 1 and "FSDP and DeepSpeed need GPUs" in errors.pop()


def test_the_gpu_check_script_is_valid_bash():
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check_train.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
