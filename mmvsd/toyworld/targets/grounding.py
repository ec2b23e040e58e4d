"""Grounding: which image patches each word of a toy conversation names, and the attention loss
that pulls designated heads onto them.

A small language model trained from scratch on a CPU learns the wording of the toy world and
does not find, by itself, the circuit that looks an object up among the patches: colour of a
named shape stayed near chance after ~500k look-up questions (README, "How the targets learn to
look"). The toy world knows which patches show every word, so it can say where to look: at each
word that names something drawn (a kind, a colour, a size, a position, a chart label or bar
colour, the chart title), one head of layer 0 is pulled toward the patches that show it (-log of
its attention mass there); at the kind word that ends a phrase ("Is there a red circle?"), one
head of layer 1 is pulled toward the patches showing all of the phrase, or to the background
when nothing does (a sink that lets a softmax head say "absent"). Only those heads are
supervised; the others stay free. Everything is grounded where the model reads it: in the
research prototype (the team's shared/research/grounding_proto.md) that was about twice as fast
to learn as grounding the position that predicts the answer, and in the build a head pulled at
the answer position held the look-ups back (README, "How the targets learn to look").
"""

from __future__ import annotations

import numpy as np
import torch

from mmvsd.toyworld.charts import CHART_COLOURS, LABELS, TOP, Chart
from mmvsd.toyworld.scenes import COLOURS, KINDS, POSITIONS, SIZES, Scene

_POSITION_WORDS = {tuple(p.split()): cell for cell, p in enumerate(POSITIONS)}
_PLURALS = {kind + "s": kind for kind in KINDS}
_ALL_SHAPES = ("shapes", "objects")


def word_spans(texts: list[str]) -> list[tuple[str, int]]:
    """Tokens' texts -> words (lower case) with the index of each word's last token. A word starts
    at a token that starts with white space, and punctuation is a word of its own."""
    words: list[tuple[str, int]] = []
    current, last = "", -1
    for i, text in enumerate(texts):
        starts = not text or text[0].isspace() or not text[0].isalnum() or not current
        if starts and current:
            words.append((current.lower(), last))
            current = ""
        current += text.strip()
        last = i
        if current and not current[-1].isalnum():  # punctuation closes its word at once
            words.append((current.lower(), last))
            current = ""
    if current:
        words.append((current.lower(), last))
    return words


class PatchMap:
    """Which patches of a `grid` x `grid` image show each groundable word of one image."""

    def __init__(self, truth: Scene | Chart, grid: int):
        from mmvsd.toyworld.targets.vision import _patch_column, _patch_owner

        self.truth, self.grid = truth, grid
        if isinstance(truth, Scene):
            self.owner = _patch_owner(truth, grid * 8, grid)  # [P]: 0 background, i + 1 shape i, IGNORE slivers
        else:
            self.column = _patch_column(truth, grid)  # [P]: category index, -1 outside every column

    def _shapes(self, keep) -> np.ndarray:
        """Patches of the shapes for which keep(shape) holds."""
        ids = [i + 1 for i, shape in enumerate(self.truth.shapes) if keep(shape)]
        return np.flatnonzero(np.isin(self.owner, ids))

    def background(self) -> np.ndarray:
        return np.flatnonzero(self.owner == 0) if isinstance(self.truth, Scene) else np.array([], dtype=np.int64)

    def cell(self, cell: int) -> np.ndarray:
        """The shape in that cell of the 3x3 grid, or the cell's own patches when it is empty."""
        shape = self._shapes(lambda s: s.cell == cell)
        if len(shape):
            return shape
        rows, cols = np.divmod(np.arange(self.grid * self.grid), self.grid)
        centre_row, centre_col = ((rows + 0.5) * 3 / self.grid).astype(int), ((cols + 0.5) * 3 / self.grid).astype(int)
        return np.flatnonzero(centre_row * 3 + centre_col == cell)

    def objects(self, colour: str, kind: str) -> np.ndarray:
        return self._shapes(lambda s: s.colour == colour and s.kind == kind)

    def word(self, word: str, previous: str) -> np.ndarray | None:
        """Patches showing `word`: None when the word names nothing that can be drawn, empty when it
        names something this image does not show."""
        if isinstance(self.truth, Chart):
            chart, label = self.truth, word.capitalize()
            if label in LABELS:
                return np.flatnonzero(self.column == chart.labels.index(label)) if label in chart.labels else _NONE
            if word in CHART_COLOURS and chart.kind == "bar":
                return np.flatnonzero(self.column == chart.colours.index(word)) if word in chart.colours else _NONE
            if word == chart.title.lower():
                rows = np.arange(self.grid * self.grid) // self.grid
                return np.flatnonzero((rows + 0.5) / self.grid < TOP)
            return None
        if _shape_colour(word, previous):
            return self._shapes(lambda s: s.colour == word)
        kind = _PLURALS.get(word, word)
        if kind in KINDS:
            return self._shapes(lambda s: s.kind == kind)
        if word in SIZES:
            return self._shapes(lambda s: s.size == word)
        if word in _ALL_SHAPES:
            return self._shapes(lambda s: True)
        return None


_NONE = np.array([], dtype=np.int64)


def _shape_colour(word: str, previous: str) -> bool:
    """Does `word` name a shape's colour? ("light blue" is a background.)"""
    return word in COLOURS and previous != "light"


def ground_sequence(token_texts: list[str], truth: Scene | Chart,
                    grid: int) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """One encoded conversation -> (word targets, phrase targets): (position, patch indices) pairs.

    Word targets: every word that names something drawn, at its last token ("red" -> the red
    shapes). Phrase targets: at the kind word that ends a phrase of several naming words ("a small
    red star", "Is there a red circle?"), the patches that show all of them, or, when none does,
    the background: a sink that lets a softmax head say "absent", read at once by the answer."""
    patches = PatchMap(truth, grid)
    words = word_spans(token_texts)
    word_targets, phrase_targets = [], []
    phrase: list[np.ndarray] = []  # what the naming words just before this one show
    previous = ""
    for n, (word, position) in enumerate(words):
        found = patches.word(word, previous)
        following = words[n + 1][0] if n + 1 < len(words) else ""
        if isinstance(truth, Scene):
            if (word, following) in _POSITION_WORDS:
                found = None  # "top" of "top left": the place is grounded at its last word
            elif (previous, word) in _POSITION_WORDS:
                found = patches.cell(_POSITION_WORDS[previous, word])
            elif (word,) in _POSITION_WORDS:
                found = patches.cell(_POSITION_WORDS[word,])
            if _PLURALS.get(word, word) in KINDS and phrase:
                phrase_targets.append((position, _all_of([*phrase, found], patches)))
            phrase = [*phrase, found] if _shape_colour(word, previous) or word in SIZES else []
        if found is not None and len(found):
            word_targets.append((position, found))
        previous = word
    return word_targets, phrase_targets


def _all_of(found: list[np.ndarray], patches: PatchMap) -> np.ndarray:
    """The patches showing every named thing, or the background (the sink) when none does."""
    common = found[0]
    for more in found[1:]:
        common = np.intersect1d(common, more)
    return common if len(common) else patches.background()


def grounding_batch(encoded_texts: list[list[str]], truths: list, grid: int, length: int) -> dict[str, torch.Tensor]:
    """Dense targets for a padded batch: ground_words / ground_phrases [B, T, P] (1 on the patches
    to attend to, rows of zeros where a position is not supervised)."""
    words = torch.zeros(len(truths), length, grid * grid)
    phrases = torch.zeros_like(words)
    for b, (texts, truth) in enumerate(zip(encoded_texts, truths)):
        word_targets, phrase_targets = ground_sequence(texts, truth, grid)
        for out, targets in ((words, word_targets), (phrases, phrase_targets)):
            for position, found in targets:
                if position < length:
                    out[b, position, torch.from_numpy(found)] = 1.0
    return {"ground_words": words, "ground_phrases": phrases}


def attention_mass_loss(attention: torch.Tensor, targets: torch.Tensor, image_start: torch.Tensor) -> torch.Tensor:
    """Mean over supervised positions of -log(attention mass on the target patches).

    attention [B, T, S] (one head's weights), targets [B, T, P], image_start [B]: the position of
    each row's first image token. 0 when no position is supervised."""
    supervised = targets.sum(-1) > 0  # [B, T]
    if not supervised.any():
        return attention.new_zeros(())
    patches = targets.shape[-1]
    index = (image_start[:, None] + torch.arange(patches, device=attention.device))[:, None, :]  # [B, 1, P]
    on_image = attention.gather(-1, index.expand(-1, attention.shape[1], -1))  # [B, T, P]
    mass = (on_image * targets).sum(-1)
    return -torch.log(mass[supervised] + 1e-6).mean()


class HeadRecorder:
    """Keeps the attention weights of chosen layers during a forward (eager attention returns them
    from each attention module; only these layers' are kept)."""

    def __init__(self, layers, indices: tuple[int, ...]):
        self.weights: dict[int, torch.Tensor] = {}
        self._handles = [layers[i].self_attn.register_forward_hook(self._keep(i)) for i in indices]

    def _keep(self, index: int):
        def hook(module, args, output):
            self.weights[index] = output[1]  # [B, heads, T, S]
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
