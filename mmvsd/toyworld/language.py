"""Questions, short answers and long descriptions of toy-world images.

Questions come in families (count, colour, shape, ... for scenes; value, highest, ... for
charts) and in the schemas of VQAv2, ChartQA and POPE. Descriptions mix predictable phrasing,
chosen at random among variants, with the words only the image can tell: colours, counts,
positions, sizes, titles, labels and values.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from mmvsd.toyworld.charts import Chart
from mmvsd.toyworld.scenes import COLOURS, KINDS, Scene, Shape

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5 / lmms-eval VQAv2, POPE
SINGLE_WORD = "\nAnswer the question with a single word."  # lmms-eval ChartQA
DESCRIBE_PROMPTS = ("Describe the image in detail.", "Describe this image.", "What is in this picture? Describe it.",
                    "Give a detailed description of the image.")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")
WHERE = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
         "left": "on the left", "centre": "in the centre", "right": "on the right",
         "bottom left": "in the bottom left corner", "bottom": "at the bottom",
         "bottom right": "in the bottom right corner"}


@dataclass(frozen=True)
class QA:
    family: str
    question: str
    answer: str


def plural(kind: str) -> str:
    return kind + "s"


def name(shape: Shape) -> str:
    return f"{shape.colour} {shape.kind}"


def a(phrase: str) -> str:
    """The phrase with its indefinite article: "a red circle", "an orange star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# ------------------------------------------------------------------ scenes

def scene_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One question per family that this scene answers unambiguously."""
    shapes = scene.shapes
    kinds = Counter(s.kind for s in shapes)
    colours = Counter(s.colour for s in shapes)
    qas = [QA("count", rng.choice(["How many shapes are there?", "How many objects are in the image?",
                                   "How many shapes are in the picture?", "How many objects are there?",
                                   "How many shapes are there in the image?", "How many shapes can you see?"]),
              str(len(shapes)))]
    kind = rng.choice(KINDS)
    qas.append(QA("count_kind", rng.choice([f"How many {plural(kind)} are there?", f"How many {plural(kind)} are in "
                                            "the image?", f"How many {plural(kind)} can you see?"]), str(kinds[kind])))
    qas.append(QA("background", rng.choice([f"What {colour_word(rng)} is the background?",
                                            f"What is the background {colour_word(rng)}?"]), scene.background))
    shape = rng.choice(shapes)
    if kinds[shape.kind] == 1:
        qas.append(QA("colour", rng.choice([f"What {colour_word(rng)} is the {shape.kind}?",
                                            f"What is the {colour_word(rng)} of the {shape.kind}?",
                                            f"Which {colour_word(rng)} is the {shape.kind}?"]), shape.colour))
    else:
        qas.append(QA("colour", f"What {colour_word(rng)} is the shape {WHERE[shape.position]}?", shape.colour))
    shape = rng.choice(shapes)
    if colours[shape.colour] == 1:
        qas.append(QA("shape", rng.choice([f"What shape is the {shape.colour} object?",
                                           f"Which shape is {shape.colour}?"]), shape.kind))
    else:
        qas.append(QA("shape", f"What shape is {WHERE[shape.position]}?", shape.kind))
    shape = rng.choice(shapes)
    qas.append(QA("position", rng.choice([f"Where is the {name(shape)}?", f"Where is the {name(shape)} located?"]),
                  shape.position))
    shape = rng.choice(shapes)
    qas.append(QA("size", f"Is the {name(shape)} small or large?", shape.size))
    return qas


def all_objects() -> list[str]:
    return [f"{colour} {kind}" for colour in COLOURS for kind in KINDS]


def pope_questions(scene: Scene, rng: random.Random, setting: str, popularity: list[str], n: int = 3) -> list[QA]:
    """POPE-style probes (Li et al. 2023, arXiv 2305.10355): n present objects ("yes") and n
    absent ones ("no"), the absent ones sampled per `setting`:

    random: any absent object; popular: the absent objects most frequent in the split
    (`popularity`, most frequent first); adversarial: absent objects that share a colour or a
    kind with a present one, the toy world's analogue of POPE's co-occurring objects.
    """
    present = sorted({name(s) for s in scene.shapes})
    absent = [o for o in all_objects() if o not in present]
    if setting == "random":
        negatives = rng.sample(absent, n)
    elif setting == "popular":
        negatives = [o for o in popularity if o in absent][:n]
    elif setting == "adversarial":
        similar = [o for o in absent if any(o.split()[0] == p.split()[0] or o.split()[1] == p.split()[1]
                                            for p in present)]
        negatives = rng.sample(similar, min(n, len(similar)))
    else:
        raise ValueError(f"unknown POPE setting {setting!r}")
    n = min(n, len(present), len(negatives))  # balanced: as many "no" as "yes"
    positives = rng.sample(present, n)
    return [QA(f"pope_{setting}", f"Is there {a(o)} in the image?", answer)
            for objects, answer in ((positives, "yes"), (negatives[:n], "no")) for o in objects]


def presence_question(scene: Scene, rng: random.Random) -> QA:
    """A yes/no question about one object, present or not (even odds), in varied wording."""
    present = sorted({name(s) for s in scene.shapes})
    if rng.random() < 0.5:
        obj, answer = rng.choice(present), "yes"
    else:
        obj, answer = rng.choice([o for o in all_objects() if o not in present]), "no"
    wording = rng.choice(["Is there {} in the image?", "Is there {}?", "Is there {} in the picture?",
                          "Do you see {} in the image?", "Does the image contain {}?", "Can you see {}?"])
    return QA("presence", wording.format(a(obj)), answer)


def colour_word(rng: random.Random) -> str:
    """Both spellings: people ask "what colour" and "what color"."""
    return rng.choice(("colour", "color"))


def describe_scene(scene: Scene, rng: random.Random) -> str:
    shapes = sorted(scene.shapes, key=lambda s: s.cell)  # reading order
    n, bg = len(shapes), scene.background
    noun = "shape" if n == 1 else "shapes"
    sentences = [rng.choice([
        f"The image shows {NUMBER_WORDS[n]} {noun} on {a(bg)} background.",
        f"This picture contains {NUMBER_WORDS[n]} {noun} against {a(bg)} background.",
        f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun} on {a(bg)} background in this image.",
    ])]
    for shape in shapes:
        where, what = WHERE[shape.position], a(f"{shape.size} {shape.colour} {shape.kind}")
        sentences.append(rng.choice([f"{where[0].upper()}{where[1:]} there is {what}.", f"{what.capitalize()} is {where}.",
                                     f"{where[0].upper()}{where[1:]} we can see {what}."]))
    large = sum(s.size == "large" for s in shapes)
    if n == 1:
        sentences.append(f"It is {shapes[0].size}.")
    elif large in (0, n):
        sentences.append(rng.choice([f"All of them are {'large' if large else 'small'}.",
                                     f"Every shape is {'large' if large else 'small'}."]))
    else:
        sentences.append(f"{NUMBER_WORDS[large].capitalize()} of them {'is' if large == 1 else 'are'} large and "
                         f"{NUMBER_WORDS[n - large]} {'is' if n - large == 1 else 'are'} small.")
    missing = [plural(k) for k in KINDS if all(s.kind != k for s in shapes)]
    if missing:
        listed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " or " + missing[-1]
        sentences.append(rng.choice([f"There are no {listed} in the picture.", f"No {listed} appear in the image."]))
    return " ".join(sentences)


def list_scene(scene: Scene, rng: random.Random) -> QA:
    """Each shape's kind followed by its facts, or each colour followed by its kind, in reading
    order. Every fact comes right after the word it is looked up by: one step from the image to
    the answer, where a question ("What colour is the star?") needs two."""
    shapes = sorted(scene.shapes, key=lambda s: s.cell)
    if rng.random() < 0.5:
        return QA("list", "List each shape with its colour, size and position.",
                  "; ".join(f"{s.kind}: {s.colour}, {s.size}, {s.position}" for s in shapes))
    return QA("list", "List each colour with its shape.", "; ".join(f"{s.colour}: {s.kind}" for s in shapes))


# ------------------------------------------------------------------ charts

def chart_questions(chart: Chart, rng: random.Random) -> list[QA]:
    """ChartQA-style questions: values, extremes, counts, title, differences."""
    n = len(chart.labels)
    i = rng.randrange(n)
    label, value = chart.labels[i], chart.values[i]
    part = "bar" if chart.kind == "bar" else "point"
    qas = []
    if chart.kind == "bar" and rng.random() < 0.3:
        qas.append(QA("chart_value", f"What is the value of the {chart.colours[i]} bar?", str(value)))
    else:
        qas.append(QA("chart_value", rng.choice([f"What is the value for {label}?", f"What is the value of {label}?",
                                                 f"What value does {label} have?"]), str(value)))
    high, low = max(chart.values), min(chart.values)
    if chart.values.count(high) == 1:
        qas.append(QA("chart_highest", rng.choice(["Which category has the highest value?",
                                                   f"Which label has the highest {part}?"]),
                      chart.labels[chart.values.index(high)]))
    if chart.values.count(low) == 1:
        qas.append(QA("chart_lowest", "Which category has the lowest value?", chart.labels[chart.values.index(low)]))
    qas.append(QA("chart_count", f"How many {part}s are there?", str(n)))
    qas.append(QA("chart_title", "What is the title of the chart?", chart.title))
    j = rng.choice([k for k in range(n) if k != i])
    qas.append(QA("chart_difference", f"What is the difference between {label} and {chart.labels[j]}?",
                  str(abs(value - chart.values[j]))))
    return qas


def list_chart(chart: Chart, rng: random.Random) -> QA:
    """Each label followed by its value (see `list_scene`)."""
    return QA("list", "List each label with its value.",
              "; ".join(f"{label}: {value}" for label, value in zip(chart.labels, chart.values)))


def describe_chart(chart: Chart, rng: random.Random) -> str:
    kind, title, n = chart.kind, chart.title, len(chart.labels)
    sentences = [rng.choice([f"This is a {kind} chart titled {title}.",
                             f"The image shows a {kind} chart with the title {title}.",
                             f"A {kind} chart titled {title} is shown."]),
                 rng.choice([f"It shows {NUMBER_WORDS[n]} values, from {chart.labels[0]} to {chart.labels[-1]}.",
                             f"It covers {chart.labels[0]} to {chart.labels[-1]}."])]
    if kind == "line":
        sentences.append(f"The line is {chart.colours[0]}.")
    for label, value, colour in zip(chart.labels, chart.values, chart.colours):
        options = [f"{label} has a value of {value}.", f"The value for {label} is {value}."]
        options.append(f"The {colour} bar for {label} reaches {value}." if kind == "bar"
                       else f"At {label} the line is at {value}.")
        sentences.append(rng.choice(options))
    high, low = max(chart.values), min(chart.values)
    sentences.append(f"The highest value is {high} for {chart.labels[chart.values.index(high)]}, and the lowest is "
                     f"{low} for {chart.labels[chart.values.index(low)]}.")
    return " ".join(sentences)
