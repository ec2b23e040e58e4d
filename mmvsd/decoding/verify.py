"""Verification of a draft tree against the target's logits: which path is accepted, and the bonus token.

Both verifiers return `(path, bonus)`: `path` lists node indices from the root (node 0) down the
accepted branch, and `bonus` is the target's own token after it.
"""

from __future__ import annotations

import torch

from mmvsd.config import DecodeConfig, is_greedy
from mmvsd.decoding.tree import DraftTree


def logits_to_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """The target's sampling distribution [..., V], as `generate(do_sample=True)` draws it:
    temperature, then top-k, then top-p (nucleus), each with transformers' own tie rules."""
    scores = logits.float() / temperature
    if top_k > 0:  # every token scoring below the k-th best goes (ties at the k-th all stay)
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:  # the low tail holding at most 1 - top_p of the mass goes, never the best token
        ascending, order = torch.sort(scores, descending=False)
        tail = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        tail[..., -1] = False
        scores = scores.masked_fill(tail.scatter(-1, order, tail), -float("inf"))
    return scores.softmax(dim=-1)


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Follow the child equal to the target's argmax at each node (logits: [N, V])."""
    target_next = logits.argmax(-1).tolist()  # [N]
    tokens = tree.tokens.tolist()
    path = [0]
    while True:
        want = target_next[path[-1]]
        match = next((c for c in tree.children(path[-1]) if tokens[c] == want), None)
        if match is None:
            return path, want
        path.append(match)


def verify_stochastic(tree: DraftTree, probs: torch.Tensor, generator: torch.Generator) -> tuple[list[int], int]:
    """Lossless multi-candidate rejection sampling over the tree (probs: [N, V], the target's).

    The tree is a deterministic function of the context (top-k drafting), so each candidate's
    draft probability is 1 and the draft distribution drops out: at a node, visit the children in
    order and accept child c with probability p(c) under the current residual p; on rejection set
    p(c) = 0 and renormalise; if every child is rejected, sample from the residual. This draws
    from p without replacement in a fixed order, so the emitted token is distributed exactly as p
    (SpecInfer, Miao et al. 2024; EAGLE's q = 1 tree sampling).
    """
    tokens = tree.tokens.tolist()
    path = [0]
    while True:
        p = probs[path[-1]].clone()
        accepted = None
        for child in tree.children(path[-1]):
            token = tokens[child]
            if p[token] <= 0:
                continue
            if torch.rand((), generator=generator) < p[token]:
                accepted = child
                break
            p[token] = 0.0
            mass = p.sum()
            if mass <= 0:  # only rounding can leave nothing: the rejected token held all the mass
                accepted = child
                break
            p /= mass
        if accepted is None:
            return path, int(torch.multinomial(p, 1, generator=generator))
        path.append(accepted)


def sample(logits: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator) -> int:
    """One token from the target's logits [V] under `cfg`'s temperature, top_k and top_p (argmax
    when greedy)."""
    if is_greedy(cfg.temperature):
        return int(logits.argmax())
    probs = logits_to_probs(logits.cpu(), cfg.temperature, cfg.top_p, cfg.top_k)  # the generator lives on the CPU
    return int(torch.multinomial(probs, 1, generator=generator))
