"""`mmvsd bench batch_size=B`: the target alone and speculative decoding, each serving the same
requests B at a time through the same batched loop (`mmvsd.decoding.batch`).

All requests arrive at once, as in an offline evaluation: a request's time to first token and its
latency count from the start of the run (a request that waits for a free slot waits in them).
Throughput is every answer's tokens over the run's wall time, prefills included.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace

from tqdm import tqdm

from mmvsd import metrics
from mmvsd.bench import first_difference
from mmvsd.config import BenchConfig, is_greedy
from mmvsd.decoding.batch import BatchStep, batch_generate, batch_tree, check_batch_memory
from mmvsd.decoding.speculative import PHASES, Step
from mmvsd.drafters.oracle import OracleDrafter


def run_batched(cfg: BenchConfig, target, drafter, prompts: list, names: list[str], errors: list[dict]) -> dict:
    decode = replace(cfg.decode, tree=batch_tree(cfg.tree))
    check_batch_memory(target, prompts, decode, cfg.batch_size, drafting=True)
    if cfg.tree.auto:
        tree = decode.tree
        tqdm.write(f"batch_size={cfg.batch_size}: tree=auto sizes one sequence's trees; a batch drafts "
                   f"{tree.depth}/{tree.top_k}/{tree.total_tokens} (the short preset)", file=sys.stderr)
    warm = replace(decode, max_new_tokens=min(8, decode.max_new_tokens))
    oracle = drafter if isinstance(drafter, OracleDrafter) else None
    first = _answers(_timed(batch_generate(target, None, prompts[:1], warm, 1), 1)[0])  # one-off costs paid here
    if oracle:
        oracle.expect(first[0])
    list(batch_generate(target, drafter, prompts[:1], warm, 1))
    with tqdm(total=2 * len(prompts), desc=f"bench (batch_size={cfg.batch_size})", unit="answer", file=sys.stderr) as bar:
        baseline, base_times = _timed(batch_generate(target, None, prompts, decode, cfg.batch_size), len(prompts), bar)
        if oracle:
            for answer in _answers(baseline):
                oracle.expect(answer)
        speculative, spec_times = _timed(batch_generate(target, drafter, prompts, decode, cfg.batch_size),
                                         len(prompts), bar)
    return summarize_batched(cfg, decode, target, names, baseline, base_times, speculative, spec_times, errors)


def _timed(steps, n: int, bar=None) -> tuple[list[BatchStep], dict[str, list]]:
    """Run a batched loop to its end: its steps, and per request the seconds from the start to its
    first token (`first`) and to its last (`last`), and the run's wall time (`wall`)."""
    start = time.perf_counter()
    done, first, last = [], [None] * n, [0.0] * n
    for step in steps:
        now = time.perf_counter() - start
        done.append(step)
        for request, row in step.rows:
            if first[request] is None:
                first[request] = now
            last[request] = now
        if bar is not None:
            bar.update(len(step.finished))
    return done, {"first": first, "last": last, "wall": [time.perf_counter() - start]}


def _answers(steps: list[BatchStep]) -> list[list[int]]:
    n = 1 + max(request for step in steps for request, _ in step.rows)
    answers = [[] for _ in range(n)]
    for step in steps:
        for request, row in step.rows:
            answers[request] += row.tokens
    return answers


def _row_steps(steps: list[BatchStep]) -> list[Step]:
    return [row for step in steps for _, row in step.rows]


def summarize_batched(cfg: BenchConfig, decode, target, names: list[str], baseline: list[BatchStep], base_times: dict,
                      speculative: list[BatchStep], spec_times: dict, errors: list[dict]) -> dict:
    base_answers, spec_answers = _answers(baseline), _answers(speculative)
    greedy = is_greedy(decode.temperature)
    identical = [a == b for a, b in zip(base_answers, spec_answers)] if greedy else []
    base_tps = sum(map(len, base_answers)) / base_times["wall"][0]
    spec_tps = sum(map(len, spec_answers)) / spec_times["wall"][0]
    rows = _row_steps(speculative)
    verify_steps = [s for s in speculative if "verify" in s.phases]
    base_steps = [s for s in baseline if "verify" in s.phases]  # the target alone's decoding steps
    phases = {phase: metrics.median_ms([s.phases[phase] for s in verify_steps]) for phase in PHASES}
    tau = metrics.tau(rows)
    decode_tokens = {side: sum(len(r.tokens) for s in steps if "verify" in s.phases for _, r in s.rows)
                     for side, steps in (("base", baseline), ("spec", speculative))}
    decode_speedup = ((decode_tokens["spec"] / sum(s.seconds for s in verify_steps)) /
                      (decode_tokens["base"] / sum(s.seconds for s in base_steps)))
    step_ms = metrics.median_ms([s.seconds for s in base_steps])
    limit = tau * step_ms / (phases["verify"] + phases["draft"])
    return {
        "target": cfg.target, "drafter": cfg.drafter, "batch_size": cfg.batch_size,
        "speedup": spec_tps / base_tps,
        "tau": tau,
        "acceptance_by_depth": metrics.acceptance_by_depth(rows, decode.tree.depth),
        "baseline_tokens_per_s": base_tps,
        "speculative_tokens_per_s": spec_tps,
        "latency_s": {side: metrics.percentiles(times["last"]) for side, times in (("baseline", base_times),
                                                                            ("speculative", spec_times))},
        "time_to_first_token_s": {side: metrics.percentiles(times["first"]) for side, times in (("baseline", base_times),
                                                                                         ("speculative", spec_times))},
        "identical_outputs": all(identical) if identical else None,
        "divergence": [{"input": names[i], "position": first_difference(x, y), "top2_margin": float("nan")}
                       for i, (x, y, same) in enumerate(zip(base_answers, spec_answers, identical)) if not same],
        "n_prompts": len(names),
        "errors": errors,
        "decode_step_ms": step_ms,
        "verify_step_ms": phases["verify"],
        "draft_step_ms": phases["draft"],
        "step_ms": phases,
        "decode_speedup": decode_speedup,
        "speedup_limit": limit,
        "engine_efficiency": decode_speedup / limit,
        **metrics.trees(rows),
        "per_input": [{"input": name, "text": target.decode(answer), "tokens": len(answer),
                       "latency_s": spec_times["last"][i], "time_to_first_token_s": spec_times["first"][i],
                       "identical": identical[i] if identical else None}
                      for i, (name, answer) in enumerate(zip(names, spec_answers))],
        "config": {**asdict(cfg), "tree": asdict(decode.tree)},
    }


def batched_rows(report: dict, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The bench table of a batched run (`rows`: the lines it shares with batch size 1's: latency,
    identical outputs, tree)."""
    b = report["batch_size"]
    return [
        ("inputs", f"{report['n_prompts']} used, {len(report['errors'])} skipped; {b} at a time"),
        ("target alone", f"{report['baseline_tokens_per_s']:.1f} tokens/s in all (batched, batch_size={b})"),
        ("speculative", f"{report['speculative_tokens_per_s']:.1f} tokens/s in all"),
        ("speed-up", f"{report['speedup']:.2f}x throughput (decoding steps alone: {report['decode_speedup']:.2f}x)"),
        ("tau (incl. bonus)", f"{report['tau']:.2f} tokens per row per target forward"),
        ("acceptance by depth", " ".join(f"{a:.2f}" for a in report["acceptance_by_depth"])),
        *rows,
        ("decode step", f"{report['decode_step_ms']:.2f} ms (target alone, {b} rows x 1 token)"),
        ("verify step", f"{report['verify_step_ms']:.2f} ms ({b} rows x {report['tree_nodes']:.0f} tree tokens)"),
        ("step breakdown", " | ".join(f"{phase} {report['step_ms'][phase]:.2f}" for phase in PHASES) + " ms (medians)"),
        ("engine efficiency", f"{report['engine_efficiency']:.2f} = decode speed-up / (tau x t_decode / "
                              f"(t_verify + t_draft) = {report['speedup_limit']:.2f}x)"),
    ]
