"""Procedural bar and line charts drawn with Pillow, with their ground truth.

A chart has a title, 3-5 categories (consecutive weekdays or months, in order) and an integer
value from 1 to 9 for each, on a y-axis with a gridline at every integer so values can be read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from mmvsd.toyworld.scenes import COLOURS

TITLES = ("Sales", "Rainfall", "Visitors", "Scores", "Orders", "Downloads", "Sunshine", "Tickets")
SEQUENCES = (("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
             ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))
LABELS = tuple(label for seq in SEQUENCES for label in seq)
CHART_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
MAX_VALUE = 9
# Plot area in units of the image side.
LEFT, RIGHT, TOP, BOTTOM = 0.12, 0.97, 0.16, 0.84


@dataclass(frozen=True)
class Chart:
    kind: str  # "bar" or "line"
    title: str
    labels: tuple[str, ...]
    values: tuple[int, ...]
    colours: tuple[str, ...]  # one per bar; a line chart uses colours[0] for the whole line

    def column(self, i: int) -> tuple[float, float]:
        """Horizontal extent (0..1) of category i's column."""
        width = (RIGHT - LEFT) / len(self.labels)
        return LEFT + i * width, LEFT + (i + 1) * width


def random_chart(rng: random.Random) -> Chart:
    n = rng.randint(3, 5)
    sequence = rng.choice(SEQUENCES)
    start = rng.randrange(len(sequence) - n + 1)
    kind = rng.choice(("bar", "line"))
    colours = tuple(rng.sample(CHART_COLOURS, n)) if kind == "bar" else (rng.choice(CHART_COLOURS),) * n
    return Chart(kind=kind, title=rng.choice(TITLES), labels=sequence[start:start + n],
                 values=tuple(rng.randint(1, MAX_VALUE) for _ in range(n)), colours=colours)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def value_y(value: float, side: int) -> float:
    """Pixel row of a value on the y-axis."""
    return (BOTTOM - (BOTTOM - TOP) * value / MAX_VALUE) * side


def draw_chart(chart: Chart, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    small, title_font = _font(max(7, size * 9 // 128)), _font(max(8, size * 11 // 128))
    left, right, bottom = LEFT * size, RIGHT * size, BOTTOM * size
    for v in range(MAX_VALUE + 1):
        y = value_y(v, size)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225) if v else (0, 0, 0))
        if v % 3 == 0:
            draw.text((left - 2, y), str(v), fill=(60, 60, 60), font=small, anchor="rm")
    draw.line([(left, TOP * size), (left, bottom)], fill=(0, 0, 0))
    draw.text((size / 2, TOP * size / 2), chart.title, fill=(0, 0, 0), font=title_font, anchor="mm")
    points = []
    for i, (label, value, colour) in enumerate(zip(chart.labels, chart.values, chart.colours)):
        x0, x1 = (x * size for x in chart.column(i))
        centre = (x0 + x1) / 2
        draw.text((centre, bottom + 2), label, fill=(0, 0, 0), font=small, anchor="mt")
        if chart.kind == "bar":
            pad = (x1 - x0) * 0.18
            draw.rectangle([x0 + pad, value_y(value, size), x1 - pad, bottom - 1], fill=COLOURS[colour],
                           outline=(0, 0, 0))
        else:
            points.append((centre, value_y(value, size)))
    if points:
        fill = COLOURS[chart.colours[0]]
        draw.line(points, fill=fill, width=max(2, size // 64))
        r = max(2, size // 50)
        for x, y in points:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(0, 0, 0))
    return image
