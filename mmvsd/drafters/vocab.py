"""A reduced draft vocabulary (EAGLE-3's d2t; Li et al. 2025, arXiv 2503.01840).

At LLaVA-1.5 shapes the drafter's head (32064 x 4096) costs more per draft step than its decoder
layer. Drafting over only the N tokens that answers actually use makes each step cheaper; the
target still verifies over its full vocabulary, so a token outside the set is still emitted
whenever the target wants it (as the bonus token): outputs are unchanged, only tau can drop.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mmvsd.errors import UserError


def frequent_tokens(labels: Iterable[torch.Tensor], size: int, vocab_size: int, always: Iterable[int] = ()) -> list[int]:
    """The `size` most frequent ids among answer labels (negative = not an answer token), with
    `always` (e.g. EOS) included; ties and unseen ids go to the lower id. Sorted ascending."""
    if size > vocab_size:
        raise UserError(f"draft_vocab={size} exceeds the target's vocabulary of {vocab_size}")
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for batch in labels:
        answer = batch[batch >= 0].flatten()
        counts += torch.bincount(answer, minlength=vocab_size)[:vocab_size]
    counts[list(always)] = counts.max() + 1
    return sorted(torch.argsort(-counts, stable=True)[:size].tolist())
