"""Run lmms-eval on the mmvsd model in a process of its own, and make sure it really ran: its CLI
exits 0 even when evaluation fails, so success is its results file, with every task in it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from mmvsd.errors import UserError


def run_lmms_eval(model_args: str, tasks: list[str], include_path: Path, out: Path, limit: int = 0,
                  processes: int = 1, batch_size: int = 1) -> dict:
    """`python -m lmms_eval --model mmvsd` on `tasks` (found in `include_path`), writing to `out`,
    in `processes` processes that divide the documents (`launcher`). Returns the results JSON,
    plus "answers": {task: [each document's answer]}."""
    from mmvsd.lmms.task_files import check_task_data

    check_task_data(tasks, include_path)
    command = [*launcher(processes), "-m", "lmms_eval", "--model", "mmvsd", "--model_args", model_args,
               "--tasks", ",".join(tasks), "--include_path", str(include_path), "--batch_size", str(batch_size),
               "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG",  # DEBUG re-raises errors
               *(["--limit", str(limit)] if limit else [])]
    before = set(out.rglob("*_results.json"))
    result = subprocess.run(command, capture_output=True, text=True)
    new = sorted(set(out.rglob("*_results.json")) - before)
    if result.returncode != 0 or not new:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"lmms-eval ({model_args}) failed (exit {result.returncode}, no results file): {tail}")
    report = json.loads(new[-1].read_text())
    missing = [t for t in tasks if t not in report["results"]]
    if missing:
        raise UserError(f"lmms-eval ({model_args}) has no results for {', '.join(missing)}")
    report["answers"] = {task: [sample["filtered_resps"] for sample in sorted(  # by document: processes interleave
        map(json.loads, sorted(new[-1].parent.glob(f"*_samples_{task}.jsonl"))[-1].open()), key=lambda s: s["doc_id"])]
        for task in tasks}
    return report


def launcher(processes: int) -> list[str]:
    """How to start lmms-eval in `processes` processes: `accelerate launch` where GPUs are (one per
    process), torchrun on CPUs (`accelerate launch --cpu --num_processes N` quietly runs one
    process there). Each process then splits the cores with the others (`configure_threads`)."""
    if processes == 1:
        return [sys.executable]
    import torch

    if torch.cuda.is_available():
        if torch.cuda.device_count() < processes:
            raise UserError(f"processes={processes}, but this machine has {torch.cuda.device_count()} GPUs; "
                            f"use processes={torch.cuda.device_count()} or fewer")
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(_free_port())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
