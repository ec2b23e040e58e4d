"""`mmvsd eval [key=value ...]`: accuracy and speed of the target alone and of each
drafter on the mmvsd lmms-eval tasks, in one report.

Runs `python -m lmms_eval --model mmvsd` once for the target alone and once per drafter on the
same tasks and documents, checks each run really produced its results (the lmms-eval CLI exits
0 even when evaluation fails), and writes OUT/report.md (accuracy per task, identical to the
target alone at T=0 or flagged loudly; speed-up over the target alone, tau, acceptance by
depth), OUT/acceptance_by_depth.png and OUT/summary.json.

    mmvsd eval drafters=runs/toy_msd/drafter,runs/toy_vispec/drafter
    mmvsd eval target=toy-s drafters=eagle limit=5      # a quick look
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mmvsd import cli
from mmvsd.config import TreeConfig, opt
from mmvsd.errors import UserError

METRICS = {"mmvsd_vqav2": "exact_match", "mmvsd_chartqa": "relaxed_overall", "mmvsd_pope": "pope_accuracy",
           "mmvsd_describe": "chair_i"}


@dataclass
class RunConfig:
    """The target alone vs each drafter through lmms-eval."""

    target: str = opt("toy-m", "the target, as everywhere in mmvsd")
    drafters: list[str] = opt(["runs/toy_msd/drafter"], "drafter folders or kinds")
    tasks: list[str] = opt(list(METRICS), "lmms-eval tasks (the *_hub ones read lmms-lab's datasets)")
    limit: int = opt(50, "documents per task (0 = all)")
    processes: int = opt(1, "lmms-eval processes dividing the documents (torchrun on CPUs, accelerate launch with "
                            "one GPU each)")
    tree: TreeConfig = opt(TreeConfig.presets()["auto"], "draft tree shape")
    out: str = opt("eval/lmms", "folder for report.md, acceptance_by_depth.png, summary.json and the raw runs")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise UserError(f"processes must be >= 1, got {self.processes}")


def evaluate(cfg: RunConfig, name: str, model_args: str, tasks: Path) -> dict:
    from mmvsd.lmms.runner import run_lmms_eval

    print(f"lmms-eval: {name}", file=sys.stderr, flush=True)
    return run_lmms_eval(model_args, cfg.tasks, tasks, Path(cfg.out) / "runs" / name, cfg.limit, cfg.processes)


def main(cfg: RunConfig) -> None:
    from mmvsd.lmms.task_files import TEMPLATES, task_folder

    hub_only = all(task.endswith("_hub") for task in cfg.tasks)  # lmms-lab's data: no toy splits to write
    tasks = TEMPLATES if hub_only else task_folder(log=lambda m: print(m, file=sys.stderr))
    # the plugin's own default (auto) unless the user chose a tree: then every field, as resolved here
    tree = "" if cfg.tree == TreeConfig.presets()["auto"] else "," + ",".join(
        f"tree.{key}={value}" for key, value in asdict(cfg.tree).items())
    alone = evaluate(cfg, "target_alone", f"target={cfg.target}", tasks)
    runs = {d: evaluate(cfg, f"drafter_{i}", f"target={cfg.target},drafter={d}{tree}", tasks)
            for i, d in enumerate(cfg.drafters)}
    out = Path(cfg.out)
    summary = summarize(cfg, alone, runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report_markdown(cfg, summary))
    plot(summary, out / "acceptance_by_depth.png")
    print((out / "report.md").read_text())
    if any(not row["identical"] for row in summary["drafters"].values()):
        raise UserError("speculative answers differ from the target's at T=0: see report.md (a losslessness bug)")


def summarize(cfg: RunConfig, alone: dict, runs: dict[str, dict]) -> dict:
    tasks = cfg.tasks

    def scores(report: dict) -> dict:
        return {t: report["results"][t].get(f"{METRICS.get(t, 'exact_match')},none") for t in tasks}

    base_seconds = alone["throughput"]["total_elapsed_time"]
    summary = {"target": cfg.target, "tasks": tasks, "n": {t: alone["n-samples"][t]["effective"] for t in tasks},
               "alone": scores(alone), "drafters": {}}
    for name, report in runs.items():
        t = report["throughput"]
        depth = sorted((k for k in t if k.startswith("avg_acceptance_depth_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        summary["drafters"][name] = {
            "scores": scores(report), "identical": report["answers"] == alone["answers"],
            "speedup": base_seconds / t["total_elapsed_time"], "tau": t.get("avg_tau"),
            "acceptance_by_depth": [t[k] for k in depth]}
    return summary


def report_markdown(cfg: RunConfig, s: dict) -> str:
    names = list(s["drafters"])
    tree = (f"tree auto (at most {cfg.tree.depth} deep, {cfg.tree.total_tokens} tokens)" if cfg.tree.auto
            else f"tree {cfg.tree.depth}/{cfg.tree.top_k}/{cfg.tree.total_tokens}")
    lines = [f"lmms-eval on {s['target']} ({', '.join(f'{t}: {n} docs' for t, n in s['n'].items())}), greedy; "
             f"{tree}.", "",
             "| task (metric) | target alone | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task in s["tasks"]:
        cells = []
        for name in names:
            score = s["drafters"][name]["scores"][task]
            cells.append(f"{score:.4f}" + ("" if score == s["alone"][task] else " **DIFFERS**"))
        lines.append(f"| {task} ({METRICS.get(task, 'exact_match')}) | {s['alone'][task]:.4f} | " + " | ".join(cells) + " |")
    for label, key, fmt in (("answers identical to the target's", "identical", "{}"),
                            ("speed-up (generation time)", "speedup", "{:.2f}x"), ("tau (incl. bonus)", "tau", "{:.2f}")):
        lines.append(f"| {label} | | " + " | ".join(fmt.format(s["drafters"][n][key]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, row in s["drafters"].items():
        ax.plot(range(1, len(row["acceptance_by_depth"]) + 1), row["acceptance_by_depth"], marker="o", label=name)
    ax.set_xlabel("draft depth")
    ax.set_ylabel("share of steps accepting this deep")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"acceptance by depth on the lmms-eval tasks ({s['target']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(argv: list[str] | None = None) -> int:
    return cli.run(RunConfig, main, "mmvsd eval", __doc__, argv)


if __name__ == "__main__":
    sys.exit(run())
