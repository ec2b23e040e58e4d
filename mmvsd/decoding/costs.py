"""What a speculative step costs on this machine: measured once per device, target, drafter,
dtype, thread count and torch version, cached under $MMVSD_HOME/calibration, read by `tree=auto`.

As in Sequoia (Chen et al. 2024, "Sequoia: Scalable, Robust, and Hardware-aware Speculative
Decoding", arXiv 2402.12374), the tree is sized from measured costs rather than assumed ones: the
target's verification time t_verify(n) for n tree tokens (interpolated between the sizes and
context lengths measured), the drafter's fixed cost per step (taking in the newest pair and
scoring the root's children) and its cost per further level, and one plain decoding step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmvsd.decoding.drafting import make_pairs

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tree tokens (root included) whose verification is timed
CONTEXT_STEPS = (0, 128, 256)  # context lengths timed: the prompt's, then this much longer
REPEATS, POINT_BUDGET = 7, 0.2  # timings per point (the median is kept), fewer once they add up to 0.2 s
FORMAT = 3  # of the cached file


@dataclass
class Costs:
    """Measured seconds, read by interpolation."""

    contexts: list[int]  # context lengths measured, ascending
    sizes: list[int]  # tree tokens measured (root included), ascending
    verify: list[list[float]]  # [context][size]: tree mask, verification, commit of the accepted path
    decode: list[float]  # [context]: one plain decoding step
    draft_root: float  # a draft step's fixed part: the newest pair in, the root's children scored, the tree built
    draft_level: float  # each further level of the tree
    draft_pair: float  # each further pair taken in at once (the prompt's, at a sequence's first tree)

    def verify_s(self, n: int, context: int) -> float:
        """Verifying a tree of n tokens (root included) after `context` cached positions."""
        return _along(self.contexts, [_along(self.sizes, row, n) for row in self.verify], context)

    def decode_s(self, context: int) -> float:
        return _along(self.contexts, self.decode, context)


def _along(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear y(x) through the points, extended linearly past both ends (never below 0)."""
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def cost_key(target, drafter, top_k: int) -> dict:
    """Everything the costs depend on: a calibration made under another key is not reused."""
    spec = getattr(drafter, "spec", None)
    return {"target": target.name, "target_shape": target.fingerprint(), "drafter": drafter.kind,
            "drafter_shape": None if spec is None else [spec.hidden_size, spec.num_heads, spec.intermediate_size,
                                                        len(spec.draft_vocab) or spec.vocab_size],
            "top_k": top_k, "dtype": str(target.dtype).removeprefix("torch."), "device": _device_name(target.device),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "format": FORMAT}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    return f"cpu {platform.machine()} {model} x{os.cpu_count()}".strip()


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def load_costs(target, drafter, prompt, top_k: int, home: Path | None = None, log=None) -> Costs:
    """The cached costs for this key, or a fresh calibration on `prompt` (seconds; it says so).
    A cache file that is unreadable or was made under another key is replaced, with one line."""
    from mmvsd.checks import mmvsd_home

    log = log or (lambda line: print(line, file=sys.stderr))
    key = cost_key(target, drafter, top_k)
    name = hashlib.sha1(json.dumps([key["target"], key["drafter"], key["drafter_shape"], key["top_k"], key["dtype"],
                                    key["device"].split()[0]]).encode()).hexdigest()[:16]
    file = (home or mmvsd_home()) / "calibration" / f"{name}.json"
    if file.exists():
        try:
            saved = json.loads(file.read_text())
            if saved["key"] == key:
                return Costs(**saved["costs"])
            changed = ", ".join(k for k in key if saved["key"].get(k) != key[k])
            log(f"tree=auto: {file} was measured with another {changed}; recalibrating")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f"tree=auto: {file} is unreadable ({type(e).__name__}); recalibrating")
    log(f"tree=auto: measuring draft and verification costs of {target.name} with this drafter (once; cached in {file})")
    costs = calibrate(target, drafter, prompt, top_k)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"key": key, "costs": asdict(costs)}, indent=1))
    partial.replace(file)  # atomic: a reader never sees half a file
    return costs


@torch.inference_mode()
def calibrate(target, drafter, prompt, top_k: int, depth: int = 6) -> Costs:
    """Time the pieces of a speculative step on `prompt`'s context and on longer ones. Token values
    do not change the cost, so the tokens timed are arbitrary ones."""
    from tqdm import tqdm

    from mmvsd.config import TreeConfig

    bar = tqdm(total=3 + len(CONTEXT_STEPS) * (len(SIZES) + 1), desc="tree=auto calibration", unit="timing",
               leave=False, file=sys.stderr)

    device = target.device
    wait = device_wait(device)

    def timed(run, between=None) -> float:
        seconds = _median(run, wait, between)
        bar.update()
        return seconds

    prefill = target.prefill(prompt)
    token = int(prefill.logits.argmax())
    pairs = make_pairs(prefill.hidden, torch.cat([prompt.input_ids, prompt.input_ids.new_tensor([token])]))
    state = None

    def take_prompt() -> None:  # the prompt's pairs, taken in at once as at a sequence's first tree
        nonlocal state
        state = drafter.begin(prompt.input_ids, prefill)
        drafter.propose(state, *pairs, TreeConfig(1, top_k, top_k))

    whole = timed(take_prompt)
    pair = prefill.hidden[-1:], torch.tensor([token], device=prefill.hidden.device)

    def draft(levels: int) -> None:
        drafter.propose(state, *pair, TreeConfig(levels, top_k, top_k * levels))

    # In a decoding step the drafter and the target take turns, each evicting the other's weights
    # from the CPU's caches: each timing here follows a turn of the other, as it would there.
    root = timed(lambda: draft(1), between=lambda: _verify_once(target, token, 8))
    deep = timed(lambda: draft(depth), between=lambda: _verify_once(target, token, 8))
    contexts, verify, decode = [], [], []
    start = target.cache.get_seq_length()
    for extra in CONTEXT_STEPS:
        grow = start + extra - target.cache.get_seq_length()  # positions the timings below added count too
        if grow > 0:
            target.forward(torch.full((grow,), token, device=device), torch.arange(grow))
        contexts.append(target.cache.get_seq_length())
        verify.append(_increasing([timed(lambda n=n: _verify_once(target, token, n), between=lambda: draft(3))
                                   for n in SIZES]))
        decode.append(timed(lambda: target.forward(torch.tensor([token], device=device), torch.zeros(1, dtype=torch.long))))
    bar.close()
    return Costs(contexts, list(SIZES), verify, decode, root, max(0.0, (deep - root) / (depth - 1)),
                 max(0.0, (whole - root) / max(1, len(pairs[1]) - 1)))


def _increasing(times: list[float]) -> list[float]:
    """The closest non-decreasing sequence (pool-adjacent-violators): a bigger tree never costs
    less to verify, and timing noise must not make the chooser believe otherwise."""
    blocks: list[list[float]] = []  # [mean, count]
    for t in times:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


def _verify_once(target, token: int, n: int) -> None:
    """A tree step's target side for a chain of n tokens: mask, forward, commit of the root alone."""
    depths = torch.arange(n)
    positions, mask = target.tree_inputs(depths, torch.ones(n, n, dtype=torch.bool).tril())
    logits, _ = target.verify(torch.full((n,), token), positions, mask)
    logits.argmax(-1).tolist()
    target.commit(n, torch.zeros(1, dtype=torch.long))


def device_wait(device: torch.device):
    """A call that waits for `device`'s queued work (a GPU's kernels run after their launch), so a
    timing owns the kernels it launched; nothing to wait for on a CPU."""
    return functools.partial(torch.cuda.synchronize, device) if device.type == "cuda" else lambda: None


def _median(run, wait, between=None) -> float:
    """Median seconds of `run()` (each timing after `between()`, untimed, when given; `wait()` for
    the target's device at both ends, so a GPU's queued kernels count where they were launched)."""
    run()  # warm: first calls of a shape pay one-off costs
    times: list[float] = []
    while len(times) < REPEATS and (not times or sum(times) < POINT_BUDGET):
        if between:
            between()
        wait()
        start = time.perf_counter()
        run()
        wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
