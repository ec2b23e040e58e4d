"""The decoding loop, as a generator of steps shared by the bench, lmms-eval plugin and demo.

speculative_generate: prefill -> (propose a tree -> verify it in one target pass -> commit the
accepted path -> hand the drafter the new pairs) until EOS or max_new_tokens.
autoregressive_generate: the target alone, one token per forward, through the same adapter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from mmvsd.config import DecodeConfig, TreeConfig
from mmvsd.decoding.tree import DraftTree
from mmvsd.decoding.verify import logits_to_probs, sample, verify_greedy, verify_stochastic
from mmvsd.models.llava import LlavaTarget, PrefillOutput, Prompt


class Drafter(Protocol):
    """Proposes a draft tree after each verification.

    Features pair up with the next token as in EAGLE: `features[i]` is the target's hidden state
    at the position *before* `tokens[i]`, so a call with the pairs (f_{t-1}, x_t) ... ends on the
    newest emitted token, which becomes the tree's root.
    """

    kind: str

    def begin(self, input_ids: torch.Tensor, prefill: PrefillOutput) -> None:
        """Start a new sequence (drop any state of the previous one)."""

    def propose(self, features: torch.Tensor, tokens: torch.Tensor, tree: TreeConfig) -> DraftTree:
        """Take in the new (feature, token) pairs [n, H], [n]; return a tree rooted at tokens[-1]."""


@dataclass
class Step:
    """One target forward pass and what it emitted."""

    tokens: list[int]  # emitted by this step, cut at EOS / max_new_tokens
    seconds: float  # wall time of the whole step (drafting + verification)
    tree: DraftTree | None = None  # None for the prefill step and for autoregressive steps
    path: list[int] | None = None  # accepted node indices, root (0) first
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def accepted(self) -> int:
        """Draft tokens accepted (the bonus token excluded)."""
        return 0 if self.path is None else len(self.path) - 1


class _Output:
    """Stop rules shared by both loops: EOS, and the max_new_tokens budget."""

    def __init__(self, target: LlavaTarget, cfg: DecodeConfig):
        self.eos, self.budget, self.done = target.eos_token_ids, cfg.max_new_tokens, False

    def take(self, tokens: list[int]) -> list[int]:
        kept = []
        for token in tokens[: self.budget]:
            kept.append(token)
            if token in self.eos:
                self.done = True
                break
        self.budget -= len(kept)
        self.done |= self.budget <= 0
        return kept


def speculative_generate(target: LlavaTarget, drafter: Drafter, prompt: Prompt,
                         cfg: DecodeConfig) -> Iterator[Step]:
    generator = torch.Generator().manual_seed(cfg.seed)
    output = _Output(target, cfg)
    start = time.perf_counter()
    prefill = target.prefill(prompt)  # logits [V], hidden [T, H]
    root = sample(prefill.logits, cfg.temperature, cfg.top_p, generator)
    yield Step(output.take([root]), time.perf_counter() - start)
    drafter.begin(prompt.input_ids, prefill)
    features = prefill.hidden  # pairs (f_{t-1}, x_t) for t = 1 .. T, ending on the root
    tokens = torch.cat([prompt.input_ids[1:], torch.tensor([root], device=prompt.input_ids.device)])
    while not output.done:
        start = time.perf_counter()
        tree = drafter.propose(features, tokens, cfg.tree)  # tree.tokens[0] == root
        drafted = time.perf_counter()
        logits, hidden = target.forward(tree.tokens.to(target.device), tree.depths.to(target.device),
                                        tree.ancestors)  # [N, V], [N, H]
        if cfg.temperature == 0:
            path, bonus = verify_greedy(tree, logits)
        else:
            probs = logits_to_probs(logits.cpu(), cfg.temperature, cfg.top_p)  # the sampler's generator lives on the CPU
            path, bonus = verify_stochastic(tree, probs, generator)
        target.commit(len(tree), torch.tensor(path))
        new = tree.tokens[path[1:]].tolist() + [bonus]
        now = time.perf_counter()
        yield Step(output.take(new), now - start, tree, path, drafted - start, now - drafted)
        features = hidden[path]  # features of root .. last accepted node, each paired with the next token
        tokens = torch.tensor(new, device=features.device)


def autoregressive_generate(target: LlavaTarget, prompt: Prompt, cfg: DecodeConfig) -> Iterator[Step]:
    generator = torch.Generator().manual_seed(cfg.seed)
    output = _Output(target, cfg)
    start = time.perf_counter()
    token = sample(target.prefill(prompt).logits, cfg.temperature, cfg.top_p, generator)
    yield Step(output.take([token]), time.perf_counter() - start)
    depth0 = torch.zeros(1, dtype=torch.long, device=target.device)
    while not output.done:
        start = time.perf_counter()
        logits, _ = target.forward(torch.tensor([token], device=target.device), depth0)  # [1, V]
        token = sample(logits[0], cfg.temperature, cfg.top_p, generator)
        yield Step(output.take([token]), time.perf_counter() - start)


def collect_tokens(steps: Iterator[Step]) -> list[int]:
    """Run a step generator to the end and return all emitted token ids."""
    return [token for step in steps for token in step.tokens]
