"""The toy vision tower's ground truth: what each patch of an image should say, per fact.

A tiny LLaVA trained from scratch on CPU learns the wording and ignores the image (measured: a
from-scratch language model on a tower pretrained with classification heads answered colours at
5% and POPE at chance). Two things fix it here. The language model learns to answer from
*ground-truth features* first (`TruthFeatures`: every patch says what covers it, every patch says
the image's global facts), on few image tokens and without a tower, so that its steps are cheap
enough for the thousands of look-up questions it needs. And the CLIP tower is trained to produce
exactly those features from pixels (`tower_features`, LLaVA's penultimate layer), by regression
on per-patch targets, so the language model finds at the real image tokens what it learned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionModel

from mmvsd.data.conversations import IGNORE
from mmvsd.toyworld.charts import CHART_COLOURS, LABELS, TITLES, Chart
from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, SIZES, Scene, object_mask

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
    owner = np.where(best >= 0.35, shares.argmax(axis=0) + 1, np.where(best > 0.05, IGNORE, 0))
    for i, shape in enumerate(scene.shapes):  # a coarse grid must not lose a small shape
        owner[min(grid - 1, int(shape.y * grid)) * grid + min(grid - 1, int(shape.x * grid))] = i + 1
    return owner


def _patch_column(chart: Chart, grid: int) -> np.ndarray:
    centres = (np.arange(grid) + 0.5) / grid
    column = np.full(grid, -1, dtype=np.int64)
    for i in range(len(chart.labels)):
        x0, x1 = chart.column(i)
        column[(centres >= x0) & (centres < x1)] = i
    for i in range(len(chart.labels)):  # a coarse grid must not lose a column
        if not (column == i).any():
            column[np.abs(centres - sum(chart.column(i)) / 2).argmin()] = i
    return np.tile(column, grid)  # the same for every row


# Facts of the whole image that every patch carries besides the global heads: counting and
# comparing are not look-ups of one patch. (Bags of every fact, "which objects are present", "the
# colour of each kind", ..., were tried: the tower could not produce them, rel. MSE stuck at 0.7.)
BAG_HEADS = ("count_of_kind", "highest", "lowest")


class TruthFeatures(nn.Module):
    """What a tower that sees perfectly would output: each patch's feature is a sum of fixed random
    vectors, one per fact.

    Per patch: the colour, kind, size and grid cell of the shape covering it, or the value, label
    and bar colour of a chart's column. Added to every patch: the image's global facts (type,
    count, background, title, line colour, the count of each kind, the highest and lowest label).
    The language model first learns to answer from these features, where steps are cheap (few
    image tokens, no tower); the tower is trained to produce them from pixels (regression), as
    LLaVA's language model learns on the features of a CLIP tower that already sees.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.patch = nn.ModuleDict({name: nn.Embedding(n, dim) for name, n in PATCH_HEADS.items()})
        self.global_ = nn.ModuleDict({name: nn.Embedding(n, dim) for name, n in GLOBAL_HEADS.items()})
        self.bags = nn.ModuleDict({name: nn.Embedding(SET_HEADS[name][0] * SET_HEADS[name][1], dim)
                                   for name in BAG_HEADS})
        for name, table in self.named_parameters():  # the local facts a little louder: they are looked up
            nn.init.normal_(table, std=0.3 if name.startswith("patch") else 0.2)

    def forward(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """targets as `collate_targets` makes them -> features [B, P, dim]."""
        def lookup(table: nn.Embedding, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            return table(labels.clamp(min=0)) * valid[..., None]

        patch = sum(lookup(table, targets[name], targets[name] != IGNORE) for name, table in self.patch.items())
        image = sum(lookup(table, targets[name], targets[name] != IGNORE) for name, table in self.global_.items())
        for name, table in self.bags.items():
            groups, classes = SET_HEADS[name]
            labels = targets[name]  # [B, G]
            valid = labels != IGNORE
            index = labels.clamp(min=0) + torch.arange(groups, device=labels.device) * classes
            image = image + lookup(table, index, valid).sum(1)
        return patch + image[:, None]

    def decode_loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of reading each patch fact back from `features` [B, P, dim]: the scores of
        a fact's classes are the dot products with their fixed codes. A tower that is close in mean
        square can still blur the facts a look-up needs (measured on the shipped toy-s tower: colour
        99%, chart value 26%, chart label 19% read back this way); this loss asks for them."""
        total = features.new_zeros(())
        for name, table in self.patch.items():
            labels = targets[name]
            if (labels != IGNORE).any():
                total = total + nn.functional.cross_entropy((features @ table.weight.T).transpose(1, 2), labels,
                                                            ignore_index=IGNORE)
        return total / len(self.patch)


def tower_features(tower: CLIPVisionModel, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """The patch features LLaVA reads: hidden states of `layer`, CLS dropped ("default")."""
    return tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]


def collate_targets(all_targets: list[Targets]) -> dict[str, torch.Tensor]:
    batch = {name: torch.from_numpy(np.stack([t.patch[name] for t in all_targets])) for name in PATCH_HEADS}
    batch.update({name: torch.tensor([t.global_[name] for t in all_targets]) for name in GLOBAL_HEADS})
    batch.update({name: torch.from_numpy(np.stack([t.set_[name] for t in all_targets])) for name in SET_HEADS})
    return batch
