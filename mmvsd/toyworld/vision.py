"""Pretraining the toy vision tower on the world's ground truth, as LLaVA starts from a trained CLIP.

A tiny CLIP vision tower trained only through a language model learns the wording and ignores
the image (measured: chance-level colours and counts). So the tower is first taught to see:
every patch predicts the attributes of what covers it (an object's colour, kind, size and grid
cell; a chart column's value, colour and label), and the mean of the patches predicts the global
facts (image type, object count, background, chart title) and the image's facts as a set: which
objects are present, the colour of each kind, the kind of each colour, where and how big each
object is, what is in each grid cell, each label's value, the highest and lowest label.

Why the set: a small language model trained from scratch on CPU learns to read facts that every
image token carries (measured: background 100%, counts 78-98% after 900 steps) long before it
learns content-based lookups of one object among the patches (colour, shape, position and POPE
questions stayed at chance after 900 steps with per-patch features only). Like CLIP features,
the pooled image then answers "is there a red circle?" directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionModel

from mmvsd.toyworld.charts import CHART_COLOURS, LABELS, TITLES, Chart
from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, SIZES, Scene, object_mask

IGNORE = -100
IMAGE_TYPES = ("scene", "bar", "line")
# name -> number of classes (class 0 = nothing there); per-patch heads, then global ones
PATCH_HEADS = {"colour": 1 + len(COLOURS), "kind": 1 + len(KINDS), "size": 1 + len(SIZES), "cell": 10,
               "value": 10, "bar_colour": 1 + len(CHART_COLOURS), "label": 1 + len(LABELS)}
GLOBAL_HEADS = {"image_type": len(IMAGE_TYPES), "count": 6, "background": len(BACKGROUNDS), "title": len(TITLES),
                "line_colour": len(CHART_COLOURS)}
OBJECTS = tuple((colour, kind) for colour in COLOURS for kind in KINDS)
# name -> (groups, classes per group): one classification per group, class 0 = absent
SET_HEADS = {"present": (len(OBJECTS), 2), "colour_of_kind": (len(KINDS), 1 + len(COLOURS)),
             "kind_of_colour": (len(COLOURS), 1 + len(KINDS)), "count_of_kind": (len(KINDS), 6),
             "cell_of_object": (len(OBJECTS), 10), "size_of_object": (len(OBJECTS), 1 + len(SIZES)),
             "colour_at_cell": (9, 1 + len(COLOURS)), "kind_at_cell": (9, 1 + len(KINDS)),
             "value_of_label": (len(LABELS), 10), "value_of_bar_colour": (len(CHART_COLOURS), 10),
             "highest": (1, 1 + len(LABELS)), "lowest": (1, 1 + len(LABELS))}


@dataclass
class Targets:
    patch: dict[str, np.ndarray]  # name -> [grid * grid] class ids (IGNORE where the head does not apply)
    global_: dict[str, int]
    set_: dict[str, np.ndarray]  # name -> [groups] class ids (IGNORE where ambiguous or not applicable)


def targets_for(truth: Scene | Chart, image_size: int, grid: int) -> Targets:
    cells = grid * grid
    patch = {name: np.full(cells, IGNORE, dtype=np.int64) for name in PATCH_HEADS}
    global_ = dict.fromkeys(GLOBAL_HEADS, IGNORE)
    set_ = _set_targets(truth)
    if isinstance(truth, Scene):
        owner = _patch_owner(truth, image_size, grid)  # [cells], 0 = background, i + 1 = shape i
        for name in ("colour", "kind", "size", "cell"):
            patch[name][owner == 0] = 0
        for i, shape in enumerate(truth.shapes):
            mine = owner == i + 1
            patch["colour"][mine] = 1 + list(COLOURS).index(shape.colour)
            patch["kind"][mine] = 1 + KINDS.index(shape.kind)
            patch["size"][mine] = 1 + list(SIZES).index(shape.size)
            patch["cell"][mine] = 1 + shape.cell
        global_.update(image_type=0, count=len(truth.shapes), background=list(BACKGROUNDS).index(truth.background))
    else:
        column = _patch_column(truth, grid)  # [cells], -1 = outside every column
        patch["value"][:] = patch["label"][:] = 0
        if truth.kind == "bar":
            patch["bar_colour"][:] = 0
        for i, (label, value, colour) in enumerate(zip(truth.labels, truth.values, truth.colours)):
            mine = column == i
            patch["value"][mine] = value
            patch["label"][mine] = 1 + LABELS.index(label)
            if truth.kind == "bar":
                patch["bar_colour"][mine] = 1 + CHART_COLOURS.index(colour)
        global_.update(image_type=IMAGE_TYPES.index(truth.kind), count=len(truth.labels), title=TITLES.index(truth.title))
        if truth.kind == "line":
            global_["line_colour"] = CHART_COLOURS.index(truth.colours[0])
    return Targets(patch, global_, set_)


def _set_targets(truth: Scene | Chart) -> dict[str, np.ndarray]:
    """Class ids per group; a group whose answer is ambiguous (two triangles: which colour?) is IGNORE."""
    out = {name: np.full(groups, IGNORE, dtype=np.int64) for name, (groups, _) in SET_HEADS.items()}

    def fill(name: str, keys: list, key_values: list[tuple]) -> None:
        """Group i is keys[i]: 0 when no item has it, 1 + the value when exactly one item does."""
        found: dict = {}
        for key, value in key_values:
            found.setdefault(key, []).append(value)
        for i, key in enumerate(keys):
            values = found.get(key, [])
            out[name][i] = 0 if not values else (1 + values[0] if len(values) == 1 else IGNORE)

    if isinstance(truth, Scene):
        shapes, colours = truth.shapes, list(COLOURS)
        out["present"][:] = [int(any((s.colour, s.kind) == o for s in shapes)) for o in OBJECTS]
        fill("colour_of_kind", list(KINDS), [(s.kind, colours.index(s.colour)) for s in shapes])
        fill("kind_of_colour", colours, [(s.colour, KINDS.index(s.kind)) for s in shapes])
        out["count_of_kind"][:] = [sum(s.kind == k for s in shapes) for k in KINDS]
        fill("cell_of_object", list(OBJECTS), [((s.colour, s.kind), s.cell) for s in shapes])
        fill("size_of_object", list(OBJECTS), [((s.colour, s.kind), list(SIZES).index(s.size)) for s in shapes])
        fill("colour_at_cell", list(range(9)), [(s.cell, colours.index(s.colour)) for s in shapes])
        fill("kind_at_cell", list(range(9)), [(s.cell, KINDS.index(s.kind)) for s in shapes])
    else:
        out["value_of_label"][:] = [truth.values[truth.labels.index(lb)] if lb in truth.labels else 0 for lb in LABELS]
        if truth.kind == "bar":
            fill("value_of_bar_colour", list(CHART_COLOURS), [(c, v - 1) for c, v in zip(truth.colours, truth.values)])
        for name, extreme in (("highest", max(truth.values)), ("lowest", min(truth.values))):
            if truth.values.count(extreme) == 1:
                out[name][0] = 1 + LABELS.index(truth.labels[truth.values.index(extreme)])
    return out


def _patch_owner(scene: Scene, image_size: int, grid: int) -> np.ndarray:
    """Per patch: the shape covering most of it if it covers over a third, 0 for background, and
    IGNORE for a patch that holds only a sliver of a shape (too little to tell what it is)."""
    mask = np.asarray(object_mask(scene, image_size))
    step = image_size // grid
    blocks = mask[: grid * step, : grid * step].reshape(grid, step, grid, step).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid * grid, step * step)
    shares = np.stack([(blocks == i + 1).mean(axis=1) for i in range(len(scene.shapes))])  # [shapes, cells]
    best = shares.max(axis=0)
    return np.where(best >= 0.35, shares.argmax(axis=0) + 1, np.where(best > 0.05, IGNORE, 0))


def _patch_column(chart: Chart, grid: int) -> np.ndarray:
    centres = (np.arange(grid) + 0.5) / grid
    column = np.full(grid, -1, dtype=np.int64)
    for i in range(len(chart.labels)):
        x0, x1 = chart.column(i)
        column[(centres >= x0) & (centres < x1)] = i
    return np.tile(column, grid)  # the same for every row


class TowerPretrainer(nn.Module):
    """A CLIP vision tower with linear heads on its last layer's patch tokens and their mean."""

    def __init__(self, tower: CLIPVisionModel):
        super().__init__()
        self.tower = tower
        hidden = tower.config.hidden_size
        self.patch_heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in PATCH_HEADS.items()})
        self.global_heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in GLOBAL_HEADS.items()})
        self.set_heads = nn.ModuleDict({name: nn.Linear(hidden, g * c) for name, (g, c) in SET_HEADS.items()})

    def forward(self, pixel_values: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Sum of per-head cross-entropies, and per-head accuracy on the positions that have labels."""
        patches = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # [B, P, H], CLS dropped
        pooled = patches.mean(1)
        loss, accuracy = 0.0, {}
        for heads, features in ((self.patch_heads, patches), (self.global_heads, pooled)):
            for name, head in heads.items():
                logits, labels = head(features), targets[name]
                valid = labels != IGNORE
                if valid.any():
                    loss = loss + nn.functional.cross_entropy(logits[valid], labels[valid])
                    accuracy[name] = (logits[valid].argmax(-1) == labels[valid]).float().mean().item()
        for name, head in self.set_heads.items():
            groups, classes = SET_HEADS[name]
            logits, labels = head(pooled).view(-1, groups, classes), targets[name]  # [B, G, C], [B, G]
            valid = labels != IGNORE
            if valid.any():
                loss = loss + nn.functional.cross_entropy(logits[valid], labels[valid])
                accuracy[name] = (logits[valid].argmax(-1) == labels[valid]).float().mean().item()
        return loss, accuracy


def collate_targets(all_targets: list[Targets]) -> dict[str, torch.Tensor]:
    batch = {name: torch.from_numpy(np.stack([t.patch[name] for t in all_targets])) for name in PATCH_HEADS}
    batch.update({name: torch.tensor([t.global_[name] for t in all_targets]) for name in GLOBAL_HEADS})
    batch.update({name: torch.from_numpy(np.stack([t.set_[name] for t in all_targets])) for name in SET_HEADS})
    return batch
