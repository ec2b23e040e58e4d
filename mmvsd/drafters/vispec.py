"""The ViSpec drafter (Kang et al. 2025, "ViSpec: Accelerating Vision-Language Models with
Vision-Aware Speculative Decoding", arXiv 2509.15235).

The EAGLE drafter plus two ways of seeing the image without carrying all its tokens:
- an image adaptor: learned queries cross-attend to one image's embeddings and return
  `num_queries` vectors; all but the last replace the image's tokens in the drafter's sequence,
  as inputs of the decoder layer (no fc), at the positions of the image span's last pairs (so
  later text keeps its original positions), and the last is the image's global feature g;
- every later text input mixes g into the target feature, h' = img_fc([h ; g]), through a
  layer initialised to pass h through unchanged, so a drafter trained without images starts
  out as exactly the plain EAGLE drafter.

This is the computation of the authors' training code for LLaVA models (their data script marks the
`<image>` run). Their released inference code builds the image mask for LLaVA-NeXT and Qwen2.5-VL
only, so for `JLKang/ViSpec-llava-1.5-7b-hf` it runs the drafter as text (g = 0, the image
tokens' own embeddings, nothing compressed); mmvsd runs it as their training code computes, and
as their inference does with `reads_image = False` (the bench's `vispec_image=text`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmvsd.drafters.base import DrafterSpec, DraftState, pair_position, register_drafter
from mmvsd.drafters.eagle import EagleDrafter


class ImageAdaptor(nn.Module):
    """Multi-head cross-attention from `num_queries` learned queries to one image's embeddings, no
    positions, no norm; shaped and named as the authors' `imadpt` (q [num_q, heads, head_dim])."""

    def __init__(self, hidden: int, heads: int, num_queries: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q = nn.Parameter(torch.randn(num_queries, heads, self.head_dim) * self.head_dim ** -0.5)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[n, H] image embeddings -> [num_queries, H]."""
        n = image.shape[0]
        k = self.k_proj(image).view(n, self.heads, self.head_dim).transpose(0, 1)  # [heads, n, d]
        v = self.v_proj(image).view(n, self.heads, self.head_dim).transpose(0, 1)
        out = F.scaled_dot_product_attention(self.q.to(image.dtype).transpose(0, 1), k, v)  # [heads, Q, d]
        return self.o_proj(out.transpose(0, 1).reshape(-1, self.heads * self.head_dim))


@register_drafter("vispec")
class VispecDrafter(EagleDrafter):
    def __init__(self, spec: DrafterSpec, embed_tokens: nn.Embedding, lm_head: nn.Linear):
        super().__init__(spec, embed_tokens, lm_head)
        h = spec.hidden_size
        self.imadpt = ImageAdaptor(h, spec.num_heads, spec.extra.get("num_queries", 2))
        self.reads_image = True  # False: the prompt's image tokens are read as text, g stays 0
        self.img_fc = nn.Linear(2 * h, h)
        with torch.no_grad():  # h' = h at the start: [I | 0], no bias
            self.img_fc.weight.zero_()
            self.img_fc.weight[:, :h].copy_(torch.eye(h))
            self.img_fc.bias.zero_()

    def start(self, image_pairs: torch.Tensor, image_embeds: torch.Tensor) -> DraftState:
        state = super().start(image_pairs, image_embeds)
        if not self.reads_image:
            state.image = None
        state.image_feature = torch.zeros(self.spec.hidden_size, device=image_embeds.device)  # g, until an image is read
        return state

    def fuse(self, state: DraftState, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        g = state.image_feature.to(features.dtype).expand_as(features)
        return super().fuse(state, self.img_fc(torch.cat([features, g], dim=-1)), tokens)

    def embed_pairs(self, state: DraftState, features: torch.Tensor,
                    tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if state.image is None:
            return super().embed_pairs(state, features, tokens)
        mask, embeds = state.image
        state.image = None
        positions = pair_position(torch.arange(len(tokens), device=tokens.device)) + state.position
        inputs, kept = [], []
        start, used = 0, 0
        for a, b in _runs(mask.tolist()) + [(len(tokens), len(tokens))]:
            if a > start:  # text pairs before this image, reading the latest g
                inputs.append(self.fuse(state, features[start:a], tokens[start:a]))
                kept.append(positions[start:a])
            if b > a:
                summary = self.imadpt(embeds[used:used + b - a].to(features.dtype))  # [Q, H]
                used += b - a
                inputs.append(summary[:-1])
                kept.append(positions[b - len(summary) + 1:b])
                state.image_feature = summary[-1]
            start = b
        return torch.cat(inputs), torch.cat(kept)


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    runs, start = [], None
    for i, flag in enumerate(mask + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs
