"""The EAGLE drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty", arXiv 2401.15077), with EAGLE-2 dynamic trees at decoding time.

One decoder layer reads [target feature h_t ; embedding of token t+1] through a linear fuse and
predicts the next feature; the target's frozen LM head turns features into logits. At depth > 1
the drafter feeds on its own predicted features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmvsd.config import TreeConfig
from mmvsd.decoding.tree import DraftTree, TreeGrower
from mmvsd.drafters.base import DrafterSpec
from mmvsd.drafters.layers import DecoderLayer, KVCache
from mmvsd.models.llava import PrefillOutput


@dataclass
class Rollout:
    """Draft paths to roll out in a training pass (VSD's E-step): from pair indices `contexts`
    [B, M] of each sequence, `depth` tokens each, chosen by `pick(b, logits [M, V], level)`."""

    contexts: torch.Tensor
    depth: int
    pick: Callable[[int, torch.Tensor, int], torch.Tensor]


class EagleDrafter(nn.Module):
    kind = "eagle"

    def __init__(self, spec: DrafterSpec, embed_tokens: nn.Embedding, lm_head: nn.Linear):
        super().__init__()
        self.spec = spec
        h = spec.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layer = DecoderLayer(h, spec.num_heads, spec.intermediate_size, spec.rope_theta)
        # The target's embedding and head, shared and frozen: kept out of the module tree so they
        # are neither trained nor saved with the drafter.
        self.frozen = (embed_tokens, lm_head)
        self.cache = KVCache()
        self.stable = 0  # rows of the cache that hold accepted context (the rest is draft scratch)
        self.position = 0  # position of the newest accepted pair (rows and positions differ for ViSpec)
        self.pending_image = None  # (image_pairs, image_embeds) of a new sequence, see reset

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.frozen[0]

    @property
    def lm_head(self) -> nn.Linear:
        return self.frozen[1]

    def fuse(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Drafter input for (feature, next token) pairs: [..., H], [...] -> [..., H]."""
        return self.fc(torch.cat([features, self.embed_tokens(tokens).to(features.dtype)], dim=-1))

    # ---------------------------------------------------------------- decoding

    def begin(self, input_ids: torch.Tensor, prefill: PrefillOutput) -> None:
        self.reset(prefill.image_mask[1:], prefill.image_embeds)  # pair t is (f_{t-1}, x_t)

    def reset(self, image_pairs: torch.Tensor, image_embeds: torch.Tensor) -> None:
        """Start a sequence whose first pairs are marked `image_pairs` [n] (True where the pair's
        token is an image token), with the image's embeddings [n_img, H]: kept for the next
        `embed_pairs`, where vision-aware drafters read them (EAGLE does not)."""
        self.cache = KVCache()
        self.stable = self.position = 0
        self.pending_image = (image_pairs, image_embeds)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, image_pairs: torch.Tensor,
                image_embeds: torch.Tensor, rollout: Rollout | None = None):
        """Teacher-forced training pass: pairs [B, n, H], [B, n], image marks [B, n] and image
        embeddings [B, n_img, H] -> predicted next target features [B, n, H], one per pair (at
        pairs a drafter drops, e.g. ViSpec's image tokens, whatever lands there: no loss goes
        there). Padding must come last: attention is causal.

        With a `rollout`, also draft paths from its contexts the way decoding drafts them (see
        `Rollout`) and return (predicted, draft logits [B, M, depth, V], paths [B, M, depth])."""
        out = torch.zeros_like(features)
        drafts = []
        for b in range(features.shape[0]):
            self.reset(image_pairs[b], image_embeds[b, : int(image_pairs[b].sum())])  # none for text-only
            x, positions = self.embed_pairs(features[b], tokens[b])
            cache = KVCache()
            y = self.layer(x[None], positions[None], None, cache)[0]  # causal over the sequence
            out[b, positions - 1] = y
            if rollout is not None:
                drafts.append(self._rollout(out[b], positions, cache, rollout.contexts[b], rollout.depth,
                                            lambda logits, level, b=b: rollout.pick(b, logits, level)))
        self.reset(image_pairs[0, :0], image_embeds[0, :0])
        if rollout is None:
            return out
        logits, paths = zip(*drafts)
        return out, torch.stack(logits), torch.stack(paths)

    def _rollout(self, predicted: torch.Tensor, positions: torch.Tensor, cache: KVCache, contexts: torch.Tensor,
                 depth: int, pick) -> tuple[torch.Tensor, torch.Tensor]:
        """Paths of `depth` tokens from pair indices `contexts` [M] of one teacher-forced sequence
        (its predictions [n, H], row positions [R], and cache): each path starts from the
        prediction at its context, then feeds on its own predicted features, seeing the sequence
        up to its context and its own earlier nodes, exactly as in `propose`."""
        hidden = predicted[contexts]  # [M, H]
        own = torch.eye(len(contexts), dtype=torch.bool, device=positions.device)
        sees_context = positions[None] <= contexts[:, None] + 1  # [M, R]
        logits, picked = [], []
        for level in range(depth):
            logits.append(self.lm_head(hidden).float())
            picked.append(pick(logits[-1], level))
            if level + 1 < depth:  # the next node sits at the position of the token it reads
                allowed = torch.cat([sees_context] + [own] * (level + 1), dim=1)
                hidden = self.layer(self.fuse(hidden, picked[-1])[None], (contexts + 2 + level)[None],
                                    allowed[None, None], cache)[0]
        return torch.stack(logits, dim=1), torch.stack(picked, dim=1)

    def embed_pairs(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafter inputs [m, H] for new (feature, token) pairs [n, H], [n], and their positions [m].
        Pair i sits at position `self.position + 1 + i`, the position of its token."""
        positions = torch.arange(1, len(tokens) + 1, device=tokens.device) + self.position
        return self.fuse(features, tokens), positions

    @torch.inference_mode()
    def propose(self, features: torch.Tensor, tokens: torch.Tensor, tree: TreeConfig) -> DraftTree:
        root_hidden = self._catch_up(*self.embed_pairs(features, tokens))  # [H]
        grower = TreeGrower(int(tokens[-1]), tree.top_k)
        frontier = grower.expand([0], self._logp(root_hidden[None]))
        hidden = {0: root_hidden}  # drafter output of every processed node, read by its children
        rows: dict[int, int] = {}  # processed node -> its row in the scratch part of the cache
        for _ in range(tree.depth - 1):
            out = self._forward_nodes(grower, frontier, hidden, rows)  # [k, H]
            hidden.update(zip(frontier, out))
            frontier = grower.expand(frontier, self._logp(out))
        self.cache.truncate(self.stable)
        return grower.tree(tree.total_tokens)

    def _catch_up(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the accepted inputs [n, H] at `positions` [n] into the cache; return the last output."""
        n, device = x.shape[0], x.device
        allowed = torch.ones(n, self.stable + n, dtype=torch.bool, device=device)
        allowed[:, self.stable:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        out = self.layer(x[None], positions[None], allowed[None, None], self.cache)
        self.stable += n
        self.position = int(positions[-1])
        return out[0, -1]

    def _forward_nodes(self, grower: TreeGrower, nodes: list[int], hidden: dict, rows: dict) -> torch.Tensor:
        """One drafter pass over a tree level: each node sees the context and its own ancestors."""
        device = self.fc.weight.device
        parent_hidden = torch.stack([hidden[grower.parents[i]] for i in nodes])
        tokens = torch.tensor([grower.tokens[i] for i in nodes], device=device)
        depths = [_depth(grower, i) for i in nodes]
        positions = torch.tensor(depths, device=device) + self.position
        scratch = len(rows)
        allowed = torch.zeros(len(nodes), self.stable + scratch + len(nodes), dtype=torch.bool, device=device)
        allowed[:, : self.stable] = True
        for r, node in enumerate(nodes):
            allowed[r, self.stable + scratch + r] = True
            parent = grower.parents[node]
            while parent > 0:
                allowed[r, self.stable + rows[parent]] = True
                parent = grower.parents[parent]
            rows[node] = scratch + r
        out = self.layer(self.fuse(parent_hidden, tokens)[None], positions[None], allowed[None, None], self.cache)
        return out[0]

    def _logp(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lm_head(hidden).float(), dim=-1)


def _depth(grower: TreeGrower, node: int) -> int:
    depth = 0
    while node > 0:
        node, depth = grower.parents[node], depth + 1
    return depth
