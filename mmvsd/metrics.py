"""Speculative decoding metrics: pure functions over decoding steps.

Conventions: tau is the mean number of tokens emitted per verification step
*including* the bonus token (vLLM/SGLang "acceptance length"); EAGLE, MSD and ViSpec papers report
accepted draft tokens *excluding* it, which is tau - 1. Acceptance at depth d is the share of
steps whose accepted path reached depth d (unconditional, as vLLM counts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import median, quantiles

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


def trees(steps: Iterable[Step]) -> dict[str, float]:
    """The trees speculative runs verified (their steps, prefill steps included): mean tokens per
    tree (root included) and mean depth (0 with none), and how many decoding steps verified no tree
    (`plain_steps`: tree=auto decoding plainly) of all decoding steps."""
    steps = list(steps)
    verified = verify_steps(steps)
    decoding = [s for s in steps if "prefill" not in s.phases]
    n = max(1, len(verified))
    return {"tree_nodes": sum(len(s.tree) for s in verified) / n,
            "tree_depth": sum(int(s.tree.depths.max()) for s in verified) / n,
            "plain_steps": len(decoding) - len(verified), "steps": len(decoding)}


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("nan")


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 and p90 (inclusive quantiles) of per-request times."""
    p90 = quantiles(seconds, n=10, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    return {"p50": median(seconds), "p90": p90}


def median_ms(values: Sequence[float]) -> float:
    return 1000 * median(values) if values else float("nan")


def engine_efficiency(baselines: Sequence[Sequence[Step]], speculatives: Sequence[Sequence[Step]]) -> dict[str, float]:
    """How close the engine comes to the method's speed limit, decoding only (prefill steps left out).

    The limit: each verification costs t_verify + t_draft and yields tau tokens, where the target
    alone pays t_decode per token, so speed-up <= tau x t_decode / (t_verify + t_draft) (medians of
    the same run). What the engine adds on top (tree masks, acceptance, commits, bookkeeping)
    makes `engine_efficiency` = measured decode speed-up / limit fall below 1.
    """
    base = [s for steps in baselines for s in steps[1:]]
    spec = [s for steps in speculatives for s in steps[1:]]
    if not base or not spec:
        return {"decode_speedup": float("nan"), "speedup_limit": float("nan"), "engine_efficiency": float("nan")}
    speedup = tokens_per_second(sum(len(s.tokens) for s in spec), sum(s.seconds for s in spec)) / \
        tokens_per_second(sum(len(s.tokens) for s in base), sum(s.seconds for s in base))
    t_decode = median(s.seconds for s in base)
    verified = verify_steps(spec)  # under tree=auto some steps decode plainly
    if not verified:
        return {"decode_speedup": speedup, "speedup_limit": float("nan"), "engine_efficiency": float("nan")}
    limit = tau(spec) * t_decode / (median(s.phases["verify"] for s in verified) + median(s.phases["draft"] for s in verified))
    return {"decode_speedup": speedup, "speedup_limit": limit, "engine_efficiency": speedup / limit}
