"""Targets and default inputs that come from plugins, not from checkpoints or data files.

A plugin is a function registered under the `mmvsd.plugins` entry point (pyproject.toml); it is
called once, with this module, and fills its tables. General code (models, the bench, training,
the answer writer) asks these tables and never imports a plugin. mmvsd ships one plugin, the toy
world (`mmvsd.toyworld.plugin`): the `toy-s` / `toy-m` targets and fresh synthetic images.
"""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from PIL import Image

from mmvsd.errors import UserError


@dataclass
class DefaultInputs:
    """What a run without a data file uses: fresh images, requests for long answers about them,
    and training conversations about an image. Each draws only from the `rng` it is given."""

    image: Callable[[random.Random, int], Image.Image]  # (rng, side in pixels) -> an image
    prompts: list[str]  # requests for long answers (descriptions): the speed setting
    conversation: Callable[[random.Random, int, float], tuple[Image.Image, list[tuple[str, str]]]]
    #            (rng, side, share of long answers) -> an image and (question, answer) turns about it


TARGETS: dict[str, Callable[[], Path]] = {}  # target id -> its checkpoint folder (found, or built once)
INPUTS: list[DefaultInputs] = []  # the first plugin to add one provides the defaults


@functools.cache
def load_plugins() -> None:
    for entry in entry_points(group="mmvsd.plugins"):
        entry.load()(sys.modules[__name__])


def target_folder(name: str) -> Path | None:
    """The checkpoint folder of a plugin's target `name`, or None when no plugin has it."""
    load_plugins()
    return TARGETS[name]() if name in TARGETS else None


def default_inputs() -> DefaultInputs:
    load_plugins()
    if not INPUTS:
        raise UserError("no default inputs: no plugin provides images; give data=FILE")
    return INPUTS[0]
