"""Probe a toy target with scenes it has never seen the like of: drawn here, by code that shares
nothing with the toy world's generator but its vocabulary (colour names, kinds, backgrounds).

Shapes are drawn without outlines, in other shades, anywhere (not on the 3x3 grid), on canvases
of other sizes (the processor rescales them); questions use everyday wordings. Writes a table of
accuracy per question kind, with a blank-image control for each.

    python eval/unseen_probes.py target=toy-m n=60
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvsd import cli  # noqa: E402
from mmvsd.config import opt  # noqa: E402

SHADES = {"red": (230, 25, 35), "green": (30, 150, 70), "blue": (30, 60, 200), "yellow": (250, 215, 40),
          "purple": (130, 50, 170), "orange": (250, 140, 30), "black": (10, 10, 10), "white": (255, 255, 255)}
BACKDROPS = {"grey": (140, 140, 140), "beige": (230, 220, 195), "light blue": (180, 210, 240)}
KINDS = ("circle", "square", "triangle", "star")


@dataclass
class ProbeConfig:
    target: str = opt("toy-m", "the target to probe")
    n: int = opt(60, "scenes to draw")
    seed: int = opt(0, "seed of the drawings and questions")
    json: str | None = opt(None, "write the results here too")
    dry_run: bool = opt(False, "print the resolved config and exit")


def draw(shapes: list[tuple[str, str, float, float, float]], backdrop: str, side: int) -> Image.Image:
    """shapes: (kind, colour, x, y, radius) in units of the side."""
    image = Image.new("RGB", (side, side), BACKDROPS[backdrop])
    pen = ImageDraw.Draw(image)
    for kind, colour, x, y, r in shapes:
        cx, cy, rr, fill = x * side, y * side, r * side, SHADES[colour]
        if kind == "circle":
            pen.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=fill)
        elif kind == "square":
            pen.rectangle([cx - rr * 0.8, cy - rr * 0.8, cx + rr * 0.8, cy + rr * 0.8], fill=fill)
        elif kind == "triangle":
            pen.polygon([(cx, cy - rr), (cx - rr, cy + rr * 0.85), (cx + rr, cy + rr * 0.85)], fill=fill)
        else:
            pen.polygon([(cx + (rr if i % 2 == 0 else rr * 0.4) * math.cos(-math.pi / 2 + i * math.pi / 5),
                          cy + (rr if i % 2 == 0 else rr * 0.4) * math.sin(-math.pi / 2 + i * math.pi / 5))
                         for i in range(10)], fill=fill)
    return image


def random_probe(rng: random.Random):
    count = rng.randint(1, 4)
    kinds = rng.sample(KINDS, count)  # one shape of each kind: "the star" is unambiguous
    shapes, placed = [], []
    while len(shapes) < count:
        r = rng.uniform(0.09, 0.15)
        x, y = rng.uniform(r + 0.02, 0.98 - r), rng.uniform(r + 0.02, 0.98 - r)
        if all(math.dist((x, y), (px, py)) > r + pr + 0.03 for px, py, pr in placed):
            shapes.append((kinds[len(shapes)], rng.choice(list(SHADES)), x, y, r))
            placed.append((x, y, r))
    return shapes, rng.choice(list(BACKDROPS)), rng.choice([160, 224, 300, 336, 420, 512])


def probe(cfg: ProbeConfig) -> dict:
    from mmvsd.models import load_target
    from mmvsd.toyworld.targets.evaluate import generate, normalize

    target = load_target(cfg.target)
    rng = random.Random(f"unseen-{cfg.seed}")
    results: dict[str, list[list[bool]]] = {}
    for _ in range(cfg.n):
        shapes, backdrop, side = random_probe(rng)
        image = draw(shapes, backdrop, side)
        blank = Image.new("RGB", (side, side), BACKDROPS[backdrop])
        kind, colour, *_ = rng.choice(shapes)
        absent = rng.choice([(c, k) for c in SHADES for k in KINDS if (k, c) not in {(s[0], s[1]) for s in shapes}])
        asked = rng.choice([(colour, kind), absent])
        questions = {
            "colour of a named shape": (rng.choice([f"What colour is the {kind}?", f"What color is the {kind}?",
                                                    f"What is the color of the {kind}?"]), colour),
            "count": (rng.choice(["How many shapes are there?", "How many objects are in the image?"]),
                      str(len(shapes))),
            "yes/no presence": (f"Is there a {asked[0]} {asked[1]} in the image?",
                                "yes" if asked == (colour, kind) else "no"),
            "background": ("What color is the background?", backdrop),
        }
        for family, (question, answer) in questions.items():
            said = [normalize(generate(target, picture, question, 6)[0]) for picture in (image, blank)]
            results.setdefault(family, []).append([s.split()[0] == answer.split()[0] if s else False for s in said])
    return {family: {"n": len(rows), "accuracy": sum(r[0] for r in rows) / len(rows),
                     "blank_image_accuracy": sum(r[1] for r in rows) / len(rows)} for family, rows in results.items()}


def main(cfg: ProbeConfig) -> None:
    table = probe(cfg)
    print(f"unseen probes on {cfg.target} ({cfg.n} scenes drawn outside the toy world; answer word first)")
    print(f"  {'question':<26} {'n':>4} {'accuracy':>9} {'blank image':>12}")
    for family, row in table.items():
        print(f"  {family:<26} {row['n']:>4} {row['accuracy']:>9.1%} {row['blank_image_accuracy']:>12.1%}")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"target": cfg.target, "n": cfg.n, "families": table}, indent=2))


if __name__ == "__main__":
    sys.exit(cli.run(ProbeConfig, main, "python eval/unseen_probes.py", __doc__, sys.argv[1:]))
