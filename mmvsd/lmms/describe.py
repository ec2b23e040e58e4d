"""Functions the mmvsd_describe task (eval/tasks/mmvsd_describe.yaml) points lmms-eval at: long
descriptions of toy-world images, the setting speculative decoding is measured in, scored for
hallucination exactly against the image's ground truth.

CHAIR-style scores (after Rohrbach et al. 2018, "Object Hallucination in Image Captioning"), over
the facts a description states (`mmvsd.toyworld.facts`: objects with their size, colour, kind and
position; the shape count; the background; a chart's title and values):
- chair_i: stated facts that are not in the image / all stated facts, pooled over descriptions;
- chair_s: share of descriptions that state at least one fact not in the image;
- fact_recall: share of the image's facts a description states (mean over descriptions).
"""

from __future__ import annotations

from mmvsd.toyworld.data import truth_from_json
from mmvsd.toyworld.facts import stated_facts, truth_facts


def describe_doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def describe_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def describe_process_results(doc: dict, results: list[str]) -> dict:
    truth = truth_facts(truth_from_json(doc["truth"]))
    stated = stated_facts(results[0], chart=doc["kind"] == "chart")
    false = len(stated - truth)
    return {"chair_i": (false, len(stated)), "chair_s": float(false > 0),
            "fact_recall": len(stated & truth) / len(truth) if truth else 0.0}


def pooled_share(items: list[tuple[int, int]]) -> float:
    """sum of numerators / sum of denominators (0 when nothing was stated at all)."""
    stated = sum(n for _, n in items)
    return sum(f for f, _ in items) / stated if stated else 0.0
