"""The EAGLE drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty", arXiv 2401.15077), with EAGLE-2 dynamic trees at decoding time.

One decoder layer reads [embedding of token t+1 ; target feature h_t] through a linear fuse (with
a bias, embedding first, as the authors' code and released checkpoints have it) and predicts the
next feature; the target's frozen LM head turns features into logits. At depth > 1
the drafter feeds on its own predicted features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmvsd.decoding.drafting import TreeShape, make_pairs
from mmvsd.decoding.tree import DraftTree, TreeGrower
from mmvsd.drafters.base import DrafterSpec, DraftRows, DraftState, Rollout, pair_position, register_drafter
from mmvsd.drafters.layers import DecoderLayer, KVCache
from mmvsd.models.kv_cache import RowsLayer, rows_mask
from mmvsd.models.llava import PrefillOutput
from mmvsd.models.skinny import linear


@register_drafter("eagle")
class EagleDrafter(nn.Module):
    def __init__(self, spec: DrafterSpec, embed_tokens: nn.Embedding, lm_head: nn.Linear):
        super().__init__()
        self.spec = spec
        h = spec.hidden_size
        self.fc = nn.Linear(2 * h, h)
        self.layer = DecoderLayer(h, spec.num_heads, spec.intermediate_size, spec.rope_theta, spec.rms_norm_eps)
        # The target's embedding and head, shared and frozen: kept out of the module tree so they
        # are neither trained nor saved with the drafter.
        self.frozen = (embed_tokens, lm_head)
        self.stop_tokens: frozenset[int] = frozenset()  # the target's end-of-answer ids (set on loading): leaves
        self.draft_vocab = None  # a reduced draft vocabulary (mmvsd.drafters.vocab): its ids and their head rows
        if spec.draft_vocab:
            ids = torch.tensor(spec.draft_vocab, dtype=torch.long, device=lm_head.weight.device)
            self.draft_vocab = (ids, lm_head.weight[ids].detach())

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.frozen[0]

    @property
    def lm_head(self) -> nn.Linear:
        return self.frozen[1]

    def start(self, image_pairs: torch.Tensor, image_embeds: torch.Tensor) -> DraftState:
        """A sequence whose first pairs are marked `image_pairs` [n] (True where the pair's token is
        an image token), with the image's embeddings [n_img, H]: kept for the first `embed_pairs`,
        where vision-aware drafters read them (EAGLE does not)."""
        return DraftState(KVCache(), image=(image_pairs, image_embeds))

    def fuse(self, state: DraftState, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Drafter input for (feature, next token) pairs: [..., H], [...] -> [..., H]."""
        return self.fc(torch.cat([self.embed_tokens(tokens).to(features.dtype), features], dim=-1))

    def embed_pairs(self, state: DraftState, features: torch.Tensor,
                    tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafter inputs [m, H] for new pairs [n, H], [n], and their positions [m], continuing from
        the newest accepted pair at `state.position`."""
        positions = pair_position(torch.arange(len(tokens), device=tokens.device)) + state.position
        state.image = None  # the prompt's image is read once, with the prompt's pairs
        return self.fuse(state, features, tokens), positions

    # ---------------------------------------------------------------- training

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, image_pairs: torch.Tensor,
                image_embeds: torch.Tensor, rollout: Rollout | None = None):
        """The training pass of `TrainableDrafter` (at pairs a drafter drops, e.g. ViSpec's image
        tokens, whatever lands there: no loss goes there)."""
        out = torch.zeros_like(features)
        drafts = []
        for b in range(features.shape[0]):
            state = self.start(image_pairs[b], image_embeds[b, : int(image_pairs[b].sum())])  # none for text-only
            x, positions = self.embed_pairs(state, features[b], tokens[b])
            y = self.layer(x[None], positions[None], None, state.cache)[0]  # causal over the sequence
            out[b, positions - pair_position(0)] = y
            if rollout is not None:
                drafts.append(self._rollout(state, out[b], positions, rollout.contexts[b], rollout.depth,
                                            lambda logits, level, b=b: rollout.pick(b, logits, level)))
        if rollout is None:
            return out
        logits, paths = zip(*drafts)
        return out, torch.stack(logits), torch.stack(paths)

    def _rollout(self, state: DraftState, predicted: torch.Tensor, positions: torch.Tensor, contexts: torch.Tensor,
                 depth: int, pick) -> tuple[torch.Tensor, torch.Tensor]:
        """Paths of `depth` tokens from pair indices `contexts` [M] of one teacher-forced sequence
        (its predictions [n, H], row positions [R], and its state's cache): each path starts from
        the prediction at its context, then feeds on its own predicted features, seeing the
        sequence up to its context and its own earlier nodes, exactly as in `propose`."""
        hidden = predicted[contexts]  # [M, H]
        own = torch.eye(len(contexts), dtype=torch.bool, device=positions.device)
        sees_context = positions[None] <= pair_position(contexts)[:, None]  # [M, R]
        logits, picked = [], []
        for level in range(depth):
            logits.append(self.lm_head(hidden).float())
            picked.append(pick(logits[-1], level))
            if level + 1 < depth:  # node `level` reads the token after its parent's: one position on
                allowed = torch.cat([sees_context] + [own] * (level + 1), dim=1)
                hidden = self.layer(self.fuse(state, hidden, picked[-1])[None],
                                    (pair_position(contexts) + 1 + level)[None], allowed[None, None], state.cache)[0]
        return torch.stack(logits, dim=1), torch.stack(picked, dim=1)

    # ---------------------------------------------------------------- decoding

    def begin(self, input_ids: torch.Tensor, prefill: PrefillOutput) -> DraftState:
        return self.start(make_pairs(prefill.hidden, prefill.image_mask)[1], prefill.image_embeds)

    @torch.inference_mode()
    def propose(self, state: DraftState, features: torch.Tensor, tokens: torch.Tensor, tree: TreeShape) -> DraftTree:
        root_hidden = self._catch_up(state, *self.embed_pairs(state, features, tokens))  # [H]
        grower = TreeGrower(int(tokens[-1]), tree.top_k, self.stop_tokens)
        vocab = self.draft_vocab[0] if self.draft_vocab else None
        frontier = grower.expand([0], self._logp(root_hidden[None]), vocab)
        # The last level processed: its nodes' row, drafter outputs [k, H] and the scratch rows of
        # the cache each attends to [k, R] (its ancestors and itself): the next level's parents.
        rows, out, sees = {0: 0}, root_hidden[None], root_hidden.new_zeros(1, 0, dtype=torch.bool)
        depth = 1
        while frontier and tree.grows(grower, frontier, depth):  # an empty frontier: every candidate ends the answer
            parents = torch.tensor([rows[grower.parents[i]] for i in frontier], device=out.device)
            out, sees = self._forward_level(state, grower, frontier, depth, out[parents], sees[parents])  # [k, H]
            rows = {node: row for row, node in enumerate(frontier)}
            frontier = grower.expand(frontier, self._logp(out), vocab)
            depth += 1
        state.cache.truncate(state.stable)
        return grower.tree(tree.size(grower))

    def _catch_up(self, state: DraftState, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the accepted inputs [n, H] at `positions` [n] into the cache; return the last output."""
        n, device = x.shape[0], x.device
        allowed = torch.ones(n, state.stable + n, dtype=torch.bool, device=device)
        allowed[:, state.stable:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        out = self.layer(x[None], positions[None], allowed[None, None], state.cache)
        state.stable += n
        state.position = int(positions[-1])
        return out[0, -1]

    def _forward_level(self, state: DraftState, grower: TreeGrower, nodes: list[int], depth: int,
                       parent_out: torch.Tensor, parent_sees: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One drafter pass over a tree level, all its `nodes` at `depth`, from their parents'
        outputs [k, H] and scratch rows [k, R] (the level before: the last rows of the cache). Each
        node sees the context, its ancestors and itself; returns its outputs [k, H] and rows [k, R + k]."""
        k, device = len(nodes), parent_out.device
        sees = torch.cat([parent_sees, torch.eye(k, dtype=torch.bool, device=device)], dim=1)
        allowed = F.pad(sees, (state.stable, 0), value=True)  # [k, S + R + k]: the whole context, then the scratch
        tokens = torch.tensor([grower.tokens[i] for i in nodes], device=device)
        positions = torch.full((1, k), state.position + depth, device=device)
        x = self.fuse(state, parent_out, tokens)
        return self.layer(x[None], positions, allowed[None, None], state.cache)[0], sees

    # ---------------------------------------------------------------- batched decoding

    def new_batch(self) -> DraftRows:
        return DraftRows(RowsLayer(256))

    @torch.inference_mode()
    def join(self, batch: DraftRows, state: DraftState, features: torch.Tensor, tokens: torch.Tensor) -> None:
        """A new last row: `state` (from `begin`) reads its pairs [n, H], [n] alone (the prompt's, where
        MSD and ViSpec read the image), then its cache moves into the batch's."""
        self._catch_up(state, *self.embed_pairs(state, features, tokens))
        batch.cache.add(state.cache.keys[:, :, :state.stable], state.cache.values[:, :, :state.stable])
        batch.stable.append(state.stable)
        batch.position.append(state.position)
        if state.image_feature is not None:
            g = state.image_feature.reshape(1, 1, -1)
            batch.image_feature = g if batch.image_feature is None else torch.cat([batch.image_feature, g])

    def leave(self, batch: DraftRows, rows: list[int]) -> None:
        """Keep only rows `rows` (in order)."""
        batch.cache.select(rows)
        batch.stable = [batch.stable[r] for r in rows]
        batch.position = [batch.position[r] for r in rows]
        if batch.image_feature is not None:
            batch.image_feature = batch.image_feature[rows]

    @torch.inference_mode()
    def propose_batch(self, batch: DraftRows, features: list[torch.Tensor], tokens: list[torch.Tensor],
                      tree: TreeShape) -> list[DraftTree]:
        """`propose` for every row at once: one drafter pass takes in all rows' new pairs (features
        [n_b, H], tokens [n_b]), then one pass per tree level drafts every row's level, `top_k`
        nodes per row (a row with fewer open nodes fills its slots with copies, whose outputs are
        dropped). Row b's tree is rooted at tokens[b][-1]."""
        b = len(tokens)
        counts = torch.tensor([len(t) for t in tokens])
        x = self.fuse(batch, nn.utils.rnn.pad_sequence(features, batch_first=True),
                      nn.utils.rnn.pad_sequence(tokens, batch_first=True))  # [B, n, H]
        device, n = x.device, x.shape[1]
        positions = torch.tensor(batch.position, device=device)[:, None] + 1 + torch.arange(n, device=device)  # [B, n]
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril().expand(b, n, n)
        allowed = rows_mask(torch.tensor(batch.stable, device=device)[:, None], causal)  # the context, then causal
        out = self.layer(x, positions, allowed[:, None], batch.cache)
        root_hidden = out[torch.arange(b), counts.to(device) - 1]  # [B, H]
        batch.stable = [s + int(c) for s, c in zip(batch.stable, counts)]
        batch.position = [p + int(c) for p, c in zip(batch.position, counts)]
        batch.cache.truncate(batch.stable)

        growers = [TreeGrower(int(t[-1]), tree.top_k, self.stop_tokens) for t in tokens]
        vocab = self.draft_vocab[0] if self.draft_vocab else None
        logp = self._logp(root_hidden)
        frontiers = [grower.expand([0], logp[i:i + 1], vocab) for i, grower in enumerate(growers)]
        stable = torch.tensor(batch.stable, device=device)[:, None]
        base = torch.tensor(batch.position, device=device)[:, None]
        rows = [{0: 0} for _ in growers]  # node -> its slot in the last level
        out, sees = root_hidden[:, None], torch.zeros(b, 1, 0, dtype=torch.bool, device=device)
        k, depth = tree.top_k, 1
        while True:
            frontiers = [f if f and tree.grows(g, f, depth) else [] for g, f in zip(growers, frontiers)]
            if not any(frontiers):
                break
            slots = [f + f[:1] * (k - len(f)) if f else [0] * k for f in frontiers]  # [B][k] nodes, padded
            parents = torch.tensor([[rows[i].get(growers[i].parents[node], 0) for node in nodes]
                                    for i, nodes in enumerate(slots)], device=device)  # [B, k]
            node_tokens = torch.tensor([[growers[i].tokens[node] for node in nodes] for i, nodes in enumerate(slots)],
                                       device=device)
            out, sees = self._forward_rows(batch, out, sees, parents, node_tokens, stable, base + depth)
            logp = self._logp(out)  # [B, k, V]
            rows = [{node: slot for slot, node in enumerate(f)} for f in frontiers]
            frontiers = [grower.expand(f, logp[i, :len(f)], vocab) if f else []
                         for i, (grower, f) in enumerate(zip(growers, frontiers))]
            depth += 1
        batch.cache.truncate(batch.stable)
        return [grower.tree(tree.size(grower)) for grower in growers]

    def _forward_rows(self, batch: DraftRows, parent_out: torch.Tensor, parent_sees: torch.Tensor,
                      parents: torch.Tensor, tokens: torch.Tensor, stable: torch.Tensor, positions: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One drafter pass over a level of every row: nodes tokens [B, k] whose parents are slots
        `parents` [B, k] of the level before (outputs [B, k', H], scratch rows seen [B, k', R]).
        Row b's scratch starts at its own `stable` [B, 1]; returns outputs [B, k, H] and [B, k, R + k]."""
        b, k = tokens.shape
        scratch = parent_sees.shape[2]
        sees = torch.cat([parent_sees.gather(1, parents[..., None].expand(b, k, scratch)),
                          torch.eye(k, dtype=torch.bool, device=tokens.device).expand(b, k, k)], dim=2)
        allowed = rows_mask(stable, sees)  # [B, k, K]
        x = self.fuse(batch, parent_out.gather(1, parents[..., None].expand(b, k, parent_out.shape[2])), tokens)
        return self.layer(x, positions.expand(b, k), allowed[:, None], batch.cache), sees

    def _logp(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft log-probabilities [n, V] over the vocabulary, or over the draft vocabulary [n, N]."""
        logits = self.lm_head(hidden) if self.draft_vocab is None else linear(hidden, self.draft_vocab[1])
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32)
