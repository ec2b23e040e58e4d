"""The report of a toy target: held-out accuracy per question family against blind baselines,
description facts with the right image and with a wrong one, and the per-token decode time."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path

from mmvsd.config import DecodeConfig
from mmvsd.decoding import autoregressive_generate, collect_tokens
from mmvsd.toyworld.data import truth_from_json
from mmvsd.toyworld.facts import fact_scores, stated_facts, truth_facts
from mmvsd.toyworld.language import SHORT_ANSWER, SINGLE_WORD

SCENE_FAMILIES = ("count", "count_kind", "colour", "shape", "position", "size", "background")
POPE_FAMILIES = ("pope_random", "pope_popular", "pope_adversarial")


def normalize(answer: str) -> str:
    return " ".join(answer.lower().strip().rstrip(".").split())


def generate(target, image, prompt: str, max_new_tokens: int) -> tuple[str, list]:
    steps = list(autoregressive_generate(target, target.encode(image, prompt, max_new_tokens),
                                         DecodeConfig(max_new_tokens=max_new_tokens)))
    return target.decode(collect_tokens(steps)).strip(), steps


def question_items(data: Path, split: str) -> dict[str, list[dict]]:
    """family -> [{image, prompt, answer}] from the saved VQAv2, ChartQA and POPE datasets."""
    from datasets import load_from_disk

    items = defaultdict(list)
    for row in load_from_disk(str(data / "vqav2"))[split]:
        items[row["family"]].append({"image": row["image"], "prompt": row["question"] + SHORT_ANSWER,
                                     "answer": row["multiple_choice_answer"]})
    for row in load_from_disk(str(data / "chartqa"))[split]:
        items[row["family"]].append({"image": row["image"], "prompt": row["question"] + SINGLE_WORD,
                                     "answer": row["answer"]})
    for row in load_from_disk(str(data / "pope"))[split]:
        items[f"pope_{row['category']}"].append({"image": row["image"], "prompt": row["question"] + SHORT_ANSWER,
                                                 "answer": row["answer"]})
    return items


def evaluate_target(target, data: Path, per_family: int, n_descriptions: int) -> dict:
    """Held-out accuracy per family with the right image, another image and a blank one (the
    blind controls: without the image, answers must fall to chance), POPE F1 and yes-ratio, and
    descriptions scored fact by fact (F1, CHAIR_i) against the ground truth."""
    from datasets import load_from_disk
    from tqdm import tqdm

    test, train = question_items(data, "test"), question_items(data, "train")
    todo = [(family, items[:per_family]) for family, items in sorted(test.items())]
    bar = tqdm(total=sum(len(items) for _, items in todo), desc="evaluating", unit="question", dynamic_ncols=True)
    families = {family: family_scores(target, family, items, train[family], bar) for family, items in todo}
    bar.close()
    rows = load_from_disk(str(data / "descriptions"))["test"].select(range(n_descriptions))
    facts, blind, chair_i, samples = description_scores(target, rows)
    mean = statistics.mean
    return {
        "families": families,
        "summary": {
            "shapes": mean(families[f]["accuracy"] for f in SCENE_FAMILIES if f in families),
            "pope": mean(families[f]["accuracy"] for f in POPE_FAMILIES if f in families),
            "chart_values": families.get("chart_value", {}).get("accuracy"),
            "charts": mean(v["accuracy"] for f, v in families.items() if f.startswith("chart_")),
            "shapes_shuffled_image": mean(families[f]["shuffled_image_accuracy"] for f in SCENE_FAMILIES
                                          if f in families),
            "shapes_blank_image": mean(families[f]["blank_image_accuracy"] for f in SCENE_FAMILIES if f in families),
            "description_fact_f1": mean(facts),
            "description_fact_f1_wrong_image": mean(blind),
            "chair_i": chair_i,
        },
        "descriptions": samples,
        "description_words": description_word_accuracy(target, rows),
        "decode_ms_per_token": decode_ms_per_token(target, rows[0]["image"], rows[0]["prompt"]),
    }


def family_scores(target, family: str, items: list[dict], train_items: list[dict], bar) -> dict:
    """One question family: accuracy with the right image, another image and a blank one, the
    majority answer's accuracy, and for POPE families F1 and yes-ratio."""
    from PIL import Image

    right = shuffled = blank = yes = true_yes = 0
    for i, item in enumerate(items):
        answer = normalize(generate(target, item["image"], item["prompt"], 8)[0])
        right += answer == normalize(item["answer"])
        yes += answer == "yes"
        true_yes += answer == "yes" == normalize(item["answer"])
        other = items[(i + 1) % len(items)]["image"]  # the same question about another image
        shuffled += normalize(generate(target, other, item["prompt"], 8)[0]) == normalize(item["answer"])
        empty = Image.new("RGB", item["image"].size, (150, 150, 150))
        blank += normalize(generate(target, empty, item["prompt"], 8)[0]) == normalize(item["answer"])
        bar.update()
    majority = Counter(normalize(x["answer"]) for x in train_items).most_common(1)[0][0]
    n = len(items)
    scores = {"n": n, "accuracy": right / n, "shuffled_image_accuracy": shuffled / n, "blank_image_accuracy": blank / n,
              "majority_answer_accuracy": sum(normalize(x["answer"]) == majority for x in items) / n}
    if family.startswith("pope_"):
        positives = sum(normalize(x["answer"]) == "yes" for x in items)
        precision, recall = true_yes / max(yes, 1), true_yes / max(positives, 1)
        scores.update(f1=2 * precision * recall / max(precision + recall, 1e-9), yes_ratio=yes / n)
    return scores


def description_scores(target, rows) -> tuple[list[float], list[float], float, list[dict]]:
    """Descriptions scored fact by fact: F1 per description with the right image and with
    another one, CHAIR_i (stated facts not in the image / stated facts), and three samples."""
    from tqdm import tqdm

    facts, blind, samples, false, stated_total = [], [], [], 0, 0
    for i, row in enumerate(tqdm(rows, desc="describing", unit="image", dynamic_ncols=True)):
        truth, chart = truth_facts(truth_from_json(row["truth"])), row["kind"] == "chart"
        text, _ = generate(target, row["image"], row["prompt"], 200)
        stated = stated_facts(text, chart)
        facts.append(fact_scores(stated, truth)["f1"])
        false, stated_total = false + len(stated - truth), stated_total + len(stated)
        other = rows[(i + 1) % len(rows)]["image"]
        blind.append(fact_scores(stated_facts(generate(target, other, row["prompt"], 200)[0], chart), truth)["f1"])
        if len(samples) < 3 and (not samples or samples[-1]["kind"] != row["kind"]):
            samples.append({"kind": row["kind"], "prompt": row["prompt"], "reference": row["description"],
                            "generated": text})
    return facts, blind, false / stated_total if stated_total else 0.0, samples


def image_words() -> frozenset[str]:
    """The words of a description that only the image can tell."""
    from mmvsd.toyworld.charts import CHART_COLOURS, LABELS, TITLES
    from mmvsd.toyworld.language import NUMBER_WORDS, WHERE
    from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, SIZES

    words = {*COLOURS, *CHART_COLOURS, *SIZES, *LABELS, *TITLES, *NUMBER_WORDS, "bar", "line"}
    words |= {w for phrase in [*BACKGROUNDS, *WHERE] for w in phrase.split()}
    words |= {k for kind in KINDS for k in (kind, kind + "s")} | {str(n) for n in range(10)}
    return frozenset(w.lower() for w in words)


def description_word_accuracy(target, rows) -> dict[str, float]:
    """Teacher-forced next-token accuracy over reference descriptions, split into image words
    (colours, counts, values, labels, ...: see `image_words`) and the rest, with the right image
    and with another image. What a drafter faces: an image-blind guess gets the template right
    and the image words wrong."""
    import torch

    words = image_words()
    hits = {(kind, image): [0, 0] for kind in ("image_words", "other_words") for image in ("right", "wrong")}
    for i, row in enumerate(rows):
        reference = target.tokenizer(" " + row["description"], add_special_tokens=False)["input_ids"]
        for image, picture in (("right", row["image"]), ("wrong", rows[(i + 1) % len(rows)]["image"])):
            prompt = target.encode(picture, row["prompt"], len(reference))
            first = target.prefill(prompt).logits.argmax().item()
            rest, _ = target.forward(torch.tensor(reference[:-1], device=target.device),
                                     torch.arange(len(reference) - 1, device=target.device))
            predicted = [first, *rest.argmax(-1).tolist()]
            for gold, guess in zip(reference, predicted):
                kind = "image_words" if target.tokenizer.decode([gold]).strip().lower() in words else "other_words"
                hits[kind, image][0] += gold == guess
                hits[kind, image][1] += 1
    return {f"{kind}_{image}_image": round(right / max(total, 1), 4) for (kind, image), (right, total) in hits.items()}


def decode_ms_per_token(target, image, prompt: str, steps: int = 40) -> float:
    """Median time of one target decode step (batch 1, KV cache, after the prompt), EOS or not."""
    import time

    import torch

    encoded = target.encode(image, prompt, steps)
    target.prefill(encoded)
    token, depth0, times = encoded.input_ids[-1:], torch.zeros(1, dtype=torch.long), []  # any token will do
    for _ in range(steps):
        start = time.perf_counter()
        target.forward(token, depth0)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[5:])
