"""The oracle drafter: an instrument that isolates the engine from the drafter.

It proposes the target's own greedy continuation (which the bench computes first, running the
target alone) as a chain of `tree.depth` tokens, at no drafting cost. With `accept=1` every
proposal is right; with `accept=p` each proposed token is swapped for another with probability
1 - p, so tau can be set (a chain of depth D then accepts 1 + p + ... + p^D tokens on average).
Whatever it proposes, the target verifies it, so outputs stay exactly the target's; any gap
between the measured speed-up and tau x t_decode / t_verify is the engine's own overhead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from mmvsd.decoding.drafting import TreeShape
from mmvsd.decoding.tree import DraftTree
from mmvsd.models.llava import PrefillOutput


@dataclass
class OracleState:
    emitted: int  # tokens generated so far, counted by the pairs taken in (negative until the prompt's are in)
    continuation: list[int]  # the target's greedy output for this sequence


class OracleDrafter:
    kind = "oracle"

    def __init__(self, vocab_size: int, accept: float = 1.0, seed: int = 0):
        self.vocab_size, self.accept = vocab_size, accept
        self.generator = torch.Generator().manual_seed(seed)
        self.expected: deque[list[int]] = deque()
        self.continuation: list[int] = []

    def expect(self, continuation: list[int]) -> None:
        """The target's greedy output for the next prompt to begin (its first token included);
        several queue up, in the order their sequences begin (a batch's rows)."""
        self.expected.append(list(continuation))

    def begin(self, input_ids: torch.Tensor, prefill: PrefillOutput) -> OracleState:
        if self.expected:
            self.continuation = self.expected.popleft()
        return OracleState(-len(input_ids) + 1, self.continuation)  # the first pairs are the prompt's, then the root

    def propose(self, state: OracleState, features: torch.Tensor, tokens: torch.Tensor, tree: TreeShape) -> DraftTree:
        state.emitted += len(tokens)  # tokens [n] end on the root: the newest emitted token
        guess = torch.tensor(state.continuation[state.emitted: state.emitted + tree.depth], dtype=torch.long)
        wrong = torch.rand(len(guess), generator=self.generator) >= self.accept
        other = torch.randint(1, self.vocab_size, (len(guess),), generator=self.generator)
        guess = torch.where(wrong, (guess + other) % self.vocab_size, guess)  # a different token, uniformly
        return DraftTree(tokens=torch.cat([tokens[-1:].cpu(), guess]), parents=torch.arange(-1, len(guess)),
                         scores=torch.zeros(len(guess) + 1))

    # batched decoding (`mmvsd.decoding.batch`): a list of row states; nothing to batch without a network

    def new_batch(self) -> list[OracleState]:
        return []

    def join(self, batch: list[OracleState], state: OracleState, features: torch.Tensor, tokens: torch.Tensor) -> None:
        state.emitted += len(tokens)
        batch.append(state)

    def leave(self, batch: list[OracleState], rows: list[int]) -> None:
        batch[:] = [batch[r] for r in rows]

    def propose_batch(self, batch: list[OracleState], features: list[torch.Tensor], tokens: list[torch.Tensor],
                      tree: TreeShape) -> list[DraftTree]:
        return [self.propose(*row, tree) for row in zip(batch, features, tokens)]
