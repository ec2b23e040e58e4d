"""`python -m mmvsd.zoo`: the toy world's targets: shipped, rebuilt, reported.

    python -m mmvsd.zoo report toy-m     # the shipped target's held-out accuracy, blind controls, samples
    python -m mmvsd.zoo report toy-s remeasure=10   # and measure it again now, 10 questions per family
    python -m mmvsd.zoo list             # shipped and built targets, where, and their accuracy
    python -m mmvsd.zoo build toy-s      # rebuild it from nothing under $MMVSD_HOME
    python -m mmvsd.zoo build toy-m ship=true   # rebuild, then copy it into the package (maintainers)
    python -m mmvsd.zoo tasks            # the lmms-eval task files with the toy test splits: prints the
                                         # folder to pass as --include_path (made once, under $MMVSD_HOME)
    python -m mmvsd.zoo export runs/toy_msd/drafter out/msd layout=msd   # a trained drafter in its
                                         # authors' layout (EAGLE, MSD or ViSpec: key names, file, config)

toy-s and toy-m ship trained inside the package (mmvsd/weights/targets): nothing is built on the
way to a benchmark. A build lives under $MMVSD_HOME/targets (default ~/.cache/mmvsd), next to the
toy-world datasets; it is deterministic from its seed, resumes if interrupted, prints its report
(held-out accuracy per question family next to blind controls, sample descriptions, per-token
decode time) and prints the folder last.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli
from mmvsd.checks import check_output_dir, mmvsd_home
from mmvsd.config import THREADS_HELP, opt, require_threads
from mmvsd.errors import UserError


@dataclass
class ZooConfig:
    home: str | None = opt(None, "where targets are kept (default: $MMVSD_HOME or ~/.cache/mmvsd)")
    force: bool = opt(False, "rebuild even if the target is already built")
    ship: bool = opt(False, "`build`: copy the built target into the package (mmvsd/weights/targets)")
    remeasure: int = opt(0, "`report`: measure again now on this many held-out questions per family (0: no)")
    layout: str = opt("", "`export`: the authors' layout to write, eagle, msd or vispec (default: the drafter's kind)")
    target: str = opt("", "`export`: the drafter's target, whose embedding the authors' files carry "
                          "(default: the toy target the drafter was trained for)")
    threads: int = opt(0, THREADS_HELP)
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        require_threads(self.threads)


def format_report(name: str, report: dict) -> str:
    summary, families = report["summary"], report["families"]
    lines = [f"{name}: held-out accuracy (greedy; blind controls: the same question about another image, "
             "about a blank image, and the most common training answer)",
             f"  {'family':<18} {'n':>4} {'accuracy':>9} {'wrong image':>12} {'blank':>7} {'majority':>9}  extra"]
    for family, row in families.items():
        extra = f"F1 {row['f1']:.2f}, yes-ratio {row['yes_ratio']:.2f}" if "f1" in row else ""
        lines.append(f"  {family:<18} {row['n']:>4} {row['accuracy']:>9.1%} {row['shuffled_image_accuracy']:>12.1%} "
                     f"{row.get('blank_image_accuracy', float('nan')):>7.1%} {row['majority_answer_accuracy']:>9.1%}  "
                     f"{extra}")
    lines += [f"  shapes {summary['shapes']:.1%} (wrong image {summary['shapes_shuffled_image']:.1%}), "
              f"POPE {summary['pope']:.1%}, chart values {summary['chart_values']:.1%}, charts {summary['charts']:.1%}",
              f"  description facts F1 {summary['description_fact_f1']:.2f} "
              f"(with a wrong image {summary['description_fact_f1_wrong_image']:.2f})"
              + (f", CHAIR_i {summary['chair_i']:.2f}" if "chair_i" in summary else ""),
              f"  decode {report['decode_ms_per_token']:.1f} ms/token"
              + (f"; built in {report['build_seconds'] / 60:.1f} min" if "build_seconds" in report else "")]
    if "description_words" in report:
        w = report["description_words"]
        lines.insert(-1, f"  next word of reference descriptions (teacher forced): image words "
                         f"{w['image_words_right_image']:.1%} (wrong image {w['image_words_wrong_image']:.1%}), "
                         f"other words {w['other_words_right_image']:.1%} ({w['other_words_wrong_image']:.1%})")
    for sample in report["descriptions"]:
        lines += [f"  [{sample['kind']}] {sample['prompt']}", f"    target:    {sample['generated']}",
                  f"    reference: {sample['reference']}"]
    return "\n".join(lines)


def report_folder(name: str, home: Path | None) -> Path:
    """The folder whose report `zoo report NAME` shows: a toy target's, or any folder with a report."""
    from mmvsd.toyworld.targets.build import TOY_SPECS, is_current, shipped_target_dir, target_dir

    if name in TOY_SPECS:
        for folder in (shipped_target_dir(name), target_dir(name, home)):
            if is_current(folder, TOY_SPECS[name]):
                return folder
        raise UserError(f"{name} is neither shipped nor built here; run `python -m mmvsd.zoo build {name}`")
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise UserError(f"unknown toy target or folder {name!r}; known targets: {', '.join(TOY_SPECS)}")
    if not (folder / "report.json").is_file():
        raise UserError(f"{folder} has no report.json; reports are written by `python -m mmvsd.zoo build NAME`")
    return folder


def main(cfg: ZooConfig, command: str, names: list[str]) -> None:
    from mmvsd.toyworld.targets.build import TOY_SPECS, build_target, is_built, is_current, ship, shipped_target_dir, target_dir

    home = check_output_dir(cfg.home, "home") if cfg.home else None
    if command in ("build", "tasks"):
        home = home or mmvsd_home()  # checked writable before minutes of work
    if command == "tasks":
        from mmvsd.lmms.task_files import task_folder

        print(task_folder(home, log=lambda m: print(m, file=sys.stderr)))
        return
    if command == "export":
        export(cfg, names)
        return
    if command == "list":
        for name, spec in TOY_SPECS.items():
            for where, folder, ok in (("shipped", shipped_target_dir(name), is_current(shipped_target_dir(name), spec)),
                                      ("built", target_dir(name, home), is_built(spec, home))):
                extra = ""
                if ok:
                    s = json.loads((folder / "report.json").read_text())["summary"]
                    extra = f" shapes {s['shapes']:.0%} POPE {s['pope']:.0%} chart values {s['chart_values']:.0%}"
                print(f"{name:<6} {where + ':':<8} {'yes' if ok else 'no':<4} {folder}{extra}")
        return
    if not names:
        raise UserError(f"name a target: {', '.join(TOY_SPECS)}")
    if command == "report":
        for name in names:
            folder = report_folder(name, home)
            report = json.loads((folder / "report.json").read_text())
            print(format_report(name, report))
            if cfg.remeasure > 0:
                from mmvsd.models import load_target
                from mmvsd.toyworld.targets.build import ensure_datasets
                from mmvsd.toyworld.targets.evaluate import evaluate_target

                fresh = evaluate_target(load_target(str(folder)), ensure_datasets(home), cfg.remeasure,
                                        max(2, cfg.remeasure // 4))
                print(format_report(f"{name} (measured again now)", fresh))
            print(folder)
        return
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
        if cfg.ship:
            folder = ship(name, home)
        print(folder)


def export(cfg: ZooConfig, names: list[str]) -> None:
    """`export FOLDER OUT`: an mmvsd drafter written in its authors' layout (drafters.layouts)."""
    from mmvsd.drafters import DRAFTERS, drafter_folder, drafter_kind, load_drafter
    from mmvsd.drafters.layouts import check_layout, is_authors_folder, write_authors
    from mmvsd.models import load_target
    from mmvsd.toyworld.targets.build import TOY_SPECS

    if len(names) != 2:
        raise UserError("export takes a drafter and an output folder: mmvsd zoo export FOLDER OUT layout=eagle|msd|vispec")
    source, out = names
    if source in DRAFTERS:
        raise UserError(f"{source} is a drafter kind, not a trained drafter: export a drafter folder")
    kind = drafter_kind(source)
    layout = cfg.layout or kind
    check_layout(layout, kind)  # before a model loads
    out = check_output_dir(out, "OUT")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; export into a new folder")
    folder = drafter_folder(source)
    if not cfg.target and is_authors_folder(folder):
        raise UserError(f"{source} is in an author's layout already, without a record of its target: name it, target=ID")
    if cfg.target:
        target = load_target(cfg.target)
    else:  # the toy target whose fingerprint the drafter's config records (an mmvsd folder: kind read above)
        recorded = json.loads((folder / "config.json").read_text()).get("target")
        target = next((t for t in map(load_target, TOY_SPECS) if t.fingerprint() == recorded), None)
        if target is None:
            raise UserError(f"{source} was not trained for a toy target: name its target, target=ID")
    drafter = load_drafter(source, target)
    if drafter.spec.draft_vocab:
        print(f"note: the authors' layouts draft over the whole vocabulary; the drafter's draft_vocab of "
              f"{len(drafter.spec.draft_vocab)} tokens is not written", file=sys.stderr)
    print(write_authors(drafter, target.embed_tokens.weight, out, layout))


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if "=" not in a and not a.startswith("-")]
    options = [a for a in argv if a not in words]
    command, names = (words[0], words[1:]) if words else ("", [])
    if command not in ("build", "report", "list", "tasks", "export") and not any(a in ("-h", "--help") for a in argv):
        print(f"error: expected `build NAME`, `report NAME`, `list`, `tasks` or `export FOLDER OUT`, got "
              f"{' '.join(words) or 'nothing'} (see --help)", file=sys.stderr)
        return 2
    return cli.run(ZooConfig, lambda cfg: main(cfg, command, names),
                   "mmvsd zoo build|report NAME | list | tasks | export FOLDER OUT", __doc__, options)


if __name__ == "__main__":
    sys.exit(run())
