"""Toy-world samples: images with their ground truth, training conversations, and the saved
datasets (VQAv2, ChartQA, POPE and long descriptions) that lmms-eval and drafter training read.

Everything is a deterministic function of a seed. Each split draws from its own random stream,
and the target's training stream is separate again, so test images are unseen in training.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from mmvsd.toyworld.charts import Chart, draw_chart, random_chart
from mmvsd.toyworld.language import (DESCRIBE_PROMPTS, QA, SHORT_ANSWER, SINGLE_WORD, all_objects, chart_questions,
                                     describe_chart, describe_scene, list_chart, list_scene, pope_questions,
                                     presence_question, scene_questions)
from mmvsd.toyworld.scenes import Scene, draw_scene, random_scene

DATA_VERSION = 2
SPLIT_SIZES = {"train": 1500, "validation": 150, "test": 300}  # images per split and task
POPE_SETTINGS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Sample:
    truth: Scene | Chart
    image: Image.Image

    @property
    def is_chart(self) -> bool:
        return isinstance(self.truth, Chart)


def random_sample(rng: random.Random, image_size: int, chart_share: float = 0.45, max_objects: int = 4) -> Sample:
    if rng.random() < chart_share:
        chart = random_chart(rng)
        return Sample(chart, draw_chart(chart, image_size))
    scene = random_scene(rng, max_objects=max_objects)
    return Sample(scene, draw_scene(scene, image_size))


def truth_json(truth: Scene | Chart) -> str:
    return json.dumps({"type": "chart" if isinstance(truth, Chart) else "scene", **asdict(truth)})


def truth_from_json(text: str) -> Scene | Chart:
    from mmvsd.toyworld.scenes import Shape

    data = json.loads(text)
    if data.pop("type") == "chart":
        return Chart(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    return Scene(tuple(Shape(**s) for s in data["shapes"]), data["background"])


def questions(sample: Sample, rng: random.Random) -> list[QA]:
    """Every short question this image answers, POPE-style probes included for scenes."""
    if sample.is_chart:
        return chart_questions(sample.truth, rng)
    setting = rng.choice(("random", "adversarial"))
    return (scene_questions(sample.truth, rng) + pope_questions(sample.truth, rng, setting, all_objects(), n=1)
            + [presence_question(sample.truth, rng)])


def description(sample: Sample, rng: random.Random) -> str:
    return describe_chart(sample.truth, rng) if sample.is_chart else describe_scene(sample.truth, rng)


def training_conversation(sample: Sample, rng: random.Random, describe_share: float,
                          max_questions: int = 5, suffix_share: float = 0.5,
                          list_share: float = 0.0) -> list[tuple[str, str]]:
    """Turns about one image: up to `max_questions` short questions, and with probability
    `describe_share` a description first. Short questions carry lmms-eval's answer-format suffix
    with probability `suffix_share`. With probability `list_share` a listing of the image's facts
    ends the conversation (`list_scene`: each fact right after its key, a one-step look-up that
    teaches the two-step one of the questions; last, so the questions cannot copy from it). Many
    questions per image are cheap supervision: the image tokens, most of the sequence, are paid
    for once."""
    turns = []
    if rng.random() < describe_share:
        turns.append((rng.choice(DESCRIBE_PROMPTS), description(sample, rng)))
    pool = list({qa.question: qa for qa in questions(sample, rng) + questions(sample, rng)}.values())
    for qa in rng.sample(pool, min(len(pool), rng.randint(0 if turns else max(1, max_questions // 2), max_questions))):
        suffix = (SINGLE_WORD if sample.is_chart else SHORT_ANSWER) if rng.random() < suffix_share else ""
        turns.append((qa.question + suffix, qa.answer))
    if list_share and rng.random() < list_share:
        qa = list_chart(sample.truth, rng) if sample.is_chart else list_scene(sample.truth, rng)
        turns.append((qa.question, qa.answer))
    return turns


# ------------------------------------------------------------------ saved datasets

def build_datasets(folder: Path, seed: int, image_size: int, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, Path]:
    """Write DatasetDicts vqav2, chartqa, pope and descriptions under `folder` (lmms-eval reads them
    with load_from_disk); return their paths."""
    from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, Value

    rows = {task: {} for task in ("vqav2", "chartqa", "pope", "descriptions")}
    for split_index, (split, n) in enumerate(sizes.items()):
        rng = random.Random(f"toyworld-v{DATA_VERSION}-{seed}-{split}")
        for task, records in _split_records(rng, n, image_size, split_index).items():
            rows[task][split] = records
    answer = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    features = {
        "vqav2": Features({"question_id": Value("int64"), "question": Value("string"),
                           "question_type": Value("string"), "answers": [answer],
                           "multiple_choice_answer": Value("string"), "answer_type": Value("string"),
                           "image_id": Value("int64"), "family": Value("string"), "image": ImageFeature()}),
        "chartqa": Features({"question": Value("string"), "answer": Value("string"), "type": Value("string"),
                             "family": Value("string"), "image": ImageFeature()}),
        "pope": Features({"id": Value("string"), "question_id": Value("string"), "question": Value("string"),
                          "answer": Value("string"), "image_source": Value("string"), "category": Value("string"),
                          "image": ImageFeature()}),
        "descriptions": Features({"id": Value("string"), "prompt": Value("string"), "description": Value("string"),
                                  "kind": Value("string"), "truth": Value("string"), "image": ImageFeature()}),
    }
    paths = {}
    for task, splits in rows.items():
        dataset = DatasetDict({split: Dataset.from_list(records, features=features[task])
                               for split, records in splits.items()})
        paths[task] = folder / task
        dataset.save_to_disk(str(paths[task]))
    return paths


def _split_records(rng: random.Random, n: int, image_size: int, split_index: int) -> dict[str, list[dict]]:
    vqa, chart, pope, desc = [], [], [], []
    base = 1_000_000 * (split_index + 1)
    scenes = []
    for i in range(n):  # VQAv2: scene questions, two per image
        scene = random_scene(rng)
        sample = Sample(scene, draw_scene(scene, image_size))
        scenes.append(sample)
        for j, qa in enumerate(rng.sample(scene_questions(scene, rng), 2)):
            kind = "number" if qa.answer.isdigit() else "other"
            vqa.append({"question_id": base + 10 * i + j, "question": qa.question,
                        "question_type": " ".join(qa.question.lower().split()[:3]),
                        "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": k + 1}
                                    for k in range(10)],
                        "multiple_choice_answer": qa.answer, "answer_type": kind, "image_id": base + i,
                        "family": qa.family, "image": sample.image})
    for i in range(n):  # ChartQA: two questions per chart
        chart_truth = random_chart(rng)
        image = draw_chart(chart_truth, image_size)
        for qa in rng.sample(chart_questions(chart_truth, rng), 2):
            chart.append({"question": qa.question, "answer": qa.answer,
                          "type": "human_test" if qa.family == "chart_value" else "augmented_test",
                          "family": qa.family, "image": image})
    popularity = [o for o, _ in Counter(f"{s.colour} {s.kind}" for x in scenes for s in x.truth.shapes).most_common()]
    popularity += [o for o in all_objects() if o not in popularity]
    for i, sample in enumerate(scenes[: max(1, n // 3)]):  # POPE: each image probed in all three settings
        for setting in POPE_SETTINGS:
            for j, qa in enumerate(pope_questions(sample.truth, rng, setting, popularity)):
                qid = f"{base + i}-{setting}-{j}"
                pope.append({"id": qid, "question_id": qid, "question": qa.question, "answer": qa.answer,
                             "image_source": f"toy-{base + i}", "category": setting, "image": sample.image})
    for i in range(n):  # long descriptions of fresh images, scenes and charts
        sample = random_sample(rng, image_size)
        desc.append({"id": f"desc-{base + i}", "prompt": rng.choice(DESCRIBE_PROMPTS),
                     "description": description(sample, rng), "kind": "chart" if sample.is_chart else "scene",
                     "truth": truth_json(sample.truth), "image": sample.image})
    return {"vqav2": vqa, "chartqa": chart, "pope": pope, "descriptions": desc}


def export_test_parquet(folder: Path, out: Path) -> Path:
    """The test split of every dataset saved under `folder` as OUT/TASK_test.parquet: what the
    lmms-eval tasks in eval/tasks read (parquet keeps the image feature)."""
    from datasets import load_from_disk

    out.mkdir(parents=True, exist_ok=True)
    for task in ("vqav2", "chartqa", "pope", "descriptions"):
        load_from_disk(str(folder / task))["test"].to_parquet(str(out / f"{task}_test.parquet"))
    return out
