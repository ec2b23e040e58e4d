"""How fast a toy target's language model learns look-ups, with and without the grounding loss.

The build's own pieces (toy-s's model and tokenizer, `_Builder._collate`, the grounding loss)
trained from scratch on one question per image from the chosen families, and a quiz on fresh
images every 50 steps (greedy exact match, teacher-forced). The features are the ground-truth
features on the 6x6 grid of stage 1, or a built target's tower's own features at its real token
count (`tower=FOLDER`). README, "How the targets learn to look", has the measured table.

    python eval/grounding_ablation.py ground_weight=0 steps=400
    python eval/grounding_ablation.py ground_weight=1 phrase_weight=0.3 families=colour,presence,shape
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvsd import cli  # noqa: E402
from mmvsd.config import opt  # noqa: E402


@dataclass
class AblationConfig:
    ground_weight: float = opt(1.0, "weight of the grounding loss (0 = the answer loss alone)")
    phrase_weight: float = opt(0.3, "weight of the phrase head, relative to the word head")
    families: str = opt("colour,presence,shape", "question families, comma-separated, or all")
    chart_share: float = opt(0.0, "share of charts among the images (chart families need some)")
    steps: int = opt(600, "training steps")
    batch_size: int = opt(64, "questions (one per image) per step")
    lr: float = opt(1e-3, "AdamW learning rate")
    seed: int = opt(0, "seed of the model, tokenizer and data")
    tower: str | None = opt(None, "toy-s or a built toy-s folder: learn on its tower's own features, not ground truth")
    out: str = opt("runs/grounding-ablation", "where the tokenizer is kept (the toy datasets come from $MMVSD_HOME)")
    json: str | None = opt(None, "write the quiz curve here too")
    dry_run: bool = opt(False, "print the resolved config and exit")


def main(cfg: AblationConfig) -> None:
    from mmvsd.checks import mmvsd_home
    from mmvsd.toyworld.data import questions, random_sample
    from mmvsd.toyworld.language import SHORT_ANSWER
    from mmvsd.toyworld.targets import build

    wanted = None if cfg.families == "all" else set(cfg.families.split(","))
    _check(cfg, wanted)
    torch.manual_seed(cfg.seed)
    spec = dataclasses.replace(build.TOY_SPECS["toy-s"], seed=cfg.seed, ground_weight=cfg.ground_weight,
                               ground_phrase_weight=cfg.phrase_weight)
    work = Path(cfg.out) / f"seed-{cfg.seed}"
    work.mkdir(parents=True, exist_ok=True)
    builder = build._Builder(spec, work, mmvsd_home(), print)
    model = builder.model
    if cfg.tower:
        _load_tower(model, Path(cfg.tower))
    size, grid = (spec.image_size, builder.grid) if cfg.tower else (32, spec.truth_grid)

    def draw(rng: random.Random):
        """(sample, one question) from the chosen families."""
        while True:
            sample = random_sample(rng, size, chart_share=cfg.chart_share)
            pool = [qa for qa in questions(sample, rng) if wanted is None or _family(qa.family) in wanted]
            if pool:
                return sample, rng.choice(pool)

    def batch(rng: random.Random, n: int, suffix_share: float):
        drawn = [draw(rng) for _ in range(n)]
        turns = [[(qa.question + (SHORT_ANSWER if rng.random() < suffix_share else ""), qa.answer)]
                 for _, qa in drawn]
        families = [_family(qa.family) for _, qa in drawn]
        return families, builder._collate([s for s, _ in drawn], turns, grid, pixels=bool(cfg.tower))

    def features(b):
        if not cfg.tower:
            return builder.truth(b["targets"])
        from mmvsd.toyworld.targets.vision import tower_features

        with torch.no_grad():
            return tower_features(model.model.vision_tower, b["pixel_values"], model.config.vision_feature_layer)

    quiz_families, quiz = batch(random.Random(f"quiz-{cfg.seed}"), 600, 0.0)
    params = [p for name, p in model.named_parameters() if "vision_tower" not in name]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    curve, start = [], time.time()
    bar = tqdm(range(cfg.steps + 1), desc="look-ups", unit="step", dynamic_ncols=True)
    for step in bar:
        if step % 50 == 0 or step == cfg.steps:
            accuracy = _quiz(model, quiz, quiz_families, features)
            curve.append({"step": step, "seconds": round(time.time() - start), **accuracy})
            tqdm.write(" ".join(f"{k} {v}" for k, v in curve[-1].items()))
        if step == cfg.steps:
            break
        _, b = batch(random.Random(f"train-{cfg.seed}-{step}"), cfg.batch_size, 0.3)
        loss, stats = builder._answer_and_grounding_loss(b, features(b))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in stats.items()}, refresh=False)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"config": dataclasses.asdict(cfg), "curve": curve}, indent=2))


SCENE_FAMILIES = ("count", "count_kind", "background", "colour", "shape", "position", "size", "pope", "presence")
CHART_FAMILIES = ("chart_value", "chart_highest", "chart_lowest", "chart_count", "chart_title", "chart_difference")


def _check(cfg: AblationConfig, wanted: set[str] | None) -> None:
    """Refuse, before any work, what would fail or hang later."""
    from mmvsd.errors import UserError

    if cfg.steps < 1 or cfg.batch_size < 1:
        raise UserError(f"steps={cfg.steps} and batch_size={cfg.batch_size} must both be at least 1")
    if not 0 <= cfg.chart_share <= 1:  # also refuses nan
        raise UserError(f"chart_share={cfg.chart_share} must be between 0 and 1")
    if cfg.json and not Path(cfg.json).resolve().parent.is_dir():
        raise UserError(f"json={cfg.json}: its folder does not exist; create it or write elsewhere")
    if wanted is None:
        return
    chart_share = cfg.chart_share
    unknown = wanted - set(SCENE_FAMILIES) - set(CHART_FAMILIES)
    if unknown:
        raise UserError(f"unknown families {', '.join(sorted(unknown))}; choose among "
                        f"{', '.join(SCENE_FAMILIES + CHART_FAMILIES)} or all")
    if chart_share <= 0 and not wanted & set(SCENE_FAMILIES):
        raise UserError("chart families need charts: set chart_share above 0")
    if chart_share >= 1 and not wanted & set(CHART_FAMILIES):
        raise UserError("scene families need scenes: set chart_share below 1")


def _family(name: str) -> str:
    return "pope" if name.startswith("pope") else name


def _quiz(model, batch, families: list[str], features) -> dict[str, float]:
    from mmvsd.toyworld.targets.steps import answers_right

    model.eval()
    with torch.no_grad():
        right = answers_right(model, batch, features(batch)).tolist()
    model.train()
    by_family: dict[str, list[bool]] = {}
    for family, ok in zip(families, right):
        by_family.setdefault(family, []).append(ok)
    return {f: round(sum(v) / len(v), 2) for f, v in sorted(by_family.items())}


def _load_tower(model, folder: Path) -> None:
    """The tower of a built toy-s (a folder, or `toy-s`), loaded into the fresh model."""
    from mmvsd.errors import UserError
    from mmvsd.models import load_target

    tower = load_target(str(folder)).model.model.vision_tower
    try:
        model.model.vision_tower.load_state_dict(tower.state_dict())
    except RuntimeError:
        raise UserError(f"the tower of {folder} is not toy-s's (other shapes); give a built toy-s folder") from None


if __name__ == "__main__":
    sys.exit(cli.run(AblationConfig, main, "python eval/grounding_ablation.py", __doc__, sys.argv[1:]))
