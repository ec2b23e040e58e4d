"""A small MMSpec-style set drawn from the toy world: `data=toy:mmspec` in the bench.

MMSpec ships `<split>/mmspec.jsonl`, one conversation per line, with its images under
`<split>/images/<topic>/`. This writes the same layout and the same keys, so that the path that
reads MMSpec is exercised end to end without it, on questions the toy targets can answer: they
come from the generators the targets are trained on, drawn from a random stream of their own.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from mmvsd.toyworld.charts import Chart, draw_chart, random_chart
from mmvsd.toyworld.data import Sample, questions, random_sample
from mmvsd.toyworld.language import (DESCRIBE_PROMPTS, NUMBER_WORDS, a, chart_questions, name, plural,
                                     scene_questions)
from mmvsd.toyworld.scenes import Scene, draw_scene, random_scene

MMSPEC_VERSION = 1  # bump when what write_mmspec draws changes: the cached set is found by it
TOPICS = ("general vqa", "chart understanding", "image captioning", "multi-turn")


def write_mmspec(folder: Path, seed: int = 0, per_topic: int = 4, image_size: int = 336) -> Path:
    """Write `folder/mmspec.jsonl` and its PNGs under `folder/images/<topic>/`; return the JSONL."""
    rng = random.Random(f"mmspec-{seed}")  # never the streams the toy targets or their test splits are drawn from
    lines = []
    for topic in TOPICS:
        topic_dir = topic.replace(" ", "_")
        (folder / "images" / topic_dir).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_topic + 1):
            sample, turns = _conversation(topic, rng, image_size)
            image = f"{topic_dir}/img_{i:06d}.png"
            sample.image.save(folder / "images" / image)
            lines.append({"id": f"{topic_dir}_{i:06d}", "image": image, "turns": turns,
                          "category": caption(sample.truth), "topic": topic})
    path = folder / "mmspec.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _conversation(topic: str, rng: random.Random, image_size: int) -> tuple[Sample, list[str]]:
    """An image for `topic` and the questions asked about it."""
    if topic == "general vqa":
        scene = random_scene(rng)
        return Sample(scene, draw_scene(scene, image_size)), [rng.choice(scene_questions(scene, rng)).question]
    if topic == "chart understanding":
        chart = random_chart(rng)
        return Sample(chart, draw_chart(chart, image_size)), [rng.choice(chart_questions(chart, rng)).question]
    sample = random_sample(rng, image_size)
    describe = rng.choice(DESCRIBE_PROMPTS)
    if topic == "image captioning":
        return sample, [describe]
    asked = rng.sample(questions(sample, rng), rng.randint(1, 2))  # multi-turn: a description, then questions
    return sample, [describe] + [qa.question for qa in asked]


def caption(truth: Scene | Chart) -> str:
    """A short caption, MMSpec's free-text `category`: "a red circle and a blue star on a grey background"."""
    if isinstance(truth, Chart):
        return f"{a(truth.kind)} chart of {truth.title}, {truth.labels[0]} to {truth.labels[-1]}"
    counts = Counter(name(s) for s in sorted(truth.shapes, key=lambda s: s.cell))  # reading order
    shapes = [a(what) if k == 1 else f"{NUMBER_WORDS[k]} {plural(what)}" for what, k in counts.items()]
    listed = shapes[0] if len(shapes) == 1 else ", ".join(shapes[:-1]) + " and " + shapes[-1]
    return f"{listed} on {a(truth.background)} background"


def toy_mmspec() -> Path:
    """`data=toy:mmspec`: the set under $MMVSD_HOME/toyworld, written the first time (about a second)."""
    from mmvsd.checks import mmvsd_home
    from mmvsd.files import ordinary_modes

    folder = mmvsd_home() / "toyworld" / f"mmspec-v{MMSPEC_VERSION}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))  # a sibling: one file system
        try:
            write_mmspec(tmp)
            ordinary_modes(tmp)
            tmp.rename(folder)  # atomic: a reader finds the whole set or none
        except OSError:
            if not folder.is_dir():  # else another process's copy got there first, as good as this one
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # left only when the rename did not happen
    return folder / "mmspec.jsonl"
