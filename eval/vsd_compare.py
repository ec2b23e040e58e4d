"""`python eval/vsd_compare.py [key=value ...]`: does VSD make the toy drafters faster?

For MSD and ViSpec on toy-m: the baseline drafter (its recipe, trained once if missing), the
baseline + VSD (recipes toy_msd_vsd / toy_vispec_vsd), and the honest control: the baseline
trained for the same extra steps on the same data without VSD. For MSD also the ablations:
fewer and more proposals (vsd.num_proposals), no ARW, no CAR. Every drafter is benched on the
same held-out toy images at T=0 and T=1 (tau and speed-up against the target alone, one
process). Writes OUT/report.md (the table), OUT/vsd_tau.png (the plot) and OUT/results.json;
training runs go to OUT/runs/ and are reused when the command is run again.

    python eval/vsd_compare.py                 # ~1 h on a 2-core CPU
    python eval/vsd_compare.py kinds=msd ablations=false steps=50 n=4   # a quick look
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli
from mmvsd.config import BenchConfig, TreeConfig, opt
from mmvsd.errors import UserError


@dataclass
class CompareConfig:
    """Baseline vs +VSD vs the same-steps control, and VSD's ablations, on toy-m."""

    out: str = opt("eval/vsd", "folder for report.md, vsd_tau.png, results.json and the training runs")
    kinds: str = opt("msd,vispec", "drafter kinds to compare, comma-separated")
    steps: int = opt(200, "extra training steps for +VSD and for the control")
    ablations: bool = opt(True, "also train MSD with vsd.num_proposals 2 and 16, without ARW, without CAR")
    n: int = opt(8, "held-out toy images per bench")
    max_new_tokens: int = opt(96, "tokens per answer in the bench")
    temperatures: str = opt("0,1", "bench temperatures, comma-separated")
    target: str = opt("toy-m", "the target the recipes train for")
    dry_run: bool = opt(False, "print the resolved config and exit")


def variants(cfg: CompareConfig) -> list[tuple[str, str, list[str]]]:
    """(kind, label, train overrides) for every drafter to train after the baselines."""
    rows = []
    for kind in cfg.kinds.split(","):
        rows += [(kind, "+VSD", []), (kind, "control: same steps, no VSD", ["vsd.enabled=false"])]
        if kind == "msd" and cfg.ablations:
            rows += [(kind, "+VSD, S=2", ["vsd.num_proposals=2"]), (kind, "+VSD, S=16", ["vsd.num_proposals=16"]),
                     (kind, "+VSD, no ARW", ["vsd.arw=false"]), (kind, "+VSD, no CAR", ["vsd.car=false"])]
    return rows


def train(args: list[str], out: Path) -> Path:
    """Run `python -m mmvsd.train` once: a finished run (its drafter/ is written at the end) is
    reused, a killed one resumed."""
    if (out / "drafter" / "model.safetensors").is_file():
        return out / "drafter"
    resume = ["resume=true"] if (out / "checkpoint.pt").is_file() else []
    command = [sys.executable, "-m", "mmvsd.train", *args, f"output_dir={out}", "eval_n=0", *resume]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"training failed: {' '.join(command[1:])}")
    return out / "drafter"


def bench(cfg: CompareConfig, drafter: Path, temperature: float) -> dict:
    from mmvsd.bench import run_bench

    report = run_bench(BenchConfig(target=cfg.target, drafter=str(drafter), n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                                   temperature=temperature, tree=TreeConfig(depth=10, top_k=2, total_tokens=16)))
    if temperature == 0 and report["identical_outputs"] is not True:
        raise UserError(f"{drafter}: speculative output differs from the target's at T=0 (a losslessness bug)")
    return {"tau": report["tau"], "speedup": report["speedup"]}


def main(cfg: CompareConfig) -> None:
    out = Path(cfg.out)
    runs = out / "runs"
    temperatures = [float(t) for t in cfg.temperatures.split(",")]
    results = []
    for kind in cfg.kinds.split(","):
        drafter = Path("runs") / f"toy_{kind}" / "drafter"
        if not drafter.is_dir():
            drafter = train([f"recipe=toy_{kind}", f"target={cfg.target}"], runs / f"{kind}_baseline")
        results.append({"kind": kind, "label": "baseline", "drafter": str(drafter)})
    for kind, label, overrides in variants(cfg):
        base = next(r["drafter"] for r in results if r["kind"] == kind and r["label"] == "baseline")
        slug = label.replace("+VSD", "vsd").replace(":", "").replace(",", "").replace("=", "").replace(" ", "_").lower()
        drafter = train([f"recipe=toy_{kind}_vsd", f"target={cfg.target}", f"drafter={base}", f"steps={cfg.steps}",
                         *overrides], runs / f"{kind}_{slug}")
        results.append({"kind": kind, "label": label, "drafter": str(drafter)})
    for row in results:
        for t in temperatures:
            print(f"bench {row['kind']} {row['label']} T={t:g}", file=sys.stderr, flush=True)
            row[f"T={t:g}"] = bench(cfg, Path(row["drafter"]), t)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report_markdown(cfg, results, temperatures))
    plot(results, temperatures, out / "vsd_tau.png")
    print(out / "report.md")


def report_markdown(cfg: CompareConfig, results: list[dict], temperatures: list[float]) -> str:
    head = "| drafter | " + " | ".join(f"T={t:g}: tau, speed-up, tau vs baseline" for t in temperatures) + " |"
    lines = [f"VSD on {cfg.target}: {cfg.steps} extra steps, {cfg.n} held-out toy images, {cfg.max_new_tokens} new "
             "tokens, tree 10/2/16 (tau includes the bonus token; greedy outputs identical to the target's).", "",
             head, "|---|" + "---|" * len(temperatures)]
    for row in results:
        base = next(r for r in results if r["kind"] == row["kind"] and r["label"] == "baseline")
        cells = []
        for t in temperatures:
            key = f"T={t:g}"
            change = 100 * (row[key]["tau"] / base[key]["tau"] - 1)
            cells.append(f"{row[key]['tau']:.2f}, {row[key]['speedup']:.2f}x, {change:+.1f}%")
        lines.append(f"| {row['kind']} {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], temperatures: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kind']}\n{r['label']}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(results)), 4))
    width = 0.8 / len(temperatures)
    for i, t in enumerate(temperatures):
        ax.bar([x + i * width for x in range(len(results))], [r[f"T={t:g}"]["tau"] for r in results], width,
               label=f"T={t:g}")
    ax.set_xticks([x + width * (len(temperatures) - 1) / 2 for x in range(len(results))], labels, fontsize=7)
    ax.set_ylabel("tau (tokens per target forward)")
    ax.set_title("VSD vs baseline and same-steps control (toy-m)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(cli.run(CompareConfig, main, "eval/vsd_compare.py", __doc__))
