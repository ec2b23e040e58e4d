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
    from mmvsd.plugins import target_folder

    path = target_folder(cfg.target) or (Path(cfg.target).expanduser() if Path(cfg.target).expanduser().is_dir()
                                         else cfg.target)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError):
        return None


def estimate(cfg, processes: int, launch: dict | None = None) -> str:
    """One line per item and a total, for `dry_run=true`; `launch`: see `read_launch_config`."""
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
    mode, shards = distributed_mode(processes, launch)
    parts = {f"target weights ({cfg.dtype}, {_count(target_params)} parameters)": target_params * size,
             f"drafter weights ({kind}{note}, {_count(drafter_params)} parameters)": drafter_params * size,
             f"drafter gradients and AdamW state{' (sharded)' if shards > 1 else ''}": drafter_params * size * 3 / shards,
             f"activations (~, {cfg.batch_size} x {cfg.max_length} tokens)": activations,
             "runtime (the CUDA context, or the Python process on a CPU; ~)": GB}
    lines = [f"memory per process (estimate, {mode}{f', {processes} processes' if processes > 1 else ''}):"]
    lines += [f"  {name}: {_size(value)}" for name, value in parts.items()]
    lines.append(f"  total: {_size(sum(parts.values()))}")
    return "\n".join(lines)


def distributed_mode(processes: int, launch: dict | None = None) -> tuple[str, int]:
    """How this launch shards the drafter's gradients and optimizer state: (mode, over how many
    processes), from an accelerate config file read by `read_launch_config`, else from the
    environment `accelerate launch` sets."""
    if launch is not None:
        kind, stage = launch["distributed_type"], str((launch.get("deepspeed_config") or {}).get("zero_stage", ""))
    else:
        kind = "FSDP" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else \
            "DEEPSPEED" if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" else "NO"
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
    if kind == "FSDP":
        return "FSDP", processes
    if kind == "DEEPSPEED":
        return f"DeepSpeed ZeRO-{stage}", processes if stage in ("1", "2", "3") else 1
    return ("DDP" if processes > 1 else "one process"), 1


LAUNCH_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")


def read_launch_config(name: str) -> tuple[dict, list[str]]:
    """An accelerate config file (a path, or `fsdp` / `deepspeed` for the shipped ones), checked:
    a broken file is refused in one line; what this machine lacks to launch it comes back as notes."""
    import importlib.util

    import yaml

    from mmvsd.cli import RECIPES_DIR

    path = Path(name).expanduser() if name.endswith((".yaml", ".yml")) else RECIPES_DIR / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"launch_config {name}: no such file (shipped: fsdp, deepspeed; or a path to an accelerate "
                        "config YAML)")
    try:
        launch = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"launch_config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(launch, dict) or launch.get("distributed_type", "NO") not in LAUNCH_TYPES:
        got = launch.get("distributed_type") if isinstance(launch, dict) else launch
        raise UserError(f"launch_config {path}: distributed_type must be one of {', '.join(LAUNCH_TYPES)}, got {got!r}")
    launch.setdefault("distributed_type", "NO")
    processes = launch.get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise UserError(f"launch_config {path}: num_processes must be an integer >= 1, got {processes!r}")
    notes = []
    if launch["distributed_type"] == "DEEPSPEED":
        deepspeed = launch.get("deepspeed_config") or {}
        if deepspeed.get("zero_stage") not in (0, 1, 2, 3):
            raise UserError(f"launch_config {path}: deepspeed_config.zero_stage must be 0, 1, 2 or 3, "
                            f"got {deepspeed.get('zero_stage')!r}")
        if importlib.util.find_spec("deepspeed") is None:
            notes.append("deepspeed is not installed here: `pip install deepspeed` before `accelerate launch`")
    if launch["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED") and not torch.cuda.is_available():
        notes.append(f"{launch['distributed_type']} needs GPUs and this machine has none (on CPUs: torchrun, gloo)")
    return launch, notes


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 1024 ** 2:.0f} MB"
