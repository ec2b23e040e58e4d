"""`python eval/drafter_compare.py [key=value ...]`: on a target that sees, which drafter wins, and where?

Four drafters for toy-m, trained by their recipes on the same toy-world data for the same steps,
each then trained `vsd_steps` more steps without VSD (the same-steps control) and with VSD:

- eagle: EAGLE (Li et al. 2024): the target's features at every position, image positions included;
- eagle+image: EAGLE whose image positions read the target's projected image embeddings instead
  (MSD's input without MSD's text-first curriculum);
- msd: MSD (Lin et al. 2025): that input and its curriculum;
- vispec: ViSpec (Kang et al. 2025): the image squeezed into adaptor tokens plus a global feature
  mixed into every text input.

All are benchmarked greedy on three sets of fresh held-out toy images: scene descriptions, chart
descriptions and short VQA (questions with the VQAv2 / ChartQA answer-format suffix). The target
alone runs once per input and every drafter on the same inputs in the same process. Reported per
set: tau (bonus included), speed-up, acceptance by depth, and how many of the emitted image words
(colours, counts and values, kinds, sizes, positions, yes/no, chart labels and titles) and of the
template words came from the drafter (accepted draft tokens, not the target's bonus token).
Writes OUT/report.md, OUT/results.json and OUT/drafters.png; training runs go to OUT/runs/ and
are reused when the command is run again.

    python eval/drafter_compare.py                  # ~75 min on a 2-core CPU (two trainings at a time)
    python eval/drafter_compare.py kinds=eagle,msd steps=60 vsd_steps=20 n=2 out=/tmp/cmp   # a quick look
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli, metrics
from mmvsd.config import DecodeConfig, TreeConfig, opt
from mmvsd.errors import UserError
from mmvsd.train import train_once

BASE_RECIPES = {"eagle": ["recipe=toy_eagle"], "eagle+image": ["recipe=toy_msd", "text_first_steps=0", "text_ramp_steps=0"],
                "msd": ["recipe=toy_msd"], "vispec": ["recipe=toy_vispec"]}
SETS = ("scene descriptions", "chart descriptions", "short VQA")


@dataclass
class CompareConfig:
    """Vision-blind and vision-aware drafters, without and with VSD, on a target that sees."""

    out: str = opt("eval/drafters", "folder for report.md, results.json, drafters.png and the training runs")
    kinds: str = opt("eagle,eagle+image,msd,vispec", "drafters to compare, comma-separated")
    target: str = opt("toy-m", "the target the recipes train for")
    steps: int = opt(600, "steps of every baseline recipe")
    vsd_steps: int = opt(200, "further steps without VSD (the control) and with VSD")
    n: int = opt(16, "held-out toy images per set")
    max_new_tokens: int = opt(96, "tokens per description (short answers stop at EOS)")
    jobs: int = opt(2, "trainings at a time (each with one thread when > 1)")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds.split(",") if k not in BASE_RECIPES]
        if unknown:
            raise UserError(f"unknown drafter {unknown[0]!r} in kinds; known: {', '.join(BASE_RECIPES)}")
        for name in ("steps", "vsd_steps", "n", "max_new_tokens", "jobs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


def train_all(cfg: CompareConfig) -> list[dict]:
    """Every drafter's folder, labelled: baselines first, then the control and VSD runs on top."""
    runs, kinds = Path(cfg.out) / "runs", cfg.kinds.split(",")
    slug = {kind: kind.replace("+", "_") for kind in kinds}
    if cfg.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # the trainings run side by side
    with ThreadPoolExecutor(cfg.jobs) as pool:
        bases = list(pool.map(lambda k: train_once([*BASE_RECIPES[k], f"target={cfg.target}", f"steps={cfg.steps}"],
                                                   runs / f"{slug[k]}_baseline"), kinds))
        # The VSD recipes differ only in their default drafter, named here.
        more = [(kind, label, ["recipe=toy_msd_vsd", f"target={cfg.target}", f"drafter={base}",
                               f"steps={cfg.vsd_steps}", *flags], runs / f"{slug[kind]}_{tag}")
                for kind, base in zip(kinds, bases)
                for label, tag, flags in (("no VSD", "control", ["vsd.enabled=false"]), ("VSD", "vsd", []))]
        folders = list(pool.map(lambda row: train_once(row[2], row[3]), more))
    return ([{"kind": k, "label": "baseline", "drafter": str(b)} for k, b in zip(kinds, bases)]
            + [{"kind": k, "label": label, "drafter": str(f)} for (k, label, _, _), f in zip(more, folders)])


def inputs(cfg: CompareConfig, target) -> dict[str, list]:
    """Encoded prompts of each held-out set, from streams no training run draws from."""
    from mmvsd.toyworld.data import questions, random_sample
    from mmvsd.toyworld.language import DESCRIBE_PROMPTS, SHORT_ANSWER, SINGLE_WORD

    size = target.processor.image_processor.crop_size["height"]
    prompts = {}
    for name, chart_share in zip(SETS, (0.0, 1.0, 0.45)):
        rng = random.Random(f"drafter-compare-{name}")
        samples = [random_sample(rng, size, chart_share) for _ in range(cfg.n)]
        if name == "short VQA":
            texts = [rng.choice(questions(s, rng)).question + (SINGLE_WORD if s.is_chart else SHORT_ANSWER)
                     for s in samples]
        else:
            texts = [DESCRIBE_PROMPTS[i % len(DESCRIBE_PROMPTS)] for i in range(cfg.n)]
        prompts[name] = [target.encode(s.image, text, cfg.max_new_tokens) for s, text in zip(samples, texts)]
    return prompts


def image_words() -> set[str]:
    """Words only the image can tell."""
    from mmvsd.toyworld.charts import LABELS, TITLES
    from mmvsd.toyworld.language import NUMBER_WORDS, WHERE, plural
    from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, SIZES

    words = {*COLOURS, *KINDS, *map(plural, KINDS), *SIZES, *NUMBER_WORDS, *LABELS, *TITLES, "yes", "no"}
    words |= {w for phrase in [*BACKGROUNDS, *WHERE] for w in phrase.split()}
    return {w.lower() for w in words} | {str(v) for v in range(100)}


def drafted_tokens(steps: list) -> list[tuple[int, bool]]:
    """(token, came from the draft) for every token emitted by a verification step."""
    out = []
    for step in metrics.verify_steps(steps):
        flags = [True] * step.accepted + [False]  # the accepted path, then the target's bonus token
        out += list(zip(step.tokens, flags))
    return out


def bench_all(cfg: CompareConfig, rows: list[dict]) -> None:
    """Fill each row with per-set tau, speed-up, acceptance by depth and drafted shares."""
    from tqdm import tqdm

    from mmvsd.decoding import autoregressive_generate, collect_tokens, speculative_generate
    from mmvsd.drafters import load_drafter
    from mmvsd.models import load_target

    target = load_target(cfg.target)
    drafters = [load_drafter(row["drafter"], target) for row in rows]
    decode = DecodeConfig(cfg.max_new_tokens, tree=TreeConfig())
    words = image_words()
    prompts = inputs(cfg, target)
    warm = DecodeConfig(8, tree=decode.tree)
    list(autoregressive_generate(target, prompts[SETS[0]][0], warm))
    list(speculative_generate(target, drafters[0], prompts[SETS[0]][0], warm))
    for name, encoded in prompts.items():
        base_s, steps, spec_s = 0.0, [[] for _ in rows], [0.0] * len(rows)
        for prompt in tqdm(encoded, desc=name, unit="input", file=sys.stderr):
            start = time.perf_counter()
            expected = [t for s in autoregressive_generate(target, prompt, decode) for t in s.tokens]
            base_s += time.perf_counter() - start
            for i, (row, drafter) in enumerate(zip(rows, drafters)):
                start = time.perf_counter()
                got = list(speculative_generate(target, drafter, prompt, decode))
                spec_s[i] += time.perf_counter() - start
                if collect_tokens(got) != expected:
                    raise UserError(f"{row['drafter']}: speculative output differs from the target's (a losslessness bug)")
                steps[i] += got
        for row, row_steps, seconds in zip(rows, steps, spec_s):
            tagged = [(target.decode([t]).strip().lower() in words, drafted) for t, drafted in drafted_tokens(row_steps)]
            share = {kind: [d for is_image, d in tagged if is_image == (kind == "image")] for kind in ("image", "template")}
            row[name] = {"tau": metrics.tau(row_steps), "speedup": base_s / seconds,
                         "acceptance_by_depth": metrics.acceptance_by_depth(row_steps, decode.tree.depth),
                         **{f"{kind}_drafted": sum(d) / max(1, len(d)) for kind, d in share.items()},
                         **{f"{kind}_tokens": len(d) for kind, d in share.items()}}


def report_markdown(cfg: CompareConfig, rows: list[dict]) -> str:
    lines = [f"Drafters on {cfg.target}: baselines {cfg.steps} steps, then {cfg.vsd_steps} more steps without or with VSD; "
             f"{cfg.n} held-out images per set, greedy, {cfg.max_new_tokens} new tokens at most, tree 10/2/16; outputs "
             "identical to the target's. Cells: tau, speed-up, share of image words / template words that the "
             "drafter supplied.", ""]
    lines += ["| drafter | " + " | ".join(SETS) + " |", "|---|" + "---|" * len(SETS)]
    for row in rows:
        cells = [f"{row[s]['tau']:.2f}, {row[s]['speedup']:.2f}x, {row[s]['image_drafted']:.2f} / "
                 f"{row[s]['template_drafted']:.2f}" for s in SETS]
        lines.append(f"| {row['kind']}, {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Acceptance by depth (share of steps accepting at least d draft tokens, d = 1..10), scene descriptions:",
              "", "| drafter | " + " | ".join(f"d={d}" for d in range(1, 11)) + " |", "|---|" + "---|" * 10]
    for row in rows:
        accepted = row[SETS[0]]["acceptance_by_depth"]
        lines.append(f"| {row['kind']}, {row['label']} | " + " | ".join(f"{a:.2f}" for a in accepted) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab20").colors  # one colour per drafter, up to 20
    for i, row in enumerate(rows):
        xs = [x + i * width for x in range(len(SETS))]
        style = {"color": colours[i % len(colours)], "label": f"{row['kind']}, {row['label']}"}
        axes[0].bar(xs, [row[s]["tau"] for s in SETS], width, **style)
        axes[1].bar(xs, [row[s]["image_drafted"] for s in SETS], width, color=style["color"])
    for ax, title in zip(axes, ("tau (tokens per target forward)", "share of image words from the drafter")):
        ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(SETS))], SETS, fontsize=8)
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)


def main(cfg: CompareConfig) -> None:
    out = Path(cfg.out)
    rows = train_all(cfg)
    bench_all(cfg, rows)
    (out / "results.json").write_text(json.dumps({"config": vars(cfg), "rows": rows}, indent=2))
    (out / "report.md").write_text(report_markdown(cfg, rows))
    plot(rows, out / "drafters.png")
    print((out / "report.md").read_text())


if __name__ == "__main__":
    sys.exit(cli.run(CompareConfig, main, "python eval/drafter_compare.py", __doc__))
