"""The MSD drafter (Lin et al. 2025, "Speculative Decoding Reimagined for Multimodal Large
Language Models", arXiv 2505.14260).

The EAGLE drafter with one change in how the prompt is read: at image positions the drafter's
input is the target's own projected image embedding, taken as it is (no fusion with target
hidden states, which at image positions carry little about the next token), so the visual
tokens enter the drafter as plain context. Text positions use the EAGLE fusion. The paper trains
it text-first, then on multimodal data (a curriculum; see mmvsd.train).
"""

from __future__ import annotations

import torch

from mmvsd.drafters.base import DraftState, register_drafter
from mmvsd.drafters.eagle import EagleDrafter


@register_drafter("msd")
class MsdDrafter(EagleDrafter):
    def embed_pairs(self, state: DraftState, features: torch.Tensor,
                    tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = state.image  # read before the EAGLE part marks it read
        x, positions = super().embed_pairs(state, features, tokens)
        if image is not None:  # the prompt's pairs: put the image embeddings in
            mask, embeds = image
            x = x.clone()
            x[: len(mask)][mask] = embeds.to(x.dtype)
        return x, positions
