"""Batched decoding: B requests at once, each row lossless on its own.

batch_generate keeps up to `batch_size` rows in flight: a request joins by a prefill of its own
(so rows of different prompt lengths and images need no padding, and its KV moves into the batch
cache), then every step drafts all rows' trees level by level in one drafter pass per level,
verifies every row's tree in one target forward (trees padded to the same number of tokens; each
row at its own positions, with its own tree mask over its own context length), accepts per row,
and moves each row's accepted KV into place. A finished row leaves at once and the next request
takes its slot. Without a drafter the same loop is the target alone, batched: one token per row
per forward, no tree.

Row b of a stream samples with its own generator seeded `seed + b`, so its output is that of a
batch-1 run with that seed (identical for greedy decoding, in float32).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mmvsd.config import DecodeConfig, TreeConfig, is_greedy
from mmvsd.decoding.drafting import Drafter, make_pairs
from mmvsd.decoding.speculative import Step, _Clock, _Output
from mmvsd.decoding.tree import DraftTree
from mmvsd.decoding.verify import logits_to_probs, sample, verify_greedy, verify_stochastic
from mmvsd.errors import UserError
from mmvsd.models.kv_cache import add_row, keep_paths, rows_cache, rows_mask
from mmvsd.models.llava import LlavaTarget, Prompt


@dataclass
class BatchStep:
    """One target forward (a joining request's prefill, or a step over every row in flight)."""

    rows: list[tuple[int, Step]]  # (request index, what that row got), each Step carrying the batch step's time
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)  # requests whose answers this step ended


@dataclass
class _Row:
    request: int
    output: _Output
    generator: torch.Generator
    features: torch.Tensor | None = None  # pairs the drafter has not taken in yet: [n, H] and [n], ending on `last`
    tokens: torch.Tensor | None = None
    last: int = 0  # the newest emitted token (not in the cache yet)


def batch_generate(target: LlavaTarget, drafter: Drafter | None, prompts: list[Prompt], cfg: DecodeConfig,
                   batch_size: int) -> Iterator[BatchStep]:
    """Decode `prompts` with at most `batch_size` in flight, speculatively with `drafter` (a fixed
    `cfg.tree`: see `batch_tree`) or, with None, the target alone."""
    if cfg.tree.auto:
        raise ValueError("batch_generate drafts a fixed tree: pass batch_tree(cfg.tree)")
    queue = deque(enumerate(prompts))
    cache = rows_cache(target.num_layers, row_positions(prompts, cfg, drafter is not None))
    drafts = drafter.new_batch() if drafter else None
    rows: list[_Row] = []
    while queue or rows:
        while queue and len(rows) < batch_size:
            request, prompt = queue.popleft()
            row, step = _join(target, drafter, cache, drafts, request, prompt, cfg)
            yield BatchStep([(request, step)], step.seconds, step.phases, [] if row else [request])
            if row is not None:
                rows.append(row)
        if not rows:
            continue
        step = _step(target, drafter, cache, drafts, rows, cfg) if drafter else _plain_step(target, cache, rows, cfg)
        step.finished = [row.request for row in rows if row.output.done]
        yield step
        staying = [i for i, row in enumerate(rows) if not row.output.done]
        if len(staying) < len(rows):
            rows = [rows[i] for i in staying]
            for layer in cache.layers:
                layer.select(staying)
            if drafter:
                drafter.leave(drafts, staying)


def batch_tree(tree: TreeConfig) -> TreeConfig:
    """The fixed tree a batch drafts: `tree=auto` sizes one sequence's trees from costs measured
    at batch size 1, so a batch drafts the `short` preset in its place (on toy-m at B = 2, 4, 8,
    2 cores, measured in one process: short 1.40x / 1.37x / 1.00x, narrow 1.31x / 1.24x / 0.97x,
    chain 1.33x / 1.15x / 0.98x: verifying and drafting cost grows with the batch's rows)."""
    return TreeConfig.presets()["short"] if tree.auto else tree


def row_positions(prompts: list[Prompt], cfg: DecodeConfig, drafting: bool) -> int:
    """Cache positions every row is given: the longest prompt, its answer, and a tree verified after it."""
    return max(len(p.input_ids) for p in prompts) + cfg.max_new_tokens + (cfg.tree.total_tokens + 1 if drafting else 1)


def check_batch_memory(target: LlavaTarget, prompts: list[Prompt], cfg: DecodeConfig, batch_size: int,
                       drafting: bool) -> None:
    """Refuse, before any work, a batch whose caches and logits would not fit in the memory free on
    the target's device, naming the largest batch size that fits. Per row: the target's KV cache
    for the longest prompt + max_new_tokens + a tree, the drafter's (one layer), and the fp32
    logits of a verified tree."""
    positions = row_positions(prompts, cfg, drafting)
    tree = cfg.tree.total_tokens + 1 if drafting else 1
    text = target.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    width = target.dtype.itemsize
    per_row = 2 * positions * target.num_layers * kv_heads * head_dim * width  # target keys and values
    if drafting:
        per_row += 2 * 2 * positions * target.hidden_size * width  # the drafter's, in a buffer that doubles
    per_row += tree * target.vocab_size * 4 * 2  # logits, and their probabilities when sampling
    free = free_memory(target.device)
    if batch_size * per_row > 0.9 * free:
        fits = int(0.9 * free // per_row)
        raise UserError(f"batch_size={batch_size} needs ~{_size(batch_size * per_row)} for its caches and logits "
                        f"({batch_size} rows x {positions} positions: the longest prompt + max_new_tokens + a tree), "
                        f"more than the {_size(free)} free on {target.device}; "
                        + (f"batch_size={fits} fits" if fits else "lower max_new_tokens"))


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # accelerate's dependency, so always installed with mmvsd

    return psutil.virtual_memory().available


def _join(target: LlavaTarget, drafter: Drafter | None, cache, drafts: Any, request: int, prompt: Prompt,
          cfg: DecodeConfig) -> tuple[_Row | None, Step]:
    """Prefill one request alone and add it as the batch's last row (None when its answer already ended)."""
    clock = _Clock(target.device)
    row = _Row(request, _Output(target, cfg), torch.Generator().manual_seed(cfg.seed + request))
    prefill = target.prefill(prompt)  # logits [V], hidden [T, H]; KV in target.cache
    row.last = sample(prefill.logits, cfg, row.generator)
    tokens = row.output.take([row.last])
    if not row.output.done:
        add_row(cache, target.cache)
        if drafter:
            state = drafter.begin(prompt.input_ids, prefill)
            features, ids = make_pairs(prefill.hidden, torch.cat([prompt.input_ids, prompt.input_ids.new_tensor([row.last])]))
            drafter.join(drafts, state, features[:-1], ids[:-1])  # the prompt's pairs, read alone
            row.features, row.tokens = features[-1:], ids[-1:]  # the root's pair waits for the first step
    target.cache = None  # its rows live in the batch cache now
    clock.lap("prefill")
    return (None if row.output.done else row), Step(tokens, clock.total, phases=clock.phases)


def _plain_step(target: LlavaTarget, cache, rows: list[_Row], cfg: DecodeConfig) -> BatchStep:
    """The target alone: one token per row, each after its own context (no tree, nothing to move)."""
    clock = _Clock(target.device)
    lengths = torch.tensor(cache.layers[0].lengths)[:, None]  # [B, 1]
    mask = _additive(target, rows_mask(lengths, torch.ones(len(rows), 1, 1, dtype=torch.bool)))  # context + itself
    tokens = torch.tensor([[row.last] for row in rows])
    logits, _ = target.verify_rows(cache, tokens, lengths.to(target.device), mask)  # [B, 1, V]
    step = []
    for row, row_logits in zip(rows, logits[:, 0]):
        row.last = sample(row_logits, cfg, row.generator)
        step.append((row.request, Step(row.output.take([row.last]), 0.0)))
    clock.lap("verify")
    for _, row_step in step:
        row_step.seconds, row_step.phases = clock.total, clock.phases
    return BatchStep(step, clock.total, clock.phases)


def _step(target: LlavaTarget, drafter: Drafter, cache, drafts: Any, rows: list[_Row], cfg: DecodeConfig) -> BatchStep:
    clock = _Clock(target.device)
    trees = drafter.propose_batch(drafts, [r.features for r in rows], [r.tokens for r in rows], cfg.tree)
    clock.lap("draft")
    starts = list(cache.layers[0].lengths)
    tokens, positions, mask = tree_batch(target, trees, starts)
    clock.lap("tree")
    logits, hidden = target.verify_rows(cache, tokens, positions, mask)  # [B, N, V], [B, N, H]
    clock.lap("verify")
    accepted = []
    for b, (row, tree) in enumerate(zip(rows, trees)):
        if is_greedy(cfg.temperature):
            accepted.append(verify_greedy(tree, logits[b, :len(tree)]))
        else:  # the generator lives on the CPU
            probs = logits_to_probs(logits[b, :len(tree)].cpu(), cfg.temperature, cfg.top_p, cfg.top_k)
            accepted.append(verify_stochastic(tree, probs, row.generator))
    clock.lap("accept")
    keep_paths(cache.layers, starts, [path for path, _ in accepted])
    clock.lap("commit")
    emitted = []
    for b, (row, tree, (path, bonus)) in enumerate(zip(rows, trees, accepted)):
        kept = tree.tokens[path].tolist() + [bonus]
        row.features, row.tokens = make_pairs(hidden[b, path], torch.tensor(kept, device=hidden.device))
        row.last = bonus
        emitted.append(row.output.take(kept[1:]))  # the root was emitted by the step before
    clock.lap("other")
    return BatchStep([(row.request, Step(out, clock.total, tree, path, clock.phases))
                      for row, tree, out, (path, _) in zip(rows, trees, emitted, accepted)], clock.total, clock.phases)


def tree_batch(target: LlavaTarget, trees: list[DraftTree], lengths: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens [B, N] and positions [B, N] of every row's tree (padded to the largest with nodes
    that see only the context and themselves, whose outputs are dropped), and the additive mask
    [B, 1, N, K] over the batch cache, K = the longest row + N: row b's node i sees the row's own
    `lengths[b]` context positions and its ancestors in the slots right after them."""
    b, n = len(trees), max(len(tree) for tree in trees)
    tokens = torch.zeros(b, n, dtype=torch.long)
    depths = torch.zeros(b, n, dtype=torch.long)
    ancestors = torch.eye(n, dtype=torch.bool).repeat(b, 1, 1)  # [B, N, N]
    for i, tree in enumerate(trees):
        tokens[i, :len(tree)], depths[i, :len(tree)] = tree.tokens, tree.depths
        ancestors[i, :len(tree), :len(tree)] = tree.ancestors
    start = torch.tensor(lengths)[:, None]  # [B, 1]
    device = target.device
    return tokens.to(device), (start + depths).to(device), _additive(target, rows_mask(start, ancestors))


def _additive(target: LlavaTarget, allowed: torch.Tensor) -> torch.Tensor:
    """A bool mask [B, q, K] as the additive [B, 1, q, K] the target's attention adds to its scores
    (as in LlavaTarget._tree_mask: a boolean mask there would be silently wrong)."""
    mask = torch.zeros(allowed.shape[0], 1, *allowed.shape[1:], dtype=target.dtype)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(target.dtype).min).to(target.device)
