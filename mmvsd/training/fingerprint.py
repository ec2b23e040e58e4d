"""What makes a training run the run it is, kept in its checkpoint: `resume=true` with anything
else would mix two runs, so it is refused, naming what differs.

Settings that may change on resume are `MAY_CHANGE` (extending `steps`, evaluation, logging,
checkpoint frequency, device, threads). The number of processes may change too as long as the
micro-batch across processes (`batch_size` x processes) stays: every slot of a micro-batch is
drawn the same way whatever the split (`training_batch`), so the data and the averaged gradients
are the same, to float rounding.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch

from mmvsd.errors import UserError

MAY_CHANGE = ("steps", "resume", "dry_run", "eval_n", "eval_max_new_tokens", "tree", "checkpoint_every", "log_with",
              "device", "output_dir", "feature_cache", "threads",
              "launch_config")


def run_fingerprint(cfg, target, drafter, processes: int) -> dict:
    """Flat {key: value} of everything that must not change when a run is resumed."""
    settings = {k: v for k, v in flatten(asdict(cfg)).items() if k.split(".")[0] not in MAY_CHANGE}
    for key in ("batch_size", "drafter"):  # replaced by what they mean below
        settings.pop(key)
    spec = drafter.spec.to_dict()
    return {**settings, **flatten({
        "micro-batch across processes": cfg.batch_size * processes,
        "drafter": {k: v for k, v in spec.items() if k != "target"},
        "target shape": target.fingerprint(),
        "target weights": weights_digest(target.model),
        "tokenizer": tokenizer_digest(target.tokenizer),
        **{f"{key} file": _file_stamp(getattr(cfg, key)) for key in ("data", "text_data") if getattr(cfg, key)}})}


def check_resume(stored: dict | None, current: dict, out: Path) -> None:
    """Refuse to resume a run whose fingerprint differs; a checkpoint without one (written by an
    older mmvsd) is resumed unchecked."""
    if stored is None:
        return
    changed = [k for k in sorted(stored.keys() | current.keys()) if stored.get(k) != current.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {_short(stored.get(k))} -> {_short(current.get(k))}" for k in changed)
        raise UserError(f"resume=true, but {out} holds another run: start a new one with another output_dir, or "
                        "resume with that run's settings (only steps, eval_*, tree.*, checkpoint_every and log_with may "
                        f"change); what differs: {detail}")


def weights_digest(model: torch.nn.Module, per_tensor: int = 4096) -> str:
    """A cheap digest of a model's weights: names, shapes and the first values of every tensor
    (enough to tell two checkpoints apart without reading 26 GB)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().flatten()[:per_tensor].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


def _file_stamp(path: str) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict with dotted keys."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
