"""`tree=auto`: each step's tree sized by expected accepted tokens per unit of measured time.

The objective is Sequoia's (Chen et al. 2024, arXiv 2402.12374): a step that drafts L levels and
verifies n draft tokens yields E(n) = 1 + the n best nodes' acceptance probabilities and costs
T(n, L) = t_draft_root + L t_draft_level + t_verify(n + 1) (`mmvsd.decoding.costs`); plain
decoding yields 1 token per t_decode. Trees grow EAGLE-2's way (Li et al. 2024, arXiv
2406.16858), ranked by the drafter's cumulative path probability, which is also the acceptance
estimate, scaled per depth by what verification actually accepted against what the drafter
predicted. Growth stops when the next level's expected gain (the frontier's acceptance times the
measured chance of going one deeper) would not raise E / T: the per-step dynamic depth of SGLang's
adaptive steps and of Dynamic Depth Decoding. The size verified is the n maximising E / T, 0
included.

Whether to draft at all: a tree that cannot beat plain decoding sends the loop to plain decoding
for a while (the wait doubling each time a tree fails again, so an always-wrong drafter costs a
few probes per answer at most). A wait begun in an earlier answer gives way to one tree once an
answer reaches `PROBE_AT` tokens: in a session that mixes one-word answers with long ones, trees
fail on the short ones (their first word missed) and would otherwise leave the long ones decoded
plainly; a session of short answers never reaches it, and an always-wrong drafter pays one tree
per long answer. And a sequence's first tree takes in all of its prompt's pairs,
which only pays when the answer goes on long enough: judged from the lengths of this session's
earlier answers, so a session of one-word answers stops drafting after its first.
"""

from __future__ import annotations

import math
from collections import deque

from mmvsd.decoding.costs import Costs
from mmvsd.decoding.tree import DraftTree, TreeGrower

DECAY = 0.9  # per observed step, of the evidence per depth: the last ~10 steps count most
PRIOR = 1.0  # pseudo-count of the evidence: until it arrives, the drafter's probabilities are trusted
SMOOTHING = 0.3  # weight of the newest step in the running speed-up estimate
FIRST_WAIT, LONGEST_WAIT = 4, 256  # plain steps before a tree is tried again, and the most that grows to
PROBE_AT = 8  # tokens into an answer at which a wait begun in an earlier answer gives way to one tree
HOPED_SPEEDUP = 2.0  # what a sequence's first tree is expected to win per token, until a tree has paid
LENGTHS_KEPT = 16  # earlier answers whose lengths predict how long this one goes on
ROW_REUSE = 16  # positions the context may grow before verification costs are looked up again


class AutoTree:
    """The tree shape handed to `Drafter.propose` under `tree=auto`, and the loop's adviser on
    whether to draft; one per session: what it learns about the drafter carries over."""

    def __init__(self, costs: Costs, top_k: int, depth: int, total_tokens: int):
        self.costs, self.top_k, self.depth, self.total_tokens = costs, top_k, depth, total_tokens
        size = depth + 2
        self.predicted = [PRIOR] * size  # [d]: decayed sum of the draft probabilities of verified depth-d nodes
        self.reached = [PRIOR] * size  # [d]: decayed count of those steps whose accepted path reached depth d
        self.tries = [PRIOR] * size  # [d]: decayed count of steps that drafted depth d and accepted d - 1 deep
        self.hits = [PRIOR] * size  # [d]: of those, the ones that accepted d deep
        self.speedup: float | None = None  # running estimate of a tree step's speed over plain decoding's
        self.paid = HOPED_SPEEDUP  # the estimate when trees last paid
        self.wait = self.waited = 0  # plain steps left before the next tree, and the length of the last wait
        self.answers = self.wait_began = 0  # answers ended so far, and how many had when the wait began
        self.tau = 1.0 + HOPED_SPEEDUP  # running tokens per tree step
        # One two-token answer seen: until real ones are, a sequence's first step decodes plainly, as
        # a one-word answer would end there (after it, with no known answer as long, trees are drafted).
        self.lengths: deque[int] = deque([2], maxlen=LENGTHS_KEPT)
        self.context = self.levels = 0  # of the step under way
        self.verify_at = self._verify_row(0)

    # ---------------------------------------------------------------- the loop's side

    def drafts(self, context: int, emitted: int, pending: int, budget: int) -> bool:
        """Draft a tree for the step after `context` cached positions, `emitted` tokens into the
        answer with `budget` more allowed, the drafter not having taken in `pending` pairs?"""
        self.context, self.levels = context, 0
        if abs(context - self.verify_at[0]) >= ROW_REUSE:  # interpolated once, not at every node of every level
            self.verify_at = self._verify_row(context)
        if self.wait and emitted >= PROBE_AT and self.wait_began < self.answers:  # once per answer (see above)
            self.wait, self.wait_began = 0, self.answers
        if self.wait:
            self.wait -= 1
            return False
        remaining = self._remaining(emitted, budget)
        speedup = self.paid * min(1.0, remaining / self.tau)  # a tree cannot emit more than the answer has left
        saved = remaining * self.costs.decode_s(context) * (1 - 1 / speedup)
        return saved > (pending - 1) * self.costs.draft_pair

    def observe(self, tree: DraftTree, path: list[int]) -> None:
        """Learn from a verified tree: acceptance per depth, and whether the step beat plain decoding."""
        accepted = len(path) - 1
        depths = tree.depths.tolist()
        drafted = [0.0] * (max(depths) + 1)
        for depth, score in zip(depths[1:], tree.scores[1:].tolist()):
            drafted[depth] += math.exp(score)
        for d in range(1, min(len(drafted), self.depth + 1)):
            self.predicted[d] = self.predicted[d] * DECAY + drafted[d]
            self.reached[d] = self.reached[d] * DECAY + (accepted >= d)
            if accepted >= d - 1:
                self.tries[d] = self.tries[d] * DECAY + 1
                self.hits[d] = self.hits[d] * DECAY + (accepted >= d)
        self.tau = (1 - SMOOTHING) * self.tau + SMOOTHING * len(path)
        speedup = len(path) * self.costs.decode_s(self.context) / self._seconds(len(tree) - 1, self.levels)
        fresh = self.speedup is None or self.waited  # the first tree after a wait starts a new estimate
        self.speedup = speedup if fresh else (1 - SMOOTHING) * self.speedup + SMOOTHING * speedup
        if self.speedup >= 1:
            self.waited, self.paid = 0, max(self.speedup, 1.0 + 1e-3)
        else:
            self.waited = self.wait = min(LONGEST_WAIT, 2 * self.waited or FIRST_WAIT)
            self.wait_began = self.answers

    def finish(self, length: int) -> None:
        """An answer of `length` tokens ended."""
        self.lengths.append(length)
        self.answers += 1

    def _remaining(self, emitted: int, budget: int) -> float:
        """Expected tokens still to come: from the earlier answers that went on past `emitted`
        (all of the budget when none did, or none are known yet)."""
        longer = [length - emitted for length in self.lengths if length > emitted]
        return min(budget, sum(longer) / len(longer)) if longer else budget

    # ---------------------------------------------------------------- the drafter's side

    def grows(self, grower: TreeGrower, frontier: list[int], depth: int) -> bool:
        """Draft level `depth` (the children of `frontier`)? Yes when its expected gain, per the
        time it and the verification of its best children add, beats the best tree so far."""
        if depth >= self.depth:
            return False
        p = self._estimates(grower)
        gain, seconds, n = self._best(grower, p)
        deeper = self.hits[depth + 1] / self.tries[depth + 1]  # chance of going one deeper, once at `depth`
        more = deeper * sum(p[i] for i in frontier)
        verify = self.verify_at[1]
        extra = self.costs.draft_level + verify[min(n + len(frontier), len(verify) - 1)] - verify[n]
        if (gain + more) * seconds <= gain * (seconds + extra):
            return False
        self.levels = depth
        return True

    def size(self, grower: TreeGrower) -> int:
        """Draft tokens to verify: the n best by score that maximise expected tokens per second."""
        return self._best(grower, self._estimates(grower))[2]

    # ---------------------------------------------------------------- estimates

    def _estimates(self, grower: TreeGrower) -> list[float]:
        """Acceptance probability of every drafted node (the root: 1): its path probability under
        the drafter, scaled by what verification accepted at its depth against what it predicted."""
        scale = [r / p for r, p in zip(self.reached, self.predicted)]
        return [1.0] + [min(1.0, math.exp(s) * scale[min(d, self.depth)])
                        for s, d in zip(grower.scores[1:], grower.depths[1:])]

    def _best(self, grower: TreeGrower, p: list[float]) -> tuple[float, float, int]:
        """(expected tokens, seconds, n) of the best tree of the n top-scored nodes drafted so far,
        `p` their acceptance estimates."""
        ranked = sorted(range(1, len(p)), key=lambda i: (-grower.scores[i], i))[: self.total_tokens]
        best = (1.0, self._seconds(0, self.levels), 0)
        tokens = 1.0
        for n, i in enumerate(ranked, start=1):
            tokens += p[i]
            seconds = self._seconds(n, self.levels)
            if tokens * best[1] > best[0] * seconds:
                best = (tokens, seconds, n)
        return best

    def _verify_row(self, context: int) -> tuple[int, list[float]]:
        """(context, [t_verify(n + 1) for every n a step can verify or consider])."""
        return context, [self.costs.verify_s(n + 1, context) for n in range(self.total_tokens + self.top_k + 1)]

    def _seconds(self, n: int, levels: int) -> float:
        c, verify = self.costs, self.verify_at[1]
        return c.draft_root + levels * c.draft_level + verify[min(n, len(verify) - 1)]
