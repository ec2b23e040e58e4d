"""The toy world as an mmvsd plugin (entry point `mmvsd.plugins`, see mmvsd.plugins): its trained
targets `toy-s` and `toy-m`, and fresh synthetic scenes and charts as everyone's default inputs."""

from __future__ import annotations

import functools
import random
import sys

from mmvsd.toyworld.targets.build import TOY_SPECS, find_target
from mmvsd.toyworld.data import random_sample, training_conversation
from mmvsd.toyworld.language import DESCRIBE_PROMPTS


def register(plugins) -> None:
    for name in TOY_SPECS:  # the shipped folder, or a build under $MMVSD_HOME the first time
        plugins.TARGETS[name] = functools.partial(find_target, name, log=lambda m: print(m, file=sys.stderr))
    plugins.INPUTS.append(plugins.DefaultInputs(image=lambda rng, size: random_sample(rng, size).image,
                                                prompts=list(DESCRIBE_PROMPTS), conversation=conversation))


def conversation(rng: random.Random, size: int, describe_share: float):
    """A fresh image and up to four turns about it (a description first with `describe_share`)."""
    sample = random_sample(rng, size)
    return sample.image, training_conversation(sample, rng, describe_share, 4)
