"""Facts stated by a description, read back with patterns of the toy world's own wording, and
compared exactly with the image's ground truth.

A fact is a tuple: ("count", 3), ("background", "grey"), ("object", "large", "red", "circle",
"top left") for scenes; ("title", "Sales"), ("value", "Tue", 7) for charts. Image-dependent words
are exactly what these facts are made of, so their precision and recall say how well a
description looks at the image.
"""

from __future__ import annotations

import re

from mmvsd.toyworld.charts import LABELS, Chart
from mmvsd.toyworld.language import NUMBER_WORDS, WHERE
from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, SIZES, Scene

_OBJECT = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(KINDS)})\b")
_COUNT = re.compile(rf"\b({'|'.join(NUMBER_WORDS[1:])}) shapes?\b")
_BACKGROUND = re.compile(rf"\b({'|'.join(BACKGROUNDS)}) background\b")
_WHERE = {phrase: position for position, phrase in WHERE.items()}
_LABEL = re.compile(rf"\b({'|'.join(LABELS)})\b")
_NUMBER = re.compile(r"\b(\d+)\b")
_TITLE = re.compile(r"titled (\w+)|the title (\w+)")


def truth_facts(truth: Scene | Chart) -> set[tuple]:
    if isinstance(truth, Chart):
        return {("title", truth.title)} | {("value", label, value) for label, value in zip(truth.labels, truth.values)}
    facts = {("count", len(truth.shapes)), ("background", truth.background)}
    return facts | {("object", s.size, s.colour, s.kind, s.position) for s in truth.shapes}


def stated_facts(text: str, chart: bool) -> set[tuple]:
    """The facts a description states, in the same form as `truth_facts`."""
    facts = set()
    sentences = [s for s in re.split(r"(?<=\.)\s+", text) if s]
    if chart:
        for match in _TITLE.finditer(text):
            facts.add(("title", match.group(1) or match.group(2)))
        for sentence in sentences:
            labels, numbers = _LABEL.findall(sentence), _NUMBER.findall(sentence)
            if len(labels) == 1 and len(numbers) == 1 and "highest" not in sentence:
                facts.add(("value", labels[0], int(numbers[0])))
        return facts
    for match in _COUNT.finditer(sentences[0] if sentences else ""):
        facts.add(("count", NUMBER_WORDS.index(match.group(1))))
    for match in _BACKGROUND.finditer(text):
        facts.add(("background", match.group(1)))
    for sentence in sentences:
        where = next((pos for phrase, pos in _WHERE.items() if phrase in sentence.lower()), None)
        for match in _OBJECT.finditer(sentence):
            facts.add(("object", *match.groups(), where))
    return facts


def fact_scores(stated: set[tuple], truth: set[tuple]) -> dict[str, float]:
    """Precision (stated facts that are true), recall (true facts stated) and F1."""
    hits = len(stated & truth)
    precision = hits / len(stated) if stated else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
