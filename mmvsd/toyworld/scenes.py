"""Procedural shape scenes drawn with Pillow, with their ground truth.

A scene is a few shapes (kind, colour, size, position) on a plain background. Everything is a
deterministic function of the random generator passed in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
    "purple": (140, 60, 180), "orange": (245, 135, 20), "black": (25, 25, 25), "white": (250, 250, 250),
}
KINDS = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.1, "large": 0.15}  # radius as a share of the image side
BACKGROUNDS = {"grey": (150, 150, 150), "beige": (225, 215, 190), "light blue": (190, 215, 235)}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    x: float  # centre, 0..1 from the left
    y: float  # centre, 0..1 from the top

    @property
    def cell(self) -> int:
        """Which cell of the 3x3 grid holds the centre: 0 = top left ... 8 = bottom right."""
        return min(2, int(self.y * 3)) * 3 + min(2, int(self.x * 3))

    @property
    def position(self) -> str:
        """Where the shape is, as a short answer: "top left", "top", ..., "centre", ..."""
        return POSITIONS[self.cell]


POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str


def random_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """Shapes that do not overlap, each in a distinct cell of the 3x3 grid."""
    count = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(9), count)
    shapes = []
    for cell in cells:
        size = rng.choice(list(SIZES))
        margin = SIZES[size] + 0.02
        # jitter small enough that neighbours never touch: 2 * (0.15 + 0.01) < 1/3
        cx = (cell % 3 + 0.5) / 3 + rng.uniform(-0.01, 0.01)
        cy = (cell // 3 + 0.5) / 3 + rng.uniform(-0.01, 0.01)
        shapes.append(Shape(kind=rng.choice(KINDS), colour=rng.choice(list(COLOURS)), size=size,
                            x=min(max(cx, margin), 1 - margin), y=min(max(cy, margin), 1 - margin)))
    background = rng.choice(list(BACKGROUNDS))
    return Scene(tuple(shapes), background)


def draw_scene(scene: Scene, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        outline = (0, 0, 0) if shape.colour != "black" else (90, 90, 90)
        draw_shape(draw, shape, size, COLOURS[shape.colour], outline)
    return image


def object_mask(scene: Scene, size: int) -> Image.Image:
    """Mode "L" image: pixel value i + 1 where shape i is drawn, 0 on the background."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for i, shape in enumerate(scene.shapes):
        draw_shape(draw, shape, size, i + 1, i + 1)
    return mask


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, side: int, fill, outline) -> None:
    cx, cy, r = shape.x * side, shape.y * side, SIZES[shape.size] * side
    if shape.kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline)
    elif shape.kind == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill, outline=outline)
    elif shape.kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)], fill=fill, outline=outline)
    else:  # a five-pointed star
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill, outline=outline)
