"""`python -m mmvsd.bench`: the target alone vs speculative decoding, on the same inputs, in one process.

Prints a table and (with json=OUT) writes speedup, tau (bonus token included), tokens/s of both,
whether greedy outputs are identical (and where they first differ, with the target's top-2 logit
margin there), per-depth acceptance, each speculative step broken down (draft, tree, verify,
accept, commit, other), engine_efficiency, and a clear error for every input that could not be
used. Examples:

    python -m mmvsd.bench target=tiny-random drafter=eagle data=inputs.jsonl json=out.json
    python -m mmvsd.bench target=random:llava-1.5-7b target_layers=2 drafter=oracle data=long.jsonl tree.depth=6
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from mmvsd import cli, metrics
from mmvsd.bench_peer import assisted_peer, load_assistant
from mmvsd.checks import check_device, check_output_file
from mmvsd.config import BenchConfig, is_greedy
from mmvsd.data.requests import Request, builtin_requests, read_requests
from mmvsd.decoding import Step, autoregressive_generate, collect_tokens, speculative_generate
from mmvsd.decoding.speculative import PHASES, Dialogue, tree_chooser
from mmvsd.drafters.oracle import OracleDrafter
from mmvsd.errors import UserError


@dataclass
class Result:
    name: str
    prompt: str
    prompt_tokens: int  # image tokens included: the context the answer starts from (a later turn: the conversation's)
    text: str  # the speculative answer
    identical: bool | None  # greedy only: same tokens as the target alone
    divergence: dict | None  # greedy, when not identical: where and how close the target's top two logits were
    tau: float
    baseline_s: float
    speculative_s: float
    baseline: list[Step] = field(repr=False)
    speculative: list[Step] = field(repr=False)
    turn: int = 1  # the answer's turn in its conversation
    topic: str | None = None

    @property
    def n_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.speculative)

    @property
    def n_base_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.baseline)

    def to_dict(self) -> dict:
        return {"input": self.name, "prompt": self.prompt, "prompt_tokens": self.prompt_tokens, "text": self.text,
                "tokens": self.n_tokens, "turn": self.turn, "topic": self.topic,
                "identical": self.identical, "divergence": self.divergence, "tau": self.tau, "baseline_s": self.baseline_s,
                "speculative_s": self.speculative_s}


def run_bench(cfg: BenchConfig) -> dict:
    from mmvsd.drafters import drafter_kind, load_drafter
    from mmvsd.models import load_target

    check_device(cfg.device)
    if cfg.json:
        check_output_file(cfg.json, "json")
    if cfg.data:
        requests, in_file = read_requests(cfg.data, cfg.n)
        if len(requests) < in_file:
            tqdm.write(f"data {cfg.data}: the first {len(requests)} of its {in_file} inputs (n={cfg.n})", file=sys.stderr)
    else:
        requests = builtin_requests(cfg.n or 8, cfg.seed)
        in_file = None
    check_draft_vocab(cfg)
    if cfg.vispec_image == "text" and (cfg.drafter == "oracle" or drafter_kind(cfg.drafter) != "vispec"):
        raise UserError(f"vispec_image=text applies to ViSpec drafters; drafter {cfg.drafter} is not one")
    target = load_target(cfg.target, cfg.dtype, cfg.device, cfg.download, cfg.target_layers, cfg.vision_layers)
    if cfg.head_fp32:
        target.use_fp32_head()
    drafter = (OracleDrafter(target.vocab_size, cfg.oracle.accept, cfg.seed) if cfg.drafter == "oracle"
               else load_drafter(cfg.drafter, target, cfg.seed, untrained_draft_vocab(cfg, target)))
    if cfg.vispec_image == "text":
        drafter.reads_image = False
    assistant = load_assistant(cfg, target) if cfg.assistant else None  # refused before any timing
    prompts = []
    for request in requests:
        if request.error is None and cfg.batch_size > 1 and len(request.turns) > 1:
            request.error = (f"{request.name}: {len(request.turns)} turns; conversations are decoded one at a time "
                             "(batch_size=1)")
        if request.error is None:
            try:
                prompts.append((request, target.encode(request.image, request.prompt, cfg.max_new_tokens)))
            except UserError as e:
                request.error = f"{request.name}: {e}"
    errors = [{"input": r.name, "error": r.error} for r in requests if r.error]
    for error in errors:
        tqdm.write(f"skipped: {error['error']}", file=sys.stderr)
    if not prompts:
        raise UserError(f"none of the {len(requests)} inputs could be used: {errors[0]['error']}")
    if cfg.batch_size > 1:
        from mmvsd.bench_batch import run_batched

        return {**run_batched(cfg, target, drafter, [p for _, p in prompts], [r.name for r, _ in prompts], errors),
                "inputs_in_file": in_file}

    decode = cfg.decode
    auto = tree_chooser(target, drafter, prompts[0][1], cfg.tree) if cfg.tree.auto else None  # calibrates once
    warm = replace(decode, max_new_tokens=min(8, decode.max_new_tokens), tree=replace(cfg.tree, auto=False))
    expect = drafter.expect if isinstance(drafter, OracleDrafter) else lambda tokens: None
    expect(collect_tokens(autoregressive_generate(target, prompts[0][1], warm)))  # first calls pay one-off costs
    list(speculative_generate(target, drafter, prompts[0][1], warm))

    results = []
    for request, prompt in tqdm(prompts, desc="bench", unit="input", file=sys.stderr):
        results += conversation(cfg, target, drafter, auto, request, prompt, errors)
    report = {**summarize(cfg, results, errors), "inputs_in_file": in_file}
    if auto is not None:
        report["auto_costs_ms"] = auto_costs(auto, len(prompts[0][1].input_ids))
    if cfg.assistant:
        report["assisted"] = assisted_peer(cfg, target, assistant, [p for _, p in prompts], results)
    return report


def conversation(cfg: BenchConfig, target, drafter, auto, request: Request, prompt, errors: list[dict]) -> list[Result]:
    """One request's answers, turn by turn: the whole conversation by the target alone, then the
    whole conversation speculatively (each keeps its own cache, so they cannot interleave). A turn
    that no longer fits the context ends the conversation there, with an error."""
    decode = cfg.decode
    multi = len(request.turns) > 1
    runs = {}
    for side in ("baseline", "speculative"):
        dialogue = Dialogue() if multi else None
        runs[side] = []
        for turn, question in enumerate(request.turns):
            try:
                this = prompt if turn == 0 else target.encode_turn(question, decode.max_new_tokens)
            except UserError as e:
                if side == "baseline":
                    errors.append({"input": request.name, "error": f"{request.name}: turn {turn + 1}: {e}"})
                break
            context = len(this.input_ids) if turn == 0 else target.cache.get_seq_length() + len(this.input_ids)
            start = time.perf_counter()
            if side == "baseline":
                steps = list(autoregressive_generate(target, this, decode, dialogue))
            else:
                if isinstance(drafter, OracleDrafter) and turn == 0:  # it replays first turns only
                    drafter.expect(collect_tokens(runs["baseline"][turn][1]))
                steps = list(speculative_generate(target, drafter, this, decode, auto, dialogue))
            runs[side].append((context, steps, time.perf_counter() - start, this))
    results = []
    for turn, ((context, baseline, baseline_s, this), (_, speculative, speculative_s, _)) in enumerate(
            zip(runs["baseline"], runs["speculative"])):
        base_tokens, spec_tokens = collect_tokens(baseline), collect_tokens(speculative)
        identical = base_tokens == spec_tokens if is_greedy(decode.temperature) else None
        divergence = None
        if identical is False:
            divergence = (first_divergence(target, this, base_tokens, spec_tokens) if turn == 0
                          else {"position": first_difference(base_tokens, spec_tokens), "top2_margin": float("nan")})
        name = f"{request.name} turn {turn + 1}" if multi else request.name
        results.append(Result(name, request.turns[turn], context, target.decode(spec_tokens), identical, divergence,
                              metrics.tau(speculative), baseline_s, speculative_s, baseline, speculative, turn + 1,
                              request.topic))
    return results


def first_divergence(target, prompt, base: list[int], spec: list[int]) -> dict:
    """Where greedy speculative output first differs from the target alone's, and the margin
    between the target's top two logits there (recomputed: the prompt, then the common prefix in
    one chain forward): a margin at or near 0 is a tie that the batch shape of a low-precision
    forward can flip."""
    i = first_difference(base, spec)
    logits = target.prefill(prompt).logits
    if i > 0:  # the answer's tokens go in as tokens (an image token id among them is just a token)
        logits = target.forward(torch.tensor(base[:i]), torch.arange(i))[0][-1]
    top = logits.topk(2).values
    return {"position": i, "target_token": base[i] if i < len(base) else None,
            "speculative_token": spec[i] if i < len(spec) else None, "top2_margin": float(top[0] - top[1])}


def first_difference(base: list[int], spec: list[int]) -> int:
    return next((k for k, (a, b) in enumerate(zip(base, spec)) if a != b), min(len(base), len(spec)))


def check_draft_vocab(cfg: BenchConfig) -> None:
    """draft_vocab=N sets up an untrained drafter: refused, before any model loads, for any other."""
    from mmvsd.drafters import DRAFTERS

    if cfg.draft_vocab and cfg.drafter not in DRAFTERS:
        raise UserError(f"draft_vocab applies to untrained drafters (a kind: {', '.join(DRAFTERS)}); drafter "
                        f"{cfg.drafter} brings its own (train one with draft_vocab=N)")


def untrained_draft_vocab(cfg: BenchConfig, target) -> list[int] | None:
    """draft_vocab=N for an untrained drafter, which only measures a reduced head's cost: EOS and
    the lowest ids (SentencePiece vocabularies such as Llama's number merges by frequency)."""
    from mmvsd.drafters.vocab import frequent_tokens

    if not cfg.draft_vocab:
        return None
    return frequent_tokens([], cfg.draft_vocab, target.vocab_size, target.eos_token_ids)


def summarize(cfg: BenchConfig, results: list[Result], errors: list[dict]) -> dict:
    spec_steps = [s for r in results for s in r.speculative if s.tree is not None]
    base_tps = metrics.tokens_per_second(sum(r.n_base_tokens for r in results), sum(r.baseline_s for r in results))
    spec_tps = metrics.tokens_per_second(sum(r.n_tokens for r in results), sum(r.speculative_s for r in results))
    identical = [r.identical for r in results if r.identical is not None]
    divergence = [{"input": r.name, **r.divergence} for r in results if r.divergence]
    phases = {phase: metrics.median_ms([s.phases[phase] for s in spec_steps]) for phase in PHASES}
    return {
        "target": cfg.target, "drafter": cfg.drafter,
        "speedup": spec_tps / base_tps,
        "tau": metrics.tau(spec_steps),
        "accepted_per_step": metrics.tau(spec_steps) - 1,
        "acceptance_by_depth": metrics.acceptance_by_depth(spec_steps, cfg.tree.depth),
        "baseline_tokens_per_s": base_tps,
        "speculative_tokens_per_s": spec_tps,
        "identical_outputs": all(identical) if identical else None,
        "divergence": divergence,
        "n_prompts": len(results),
        "errors": errors,
        "prefill_ms": metrics.median_ms([r.speculative[0].seconds for r in results]),
        "decode_step_ms": metrics.median_ms([s.seconds for r in results for s in r.baseline[1:]]),  # [0]: prefill
        "verify_step_ms": phases["verify"],
        "draft_step_ms": phases["draft"],
        "step_ms": phases,
        **metrics.engine_efficiency([r.baseline for r in results], [r.speculative for r in results]),
        **metrics.trees(s for r in results for s in r.speculative),
        **serial_latency(results),
        "per_turn": groups(results, lambda r: r.turn),
        "per_topic": groups(results, lambda r: r.topic) if any(r.topic for r in results) else {},
        "per_input": [r.to_dict() for r in results],
        "config": asdict(cfg),
    }


def serial_latency(results: list[Result]) -> dict:
    """Latency and time to first token p50 / p90 per answer as if every request had arrived at the
    start and each side served them one after another (what `batch_size=B` measures at B = 1)."""
    out = {"latency_s": {}, "time_to_first_token_s": {}}
    for side in ("baseline", "speculative"):
        done, first, last = 0.0, [], []
        for r in results:
            steps = getattr(r, side)
            first.append(done + steps[0].seconds)
            done += getattr(r, f"{side}_s")
            last.append(done)
        out["latency_s"][side], out["time_to_first_token_s"][side] = metrics.percentiles(last), metrics.percentiles(first)
    return out


def groups(results: list[Result], key) -> dict[str, dict]:
    """Speed-up, tau and answer length of the answers grouped by `key` (turn, or MMSpec's topic)."""
    grouped: dict[str, list[Result]] = {}
    for r in results:
        grouped.setdefault(str(key(r)), []).append(r)
    return {name: {"answers": len(rs),
                   "speedup": metrics.tokens_per_second(sum(r.n_tokens for r in rs), sum(r.speculative_s for r in rs)) /
                   metrics.tokens_per_second(sum(r.n_base_tokens for r in rs), sum(r.baseline_s for r in rs)),
                   "tau": metrics.tau(s for r in rs for s in r.speculative),
                   "tokens_per_answer": sum(r.n_tokens for r in rs) / len(rs)}
            for name, rs in grouped.items()}


def group_lines(report: dict) -> list[tuple[str, str]]:
    """Table rows per turn (conversations of several turns) and per topic (MMSpec's data)."""
    rows = []
    for label, table in (("turn", report["per_turn"] if len(report["per_turn"]) > 1 else {}),
                         ("topic", report["per_topic"])):
        for name, g in table.items():
            tau = "no tree verified" if math.isnan(g["tau"]) else f"tau {g['tau']:.2f}"
            rows.append((f"{label} {name}", f"{g['speedup']:.2f}x, {tau}, {g['tokens_per_answer']:.0f} tokens per answer "
                                            f"({g['answers']} answers)"))
    return rows


def auto_costs(auto, context: int) -> dict:
    """What tree=auto's calibration measured, in ms, at a context of `context` positions."""
    c = auto.costs
    return {"context": context, "decode": 1000 * c.decode_s(context), "draft_root": 1000 * c.draft_root,
            "draft_level": 1000 * c.draft_level,
            "verify_by_size": {n: 1000 * c.verify_s(n, context) for n in c.sizes}}


def tree_line(report: dict) -> str:
    tree = report["config"]["tree"]
    shape = (f"auto (at most {tree['depth']} deep, {tree['total_tokens']} tokens)" if tree["auto"]
             else f"{tree['depth']}/{tree['top_k']}/{tree['total_tokens']}")
    plain = f"; {report['plain_steps']} of {report['steps']} steps decoded plainly" if tree["auto"] else ""
    return f"{shape}: {report['tree_nodes']:.1f} tokens, {report['tree_depth']:.1f} deep on average{plain}"


def latency_lines(report: dict, how: str) -> list[tuple[str, str]]:
    """Per-request latency and time to first token p50 / p90, speculative (and the target alone's)."""
    rows = []
    for label, key in (("latency p50 / p90", "latency_s"), ("first token p50/p90", "time_to_first_token_s")):
        spec, base = report[key]["speculative"], report[key]["baseline"]
        rows.append((label, f"{spec['p50']:.2f} / {spec['p90']:.2f} s (target alone {base['p50']:.2f} / "
                            f"{base['p90']:.2f} s; all requests at the start, {how})"))
    return rows


def identical_line(report: dict) -> str:
    if report["identical_outputs"] is not False:
        return {True: "yes", None: "n/a (sampling)"}[report["identical_outputs"]]
    dtype = report["config"]["dtype"]
    worst = max((d["top2_margin"] for d in report["divergence"] if not math.isnan(d["top2_margin"])), default=math.nan)
    verdict = ("NO - lossless contract broken" if dtype == "float32" else
               f"no: {dtype} forwards are not invariant to batch shape (README, 'The lossless contract')")
    return (f"{verdict}; {len(report['divergence'])} of {report['n_prompts']} inputs differ, first at tokens "
            f"{', '.join(str(d['position']) for d in report['divergence'])}, top-2 logit margins there <= {worst:.4g}")


def print_report(report: dict) -> None:
    title = f"mmvsd bench: target={report['target']} drafter={report['drafter']}"
    if report.get("batch_size", 1) > 1:
        from mmvsd.bench_batch import batched_rows

        title += f" batch_size={report['batch_size']}"
        rows = batched_rows(report, [*latency_lines(report, f"{report['batch_size']} at a time"),
                                     ("identical outputs", identical_line(report)), ("tree", tree_line(report))])
    else:
        rows = report_rows(report)
    print(title)
    for label, value in rows:
        print(f"  {label:<20} {value}")
    for error in report["errors"]:
        print(f"  skipped: {error['error']}")


def report_rows(report: dict) -> list[tuple[str, str]]:
    """The table of a run at batch size 1."""
    steps = report["step_ms"]
    rows = [
        ("inputs", f"{report['n_prompts']} used, {len(report['errors'])} skipped"),
        ("target alone", f"{report['baseline_tokens_per_s']:.1f} tokens/s"),
        ("speculative", f"{report['speculative_tokens_per_s']:.1f} tokens/s"),
        ("speed-up", f"{report['speedup']:.2f}x (decoding alone, prefill excluded: {report['decode_speedup']:.2f}x)"),
        *latency_lines(report, "one request after another"),
        ("tau (incl. bonus)", f"{report['tau']:.2f} tokens per target forward"),
        ("acceptance by depth", " ".join(f"{a:.2f}" for a in report["acceptance_by_depth"])),
        ("identical outputs", identical_line(report)),
        ("prefill", f"{report['prefill_ms']:.1f} ms (image + prompt)"),
        ("decode step", f"{report['decode_step_ms']:.2f} ms (target, 1 token)"),
        ("tree", tree_line(report)),
        ("verify step", f"{report['verify_step_ms']:.2f} ms ({report['tree_nodes']:.0f} tree tokens, "
                        f"{report['verify_step_ms'] / report['decode_step_ms']:.2f}x a decode step)"),
        ("step breakdown", " | ".join(f"{phase} {steps[phase]:.2f}" for phase in PHASES) + " ms (medians)"),
        ("engine efficiency", f"{report['engine_efficiency']:.2f} = decode speed-up / (tau x t_decode / "
                              f"(t_verify + t_draft) = {report['speedup_limit']:.2f}x)"),
    ]
    rows += group_lines(report)
    if "assisted" in report:
        peer = report["assisted"]
        rows.append(("assisted (peer)", f"{peer['assisted_tokens_per_s']:.1f} tokens/s with assistant {peer['assistant']}: "
                                        f"{peer['speedup_vs_target_alone']:.2f}x vs target alone, "
                                        f"{peer['speedup_vs_generate']:.2f}x vs plain generate "
                                        f"({peer['generate_tokens_per_s']:.1f} tokens/s)"))
    return rows


def main(cfg: BenchConfig) -> None:
    torch.manual_seed(cfg.seed)
    report = run_bench(cfg)
    print_report(report)
    if cfg.json:
        out = Path(cfg.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_no_nan(report), indent=2))
        print(f"wrote {out}")
    if report["identical_outputs"] is False and cfg.dtype == "float32":
        raise UserError("greedy speculative output differs from the target's in float32: the lossless contract is broken")


def _no_nan(value):
    """NaN (e.g. tau with no verification step) is not JSON: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def run(argv: list[str] | None = None) -> int:
    return cli.run(BenchConfig, main, "mmvsd bench", __doc__, argv)


if __name__ == "__main__":
    sys.exit(run())
