"""`python -m mmvsd.zoo`: build or find the toy world's targets.

    python -m mmvsd.zoo build toy-s      # for tests and CI: ~9 min on 2 cores
    python -m mmvsd.zoo build toy-m      # for benchmarks and the demo: 8 layers, ~25 min on 2 cores
    python -m mmvsd.zoo list             # what is built, where, and its held-out accuracy
    python -m mmvsd.zoo data             # the toy test splits as parquet for the lmms-eval tasks in eval/tasks

Targets live under $MMVSD_HOME/targets (default ~/.cache/mmvsd), next to the toy-world datasets
and the pretrained vision tower they share (built by the first build). A build is deterministic from
its seed, resumes if interrupted, prints a report (held-out accuracy per question family next
to blind baselines, sample descriptions, per-token decode time) and prints the folder last.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mmvsd import cli
from mmvsd.config import opt
from mmvsd.errors import UserError


@dataclass
class ZooConfig:
    home: str | None = opt(None, "where targets are kept (default: $MMVSD_HOME or ~/.cache/mmvsd)")
    force: bool = opt(False, "rebuild even if the target is already built")
    out: str = opt("eval/tasks/data", "`data`: where the parquet files go (eval/tasks/*.yaml read them from there)")
    dry_run: bool = opt(False, "print the resolved config and exit")


def format_report(name: str, report: dict) -> str:
    summary, families = report["summary"], report["families"]
    lines = [f"{name}: held-out accuracy (greedy; blind baselines: the same question about another image, "
             "and the most common training answer)",
             f"  {'family':<18} {'n':>4} {'accuracy':>9} {'wrong image':>12} {'majority':>9}"]
    for family, row in families.items():
        lines.append(f"  {family:<18} {row['n']:>4} {row['accuracy']:>9.1%} {row['shuffled_image_accuracy']:>12.1%} "
                     f"{row['majority_answer_accuracy']:>9.1%}")
    lines += [f"  shapes {summary['shapes']:.1%} (wrong image {summary['shapes_shuffled_image']:.1%}), "
              f"POPE {summary['pope']:.1%}, chart values {summary['chart_values']:.1%}, charts {summary['charts']:.1%}",
              f"  description facts F1 {summary['description_fact_f1']:.2f} "
              f"(with a wrong image {summary['description_fact_f1_wrong_image']:.2f})",
              f"  decode {report['decode_ms_per_token']:.1f} ms/token; built in {report['build_seconds'] / 60:.1f} min"]
    if "description_words" in report:
        w = report["description_words"]
        lines.insert(-1, f"  next word of reference descriptions (teacher forced): image words "
                         f"{w['image_words_right_image']:.1%} (wrong image {w['image_words_wrong_image']:.1%}), "
                         f"other words {w['other_words_right_image']:.1%} ({w['other_words_wrong_image']:.1%})")
    for sample in report["descriptions"]:
        lines += [f"  [{sample['kind']}] {sample['prompt']}", f"    target:    {sample['generated']}",
                  f"    reference: {sample['reference']}"]
    return "\n".join(lines)


def main(cfg: ZooConfig, command: str, names: list[str]) -> None:
    from pathlib import Path

    from mmvsd.toyworld.build import TOY_SPECS, build_target, is_built, target_dir

    home = Path(cfg.home).expanduser() if cfg.home else None
    if command == "data":
        from mmvsd.toyworld.build import ensure_datasets
        from mmvsd.toyworld.data import export_test_parquet

        print(export_test_parquet(ensure_datasets(home, log=lambda m: print(m, file=sys.stderr)), Path(cfg.out)))
        return
    if command == "list":
        for name, spec in TOY_SPECS.items():
            folder = target_dir(name, home)
            state = "built" if is_built(spec, home) else "not built"
            extra = ""
            if state == "built":
                s = json.loads((folder / "report.json").read_text())["summary"]
                extra = f" shapes {s['shapes']:.0%} POPE {s['pope']:.0%} chart values {s['chart_values']:.0%}"
            print(f"{name:<6} {state:<10} {folder}{extra}")
        return
    if not names:
        raise UserError(f"name a target to build: {', '.join(TOY_SPECS)}")
    for name in names:
        if name not in TOY_SPECS:
            raise UserError(f"unknown toy target {name!r}; known: {', '.join(TOY_SPECS)}")
    for name in names:
        spec = TOY_SPECS[name]
        folder = target_dir(name, home)
        if cfg.force or not is_built(spec, home):
            print(f"building {name} (deterministic from seed {spec.seed}; an interrupted build resumes)",
                  file=sys.stderr)
            if cfg.force and is_built(spec, home):
                import shutil

                shutil.rmtree(folder)
            build_target(spec, home, log=lambda m: print(m, file=sys.stderr))
            print(format_report(name, json.loads((folder / "report.json").read_text())))
        print(folder)


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if "=" not in a and not a.startswith("-")]
    options = [a for a in argv if a not in words]
    command, names = (words[0], words[1:]) if words else ("", [])
    if command not in ("build", "list", "data") and not any(a in ("-h", "--help") for a in argv):
        print(f"error: expected `build NAME`, `list` or `data`, got {' '.join(words) or 'nothing'} (see --help)",
              file=sys.stderr)
        return 2
    return cli.run(ZooConfig, lambda cfg: main(cfg, command, names), "mmvsd.zoo build NAME", __doc__, options)


if __name__ == "__main__":
    sys.exit(run())
