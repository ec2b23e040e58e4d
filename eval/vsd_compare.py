"""`python eval/vsd_compare.py [key=value ...]`: does VSD make the toy drafters faster?

For MSD and ViSpec on toy-m: the baseline drafter (its recipe), the
baseline + VSD (recipes toy_msd_vsd / toy_vispec_vsd), and the honest control: the baseline
trained for the same extra steps on the same data without VSD. For MSD also the ablations:
fewer and more proposals (vsd.num_proposals), no ARW, no CAR. Every drafter is benched on the
same held-out toy images at T=0 and T=1 (tau and speed-up against the target alone, one
process). Writes OUT/report.md (the table), OUT/vsd_tau.png (the plot) and OUT/results.json;
training runs go to OUT/runs/ and are reused when the command is run again.

    python eval/vsd_compare.py                 # ~30 min on a 2-core CPU
    python eval/vsd_compare.py kinds=msd ablations=false steps=50 n=4 out=/tmp/vsd   # a quick look
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli
from mmvsd.config import BenchConfig, TreeConfig, opt
from mmvsd.errors import UserError
from mmvsd.train import train_once


@dataclass
class CompareConfig:
    """Baseline vs +VSD vs the same-steps control, and VSD's ablations, on toy-m."""

    out: str = opt("eval/vsd", "folder for report.md, vsd_tau.png, results.json and the training runs")
    kinds: str = opt("msd,vispec", "drafter kinds to compare, comma-separated")
    steps: int = opt(200, "extra training steps for +VSD and for the control")
    ablations: bool = opt(True, "also train MSD with vsd.num_proposals 2 and 16, without ARW, without CAR")
    n: int = opt(32, "held-out toy images per bench (tau over 8 images moves by ~0.3 between drafters that are equal)")
    max_new_tokens: int = opt(96, "tokens per answer in the bench")
    temperatures: str = opt("0,1", "bench temperatures, comma-separated")
    target: str = opt("toy-m", "the target the recipes train for")
    dry_run: bool = opt(False, "print the resolved config and exit")


def variants(cfg: CompareConfig, kind: str) -> list[tuple[str, list[str]]]:
    """(label, train overrides) of every drafter trained from `kind`'s baseline."""
    rows = [("+VSD", []), ("control: same steps, no VSD", ["vsd.enabled=false"])]
    if kind == "msd" and cfg.ablations:
        rows += [("+VSD, S=2", ["vsd.num_proposals=2"]), ("+VSD, S=16", ["vsd.num_proposals=16"]),
                 ("+VSD, no ARW", ["vsd.arw=false"]), ("+VSD, no CAR", ["vsd.car=false"])]
    return rows


def bench(cfg: CompareConfig, drafter: Path, temperature: float) -> dict:
    from mmvsd.bench import run_bench

    report = run_bench(BenchConfig(target=cfg.target, drafter=str(drafter), n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                                   temperature=temperature, tree=TreeConfig()))
    if temperature == 0 and report["identical_outputs"] is not True:
        raise UserError(f"{drafter}: speculative output differs from the target's at T=0 (a losslessness bug)")
    return {"tau": report["tau"], "speedup": report["speedup"]}


def main(cfg: CompareConfig) -> None:
    out = Path(cfg.out)
    runs = out / "runs"
    temperatures = [float(t) for t in cfg.temperatures.split(",")]
    results = []
    for kind in cfg.kinds.split(","):
        base = train_once([f"recipe=toy_{kind}", f"target={cfg.target}"], runs / f"{kind}_baseline")
        results.append({"kind": kind, "label": "baseline", "drafter": str(base)})
        for label, overrides in variants(cfg, kind):
            slug = label.replace("+VSD", "vsd").replace(":", "").replace(",", "").replace("=", "").replace(" ", "_").lower()
            drafter = train_once([f"recipe=toy_{kind}_vsd", f"target={cfg.target}", f"drafter={base}",
                             f"steps={cfg.steps}", *overrides], runs / f"{kind}_{slug}")
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
    head = "| drafter | " + " | ".join(f"T={t:g}: tau, speed-up, tau vs baseline / vs control" for t in temperatures) + " |"
    lines = [f"VSD on {cfg.target}: {cfg.steps} extra steps, {cfg.n} held-out toy images, {cfg.max_new_tokens} new "
             "tokens, tree 10/2/16 (tau includes the bonus token; greedy outputs identical to the target's).", "",
             head, "|---|" + "---|" * len(temperatures)]
    for row in results:
        base = next(r for r in results if r["kind"] == row["kind"] and r["label"] == "baseline")
        control = next((r for r in results if r["kind"] == row["kind"] and r["label"].startswith("control")), None)
        cells = []
        for t in temperatures:
            key = f"T={t:g}"
            change = f"{100 * (row[key]['tau'] / base[key]['tau'] - 1):+.1f}%"
            if control is not None and row["label"].startswith("+VSD"):
                change += f" / {100 * (row[key]['tau'] / control[key]['tau'] - 1):+.1f}%"
            cells.append(f"{row[key]['tau']:.2f}, {row[key]['speedup']:.2f}x, {change}")
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
    sys.exit(cli.run(CompareConfig, main, "python eval/vsd_compare.py", __doc__))
