"""Speculative decoding metrics: pure functions over decoding steps.

Conventions: tau is the mean number of tokens emitted per verification step
*including* the bonus token (vLLM/SGLang "acceptance length"); EAGLE, MSD and ViSpec papers report
accepted draft tokens *excluding* it, which is tau - 1. Acceptance at depth d is the share of
steps whose accepted path reached depth d (unconditional, as vLLM counts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import median

from mmvsd.decoding.speculative import Step


def verify_steps(steps: Iterable[Step]) -> list[Step]:
    return [s for s in steps if s.tree is not None]


def tau(steps: Iterable[Step]) -> float:
    """Mean tokens per verification step, bonus included (1.0 = no draft token ever accepted)."""
    verified = verify_steps(steps)
    return sum(s.accepted + 1 for s in verified) / len(verified) if verified else float("nan")


def acceptance_by_depth(steps: Iterable[Step], depth: int) -> list[float]:
    """[d-1] = share of verification steps that accepted at least d draft tokens, d = 1..depth."""
    verified = verify_steps(steps)
    if not verified:
        return [float("nan")] * depth
    return [sum(s.accepted >= d for s in verified) / len(verified) for d in range(1, depth + 1)]


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("nan")


def median_ms(values: Sequence[float]) -> float:
    return 1000 * median(values) if values else float("nan")
