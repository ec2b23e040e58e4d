"""The decoding loop, as a generator of steps shared by the bench, lmms-eval plugin and demo.

speculative_generate: prefill -> (propose a tree -> verify it in one target pass -> commit the
accepted path -> hand the drafter the new pairs) until EOS or max_new_tokens.
autoregressive_generate: the target alone, one token per forward, through the same adapter.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from mmvsd.config import DecodeConfig
from mmvsd.decoding.tree import DraftTree
from mmvsd.decoding.verify import logits_to_probs, sample, verify_greedy, verify_stochastic
from mmvsd.drafters.base import Drafter, make_pairs
from mmvsd.models.llava import LlavaTarget, Prompt


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
    state = drafter.begin(prompt.input_ids, prefill)
    features, tokens = make_pairs(prefill.hidden, torch.cat([prompt.input_ids, prompt.input_ids.new_tensor([root])]))
    while not output.done:  # the newest pair always ends on the newest token: the next tree's root
        start = time.perf_counter()
        tree = drafter.propose(state, features, tokens, cfg.tree)  # tree.tokens[0] == root
        drafted = time.perf_counter()
        logits, hidden = target.forward(tree.tokens.to(target.device), tree.depths.to(target.device),
                                        tree.ancestors)  # [N, V], [N, H]
        if cfg.temperature == 0:
            path, bonus = verify_greedy(tree, logits)
        else:
            probs = logits_to_probs(logits.cpu(), cfg.temperature, cfg.top_p)  # the sampler's generator lives on the CPU
            path, bonus = verify_stochastic(tree, probs, generator)
        target.commit(len(tree), torch.tensor(path))
        kept = tree.tokens[path].tolist() + [bonus]  # the root, the accepted nodes, the bonus token
        now = time.perf_counter()
        yield Step(output.take(kept[1:]), now - start, tree, path, drafted - start, now - drafted)
        features, tokens = make_pairs(hidden[path], torch.tensor(kept, device=hidden.device))


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


def collect_tokens(steps: Iterable[Step]) -> list[int]:
    """All token ids emitted by a run's steps (running a step generator to its end)."""
    return [token for step in steps for token in step.tokens]
