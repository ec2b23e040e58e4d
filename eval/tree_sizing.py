"""`python eval/tree_sizing.py target=... drafter=... [key=value ...]`: `tree=auto` against the fixed presets.

One process per target: on the same held-out toy inputs (descriptions and short VQA, the answer
format suffixes of VQAv2 / ChartQA), the target alone runs once per input, then every tree setting
on the same input, in an order that rotates from one input to the next (no setting always runs
first after the target). Greedy: every output must equal the target's. Reported per set and
setting: speed-up over the target alone (tokens per second, prefill included), tau, the mean tree
verified (tokens, depth) and, for auto, the share of steps it decoded plainly. The row is merged
into OUT/results.json (keyed by target and drafter) and OUT/report.md is rewritten from all rows.

    python eval/tree_sizing.py target=toy-m drafter=toy-m-msd
    python eval/tree_sizing.py target=random:llava-1.5-7b target_layers=2 vision_layers=2 drafter=eagle sets=descriptions
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli, metrics
from mmvsd.config import DecodeConfig, TreeConfig, opt
from mmvsd.errors import UserError

SETS = ("descriptions", "short VQA")


@dataclass
class SizingConfig:
    """tree=auto vs the presets, side by side in one process."""

    target: str = opt("toy-m", "the target, as everywhere in mmvsd")
    target_layers: int = opt(0, "random:* targets: keep the first N language-model layers (0 = all)")
    vision_layers: int = opt(0, "random:* targets: keep the first N vision-tower layers (0 = all)")
    drafter: str = opt("toy-m-msd", "a drafter folder, shipped drafter or kind (a kind: untrained)")
    trees: list[str] = opt(list(TreeConfig.presets()), "tree presets to compare")
    sets: list[str] = opt(list(SETS), "input sets: descriptions, short VQA")
    n: int = opt(8, "held-out toy inputs per set")
    max_new_tokens: int = opt(96, "tokens per answer at most (short answers stop at EOS)")
    out: str = opt("eval/trees", "folder for results.json and report.md")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        presets = TreeConfig.presets()
        for name in self.trees:
            if name not in presets:
                raise UserError(f"unknown tree {name!r} in trees; presets: {', '.join(presets)}")
        for name in self.sets:
            if name not in SETS:
                raise UserError(f"unknown set {name!r} in sets; known: {', '.join(SETS)}")
        if self.n < 1 or self.max_new_tokens < 1:
            raise UserError("n and max_new_tokens must be >= 1")


def inputs(cfg: SizingConfig, target, name: str) -> list:
    """Encoded prompts of one held-out set, from a stream no training run draws from."""
    from mmvsd.toyworld.data import questions, random_sample
    from mmvsd.toyworld.language import DESCRIBE_PROMPTS, SHORT_ANSWER, SINGLE_WORD

    size = target.processor.image_processor.crop_size["height"]
    rng = random.Random(f"tree-sizing-{name}")
    samples = [random_sample(rng, size, 0.45) for _ in range(cfg.n)]
    if name == "short VQA":
        texts = [rng.choice(questions(s, rng)).question + (SINGLE_WORD if s.is_chart else SHORT_ANSWER) for s in samples]
    else:
        texts = [DESCRIBE_PROMPTS[i % len(DESCRIBE_PROMPTS)] for i in range(cfg.n)]
    return [target.encode(s.image, text, cfg.max_new_tokens) for s, text in zip(samples, texts)]


def measure(cfg: SizingConfig) -> dict:
    from tqdm import tqdm

    from mmvsd.decoding import autoregressive_generate, collect_tokens, speculative_generate
    from mmvsd.decoding.speculative import tree_chooser
    from mmvsd.drafters import load_drafter
    from mmvsd.models import load_target

    target = load_target(cfg.target, layers=cfg.target_layers, vision_layers=cfg.vision_layers)
    drafter = load_drafter(cfg.drafter, target)
    presets = TreeConfig.presets()
    decodes = {name: DecodeConfig(cfg.max_new_tokens, tree=presets[name]) for name in cfg.trees}
    sets = {name: inputs(cfg, target, name) for name in cfg.sets}
    first = next(iter(sets.values()))[0]
    if "auto" in cfg.trees:
        tree_chooser(target, drafter, first, presets["auto"])  # calibrated before any timing
    warm = DecodeConfig(8, tree=presets["narrow"])  # first calls of each shape pay one-off costs
    list(autoregressive_generate(target, first, warm))
    list(speculative_generate(target, drafter, first, warm))
    results = {}
    for set_name, prompts in sets.items():
        auto = tree_chooser(target, drafter, first, presets["auto"]) if "auto" in cfg.trees else None  # a session per set
        base_s, base_tokens = 0.0, 0
        steps = {name: [] for name in cfg.trees}
        seconds = dict.fromkeys(cfg.trees, 0.0)
        for i, prompt in enumerate(tqdm(prompts, desc=set_name, unit="input", file=sys.stderr)):
            start = time.perf_counter()
            expected = collect_tokens(autoregressive_generate(target, prompt, decodes[cfg.trees[0]]))
            base_s += time.perf_counter() - start
            base_tokens += len(expected)
            for name in cfg.trees[i % len(cfg.trees):] + cfg.trees[: i % len(cfg.trees)]:
                start = time.perf_counter()
                got = list(speculative_generate(target, drafter, prompt, decodes[name], auto))
                seconds[name] += time.perf_counter() - start
                if collect_tokens(got) != expected:
                    raise UserError(f"tree={name}: speculative output differs from the target's (a losslessness bug)")
                steps[name] += got
        results[set_name] = {name: summarize(steps[name], seconds[name], base_tokens / base_s) for name in cfg.trees}
    return {"target": cfg.target, "target_layers": cfg.target_layers, "vision_layers": cfg.vision_layers,
            "drafter": cfg.drafter, "n": cfg.n, "max_new_tokens": cfg.max_new_tokens, "sets": results}


def summarize(steps: list, seconds: float, base_tps: float) -> dict:
    shape = metrics.trees(steps)
    tokens = sum(len(s.tokens) for s in steps)
    return {"speedup": tokens / seconds / base_tps, "tau": metrics.tau(steps),
            "tree_tokens": max(0.0, shape["tree_nodes"] - 1), "tree_depth": shape["tree_depth"],
            "plain_share": shape["plain_steps"] / max(1, shape["steps"])}


def report_markdown(rows: list[dict]) -> str:
    lines = ["tree=auto vs the fixed presets: speed-up over the target alone (prefill included), tau, mean draft "
             "tokens verified / depth, and for auto the share of steps decoded plainly. Greedy, outputs identical "
             "to the target's; one process per row, 2 cores.", ""]
    for row in rows:
        shape = f" ({row['target_layers']} layers)" if row["target_layers"] else ""
        lines += [f"### {row['target']}{shape} + {row['drafter']}, {row['n']} inputs per set, {row['max_new_tokens']} "
                  "tokens at most", "", "| tree | " + " | ".join(row["sets"]) + " |", "|---|" + "---|" * len(row["sets"])]
        for name in next(iter(row["sets"].values())):
            cells = []
            for result in row["sets"].values():
                r = result[name]
                plain = f", {r['plain_share']:.0%} plain" if name == "auto" else ""
                tau = "n/a" if r["tau"] is None else f"{r['tau']:.2f}"
                cells.append(f"**{r['speedup']:.2f}x**, tau {tau}, {r['tree_tokens']:.1f} / {r['tree_depth']:.1f}{plain}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(cfg: SizingConfig) -> None:
    row = measure(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    file = out / "results.json"
    rows = [r for r in (json.loads(file.read_text()) if file.exists() else [])
            if (r["target"], r["target_layers"], r["drafter"]) != (row["target"], row["target_layers"], row["drafter"])]
    rows.append(_no_nan(row))
    file.write_text(json.dumps(rows, indent=1))
    (out / "report.md").write_text(report_markdown(rows))
    print(report_markdown(rows[-1:]))


def _no_nan(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(cli.run(SizingConfig, main, "python eval/tree_sizing.py", __doc__))
