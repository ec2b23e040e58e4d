"""The decoding loop, as a generator of steps shared by the bench, lmms-eval plugin and demo.

speculative_generate: prefill -> (propose a tree -> verify it in one target pass -> commit the
accepted path -> hand the drafter the new pairs) until EOS or max_new_tokens; under `tree=auto` a
step whose best tree would not pay decodes plainly instead, and the drafter catches up later.
autoregressive_generate: the target alone, one token per forward, through the same adapter.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mmvsd.config import DecodeConfig, TreeConfig, is_greedy
from mmvsd.decoding.auto import AutoTree
from mmvsd.decoding.costs import device_wait, load_costs
from mmvsd.decoding.tree import DraftTree
from mmvsd.decoding.verify import logits_to_probs, sample, verify_greedy, verify_stochastic
from mmvsd.decoding.drafting import Drafter, make_pairs
from mmvsd.models.llava import LlavaTarget, PrefillOutput, Prompt


PHASES = ("draft", "tree", "verify", "accept", "commit", "other")  # of a speculative step, in order
# (a step that decodes plainly under tree=auto has one phase, "decode"; the prefill step, "prefill")


@dataclass
class Step:
    """One target forward pass and what it emitted."""

    tokens: list[int]  # emitted by this step, cut at EOS / max_new_tokens
    seconds: float  # wall time of the whole step
    tree: DraftTree | None = None  # None for the prefill step and for plain decoding steps
    path: list[int] | None = None  # accepted node indices, root (0) first
    phases: dict[str, float] = field(default_factory=dict)  # seconds per PHASES entry (speculative steps)

    @property
    def accepted(self) -> int:
        """Draft tokens accepted (the bonus token excluded)."""
        return 0 if self.path is None else len(self.path) - 1


class _Clock:
    """Seconds per phase of a step. On a GPU it waits for the device at each lap, so a phase owns
    the kernels it launched (otherwise the first phase that reads a result pays for them all)."""

    def __init__(self, device: torch.device):
        self.wait = device_wait(device)
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        self.wait()
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.start


class _Output:
    """Stop rules shared by both loops: EOS, and the max_new_tokens budget."""

    def __init__(self, target: LlavaTarget, cfg: DecodeConfig):
        self.eos, self.budget, self.done = target.eos_token_ids, cfg.max_new_tokens, False
        self.emitted = 0

    def take(self, tokens: list[int]) -> list[int]:
        kept = []
        for token in tokens[: self.budget]:
            kept.append(token)
            if token in self.eos:
                self.done = True
                break
        self.budget -= len(kept)
        self.emitted += len(kept)
        self.done |= self.budget <= 0
        return kept


@dataclass
class Dialogue:
    """What a turn of a conversation leaves to the next (the target's KV cache stays in the
    target): the drafter's state and the pairs it has not taken in yet, features [n, H] and tokens
    [n + 1] ending on the answer's last token, which is not in the cache yet. Pass one object to
    every turn's loop; a later turn's prompt comes from `LlavaTarget.encode_turn`."""

    state: Any = None
    hidden: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    auto: AutoTree | None = None  # tree=auto's chooser, made at the first turn (later ones must not recalibrate:
    #                               calibrating runs the target, whose cache holds the conversation)

    @property
    def started(self) -> bool:
        return self.kept is not None


def _open(target: LlavaTarget, prompt: Prompt, dialogue: Dialogue | None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PrefillOutput | None]:
    """The first forward of a turn: the prefill of image + prompt, or, in a started dialogue, the
    previous answer's last token (an EOS added when the answer was cut short, as the chat format
    closes every answer with one) and the new turn's tokens after the cached conversation. Returns
    the next-token logits [V], the hidden states of the new positions [T, H] and the tokens [T]
    they belong to, and the prefill (None for a later turn)."""
    if dialogue is None or not dialogue.started:
        prefill = target.prefill(prompt)
        return prefill.logits, prefill.hidden, prompt.input_ids, prefill
    last = dialogue.kept[-1:].to(target.device)
    close = [] if int(last) in target.eos_token_ids else [min(target.eos_token_ids)]
    chain = torch.cat([last, last.new_tensor(close), prompt.input_ids.to(target.device)])
    logits, hidden = target.forward(chain, torch.arange(len(chain)))  # [T, V], [T, H]
    return logits[-1], hidden, chain, None


def speculative_generate(target: LlavaTarget, drafter: Drafter, prompt: Prompt, cfg: DecodeConfig,
                         auto: AutoTree | None = None, dialogue: Dialogue | None = None) -> Iterator[Step]:
    """Under `cfg.tree.auto`, `auto` sizes each tree (pass one per session: it learns the drafter's
    acceptance and answer lengths; made here, from the cached or a fresh calibration, when not
    given); a fixed tree ignores it. `dialogue`: this answer is a turn of that conversation."""
    generator = torch.Generator().manual_seed(cfg.seed)
    output = _Output(target, cfg)
    if not cfg.tree.auto:
        auto = None
    elif auto is None:
        auto = dialogue.auto if dialogue is not None and dialogue.auto else tree_chooser(target, drafter, prompt, cfg.tree)
    shape = auto or cfg.tree
    clock = _Clock(target.device)
    logits, hidden, ids, prefill = _open(target, prompt, dialogue)  # [V], [T, H], [T]
    root = sample(logits, cfg, generator)
    clock.lap("prefill")
    yield Step(output.take([root]), clock.total, phases=clock.phases)
    # the pairs the drafter has not taken in yet: features [n, H] and tokens [n + 1], ending on the root
    if prefill is not None:
        state = drafter.begin(prompt.input_ids, prefill)
        kept = torch.cat([ids, ids.new_tensor([root])])
    else:  # ids[0] is the previous answer's last token, the end of dialogue.kept
        state, hidden = dialogue.state, torch.cat([dialogue.hidden, hidden])
        kept = torch.cat([dialogue.kept.to(ids.device), ids[1:], ids.new_tensor([root])])
    past_end = 0  # tokens the last tree accepted after the answer ended (at EOS or the budget)
    while not output.done:
        clock = _Clock(target.device)
        if auto is not None and not auto.drafts(target.cache.get_seq_length(), output.emitted, len(hidden), output.budget):
            logits, new_hidden = target.forward(kept[-1:], torch.zeros(1, dtype=torch.long))  # [1, V], [1, H]
            token = sample(logits[0], cfg, generator)  # no tree paid: plain decoding
            hidden, kept = torch.cat([hidden, new_hidden]), torch.cat([kept, kept.new_tensor([token])])
            clock.lap("decode")
            yield Step(output.take([token]), clock.total, phases=clock.phases)
            continue
        features, tokens = make_pairs(hidden, kept)
        tree = drafter.propose(state, features, tokens, shape)  # tree.tokens[0] == root
        clock.lap("draft")
        positions, mask = target.tree_inputs(tree.depths, tree.ancestors)
        clock.lap("tree")
        logits, hidden = target.verify(tree.tokens, positions, mask)  # [N, V], [N, H]
        clock.lap("verify")
        if is_greedy(cfg.temperature):
            path, bonus = verify_greedy(tree, logits)
        else:
            probs = logits_to_probs(logits.cpu(), cfg.temperature, cfg.top_p, cfg.top_k)  # the generator lives on the CPU
            path, bonus = verify_stochastic(tree, probs, generator)
        clock.lap("accept")
        target.commit(len(tree), torch.tensor(path))
        clock.lap("commit")
        if auto is not None:
            auto.observe(tree, path)
        hidden, kept = hidden[path], torch.tensor(tree.tokens[path].tolist() + [bonus], device=hidden.device)
        emitted = output.take(kept[1:].tolist())  # the root was emitted by the step before
        past_end = len(kept) - 1 - len(emitted)
        clock.lap("other")
        yield Step(emitted, clock.total, tree, path, clock.phases)
    if auto is not None:
        auto.finish(output.emitted)
    if dialogue is not None:  # the conversation goes on from the answer's last token: forget what came after it
        target.commit(past_end, torch.arange(0))  # of the last `past_end` cached positions, keep none
        dialogue.state, dialogue.hidden, dialogue.kept = state, hidden[:len(hidden) - past_end], kept[:len(kept) - past_end]
        dialogue.auto = auto


def tree_chooser(target: LlavaTarget, drafter: Drafter, prompt: Prompt, tree: TreeConfig) -> AutoTree:
    """`tree=auto`'s chooser for this target and drafter: costs from the cache under $MMVSD_HOME, or
    measured now on `prompt` (seconds)."""
    return AutoTree(load_costs(target, drafter, prompt, tree.top_k), tree.top_k, tree.depth, tree.total_tokens)


def autoregressive_generate(target: LlavaTarget, prompt: Prompt, cfg: DecodeConfig,
                            dialogue: Dialogue | None = None) -> Iterator[Step]:
    """The target alone; `dialogue`: as in `speculative_generate` (only its last token is used)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    output = _Output(target, cfg)
    start = time.perf_counter()
    token = sample(_open(target, prompt, dialogue)[0], cfg, generator)
    yield Step(output.take([token]), time.perf_counter() - start)
    depth0 = torch.zeros(1, dtype=torch.long, device=target.device)
    while not output.done:
        start = time.perf_counter()
        logits, _ = target.forward(torch.tensor([token], device=target.device), depth0)  # [1, V]
        token = sample(logits[0], cfg, generator)
        yield Step(output.take([token]), time.perf_counter() - start)
    if dialogue is not None:
        dialogue.kept = torch.tensor([token])


def collect_tokens(steps: Iterable[Step]) -> list[int]:
    """All token ids emitted by a run's steps (running a step generator to its end)."""
    return [token for step in steps for token in step.tokens]
