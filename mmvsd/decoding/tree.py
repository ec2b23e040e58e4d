"""Draft trees: the data structure, and EAGLE-2's dynamic growth and reranking.

Dynamic draft trees follow EAGLE-2 (Li et al. 2024, "EAGLE-2: Faster Inference of Language Models
with Dynamic Draft Trees", arXiv 2406.16858): expand the best `top_k` nodes of each level by the
drafter's cumulative log-probability, keep every candidate, and finally keep the `total_tokens`
best candidates overall. A child never scores above its parent, so the kept set is closed under
ancestors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    """Node 0 is the root: the last emitted token, already decided by the target.

    Nodes are in creation order, so a parent always comes before its children, and siblings are
    ordered by descending draft score (the order stochastic verification visits them in).
    """

    tokens: torch.Tensor  # [N] long
    parents: torch.Tensor  # [N] long, parents[0] == -1
    scores: torch.Tensor  # [N] cumulative draft log-probability, 0 at the root
    depths: torch.Tensor = field(init=False)  # [N] long, 0 at the root
    ancestors: torch.Tensor = field(init=False)  # [N, N] bool: ancestors[i, j] = j is i or an ancestor of i

    def __post_init__(self) -> None:
        n = len(self.tokens)
        parents = self.parents.tolist()
        lines = [[0]]  # node i's ancestors and itself, root first
        for i in range(1, n):
            if not 0 <= parents[i] < i:
                raise ValueError(f"node {i} has parent {parents[i]}: parents must come before children")
            lines.append(lines[parents[i]] + [i])
        self.depths = torch.tensor([len(line) - 1 for line in lines], dtype=torch.long)
        self.ancestors = torch.zeros(n, n, dtype=torch.bool)  # one write, not one torch op per node
        self.ancestors[[i for i, line in enumerate(lines) for _ in line], [j for line in lines for j in line]] = True
        self._children: list[list[int]] = [[] for _ in range(n)]
        for i in range(1, n):
            self._children[parents[i]].append(i)

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> list[int]:
        return self._children[node]

    def to_dict(self, decode=None) -> dict:
        """JSON-friendly form (the demo draws it; `decode` maps a token id to text)."""
        tokens = self.tokens.tolist()
        return {"tokens": tokens, "parents": self.parents.tolist(), "scores": [round(s, 4) for s in self.scores.tolist()],
                "depths": self.depths.tolist(), **({"text": [decode([t]) for t in tokens]} if decode else {})}


class TreeGrower:
    """Bookkeeping of EAGLE-2 growth: the drafter supplies log-probabilities, this picks the nodes.

    Usage: `frontier = grower.expand([0], root_logp)`; run the drafter on `frontier`; then
    `frontier = grower.expand(frontier, logp)` for each further round; `grower.tree(total)`.
    """

    def __init__(self, root_token: int, top_k: int, stop_tokens: frozenset[int] = frozenset()):
        self.top_k = top_k
        self.stop_tokens = stop_tokens  # end-of-answer ids: such a node is kept as a leaf, never expanded
        self.tokens = [root_token]
        self.parents = [-1]
        self.scores = [0.0]
        self.depths = [0]

    def expand(self, nodes: list[int], logp: torch.Tensor, vocab: torch.Tensor | None = None) -> list[int]:
        """Add the top-k children of each node (logp: [len(nodes), V]); return the next frontier.
        `vocab` [V]: the token id of each logp column, for a reduced draft vocabulary.

        All k*k children become candidates; the best k of them by cumulative score (ties to the
        earlier one) that do not end the answer form the frontier that the drafter expands next:
        nothing after an end-of-answer token can be accepted, so it gets no children.
        """
        k = min(self.top_k, logp.shape[-1])
        child_logp, child_tokens = logp.float().topk(k, dim=-1)  # [n, k], sorted descending
        if vocab is not None:
            child_tokens = vocab[child_tokens]
        cumulative = [self.scores[node] + lp for node, row in zip(nodes, child_logp.tolist()) for lp in row]
        first = len(self.tokens)
        self.tokens += child_tokens.flatten().tolist()
        self.parents += [parent for parent in nodes for _ in range(k)]
        self.scores += cumulative
        self.depths += [self.depths[parent] + 1 for parent in nodes for _ in range(k)]
        open_ = [i for i in range(len(cumulative)) if self.tokens[first + i] not in self.stop_tokens]
        best = sorted(open_, key=cumulative.__getitem__, reverse=True)[: self.top_k]  # stable
        return [first + i for i in sorted(best)]

    def tree(self, total_tokens: int) -> DraftTree:
        """Keep the root and the `total_tokens` best candidates, re-indexed in creation order."""
        ranked = sorted(range(1, len(self.tokens)), key=lambda i: (-self.scores[i], i))
        kept = [0]
        kept_set = {0}
        for i in ranked:  # a parent ranks before its children (higher score, or equal and created earlier)
            if len(kept) > total_tokens:
                break
            if self.parents[i] in kept_set:
                kept.append(i)
                kept_set.add(i)
        kept.sort()
        index = {old: new for new, old in enumerate(kept)}
        return DraftTree(
            tokens=torch.tensor([self.tokens[i] for i in kept]),
            parents=torch.tensor([-1] + [index[self.parents[i]] for i in kept[1:]]),
            scores=torch.tensor([self.scores[i] for i in kept]),
        )
