"""Run lmms-eval on the mmvsd model in a process of its own, and make sure it really ran: its CLI
exits 0 even when evaluation fails, so success is its results file, with every task in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mmvsd.errors import UserError


def run_lmms_eval(model_args: str, tasks: list[str], include_path: Path, out: Path, limit: int = 0) -> dict:
    """`python -m lmms_eval --model mmvsd` on `tasks` (found in `include_path`), writing to `out`.
    Returns the results JSON, plus "answers": {task: [each document's answer]}."""
    from mmvsd.lmms.task_files import check_task_data

    check_task_data(tasks, include_path)
    command = [sys.executable, "-m", "lmms_eval", "--model", "mmvsd", "--model_args", model_args,
               "--tasks", ",".join(tasks), "--include_path", str(include_path), "--batch_size", "1",
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
    report["answers"] = {task: [json.loads(line)["filtered_resps"] for line in
                                sorted(new[-1].parent.glob(f"*_samples_{task}.jsonl"))[-1].open()]
                         for task in tasks}
    return report
