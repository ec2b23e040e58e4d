"""Memory per process of a training run, estimated before anything is loaded (`dry_run=true`):
is a GPU big enough for this recipe?

Parameters are counted exactly, by building the target and the drafter on PyTorch's meta device
(no memory, no weights read); activations are a rough upper estimate for one micro-batch at
`max_length` tokens, dominated at LLaVA's vocabulary by the float32 logits of the target and the
drafter over 32k tokens. Data parallelism (DDP) keeps a whole copy per process; FSDP / ZeRO shard
the drafter's gradients and optimizer state, not the frozen target.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmvsd.errors import UserError
from mmvsd.models import DTYPES

GB = 1024 ** 3


def target_config(cfg):
    """The target's LlavaConfig without loading it, or None when it cannot be had offline."""
    from transformers import AutoConfig

    if cfg.target.startswith("random:"):
        from mmvsd.models.real_shapes import real_config

        return real_config(cfg.target.removeprefix("random:"), cfg.target_layers, cfg.vision_layers)
    if cfg.target == "tiny-random":
        from mmvsd.models.tiny import build_tiny_random

        return build_tiny_random()[0].config
    if cfg.target in ("toy-s", "toy-m"):
        from mmvsd.toyworld.build import shipped_target_dir

        path = shipped_target_dir(cfg.target)
    else:
        path = Path(cfg.target).expanduser() if Path(cfg.target).expanduser().is_dir() else cfg.target
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError):
        return None


def estimate(cfg, processes: int) -> str:
    """One line per item and a total, for `dry_run=true`."""
    from transformers import LlavaForConditionalGeneration

    from mmvsd.drafters import DEFAULT_EXTRA, DRAFTERS, DrafterSpec, drafter_kind

    config = target_config(cfg)
    if config is None:
        return (f"memory per process: unknown (the config of {cfg.target} is not available offline; "
                "target=random:llava-1.5-7b or -13b has the same shapes)")
    try:
        kind, note = drafter_kind(cfg.drafter), ""
    except UserError:  # e.g. a VSD recipe's baseline, not trained yet
        kind, note = "eagle", f": {cfg.drafter} not found yet, counted as one"
    with torch.device("meta"):
        target_params = sum(p.numel() for p in LlavaForConditionalGeneration(config).parameters())
        text = config.text_config
        spec = DrafterSpec.for_text_config(kind, text, **DEFAULT_EXTRA.get(kind, {}))
        drafter_params = sum(p.numel() for p in DRAFTERS[kind](spec, None, None).parameters())
    size = DTYPES[cfg.dtype].itemsize  # the drafter is made in the target's dtype
    tokens, hidden, vocab = cfg.batch_size * cfg.max_length, text.hidden_size, text.vocab_size
    # float32 logits over the vocabulary: the target's next-token logits, the drafter's, their
    # softmaxes and gradient; the drafter layer's activations; VSD's rollouts over the vocabulary.
    activations = tokens * (5 * vocab * 4 + (16 * hidden + 4 * text.intermediate_size) * size)
    if cfg.vsd.enabled:
        activations += cfg.batch_size * cfg.vsd.contexts * cfg.vsd.num_proposals * cfg.vsd.depth * vocab * 4 * 3
    mode, shards = distributed_mode(processes)
    parts = {f"target weights ({cfg.dtype}, {_count(target_params)} parameters)": target_params * size,
             f"drafter weights ({kind}{note}, {_count(drafter_params)} parameters)": drafter_params * size,
             f"drafter gradients and AdamW state{' (sharded)' if shards > 1 else ''}": drafter_params * size * 3 / shards,
             f"activations (~, {cfg.batch_size} x {cfg.max_length} tokens)": activations,
             "runtime (the CUDA context, or the Python process on a CPU; ~)": GB}
    lines = [f"memory per process (estimate, {mode}{f', {processes} processes' if processes > 1 else ''}):"]
    lines += [f"  {name}: {_size(value)}" for name, value in parts.items()]
    lines.append(f"  total: {_size(sum(parts.values()))}")
    return "\n".join(lines)


def distributed_mode(processes: int) -> tuple[str, int]:
    """How `accelerate launch` set this launch up (from its environment), and over how many
    processes the drafter's gradients and optimizer state are sharded."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP", processes
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
        return f"DeepSpeed ZeRO-{stage}", processes if stage in ("1", "2", "3") else 1
    return ("DDP" if processes > 1 else "one process"), 1


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 1024 ** 2:.0f} MB"
