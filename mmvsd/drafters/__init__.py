"""Drafters: build an untrained one by kind, save one as a folder, load one against a target.

A drafter folder written by mmvsd holds `config.json` (kind, sizes, the target's fingerprint) and
`model.safetensors` (only the drafter's own weights; embedding and LM head come from the target).
A folder in the authors' layout (EAGLE, MSD, ViSpec as released; `drafters.layouts`) loads too,
named by path or by its hub id when it is in the local hub cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmvsd.drafters import eagle, msd, vispec  # noqa: F401  (each registers its kind)
from mmvsd.drafters.base import DRAFTERS, FORMAT, DrafterSpec, TrainableDrafter
from mmvsd.drafters.layouts import authors_kind, is_authors_folder, read_authors
from mmvsd.errors import UserError
from mmvsd.files import ordinary_modes
from mmvsd.models.skinny import use_skinny_matmuls

__all__ = ["DRAFTERS", "DrafterSpec", "build_drafter", "load_drafter", "save_drafter"]

DEFAULT_EXTRA = {"vispec": {"num_queries": 2}}  # ViSpec's default: one compressed token + g per image


def build_drafter(kind: str, target, seed: int = 0, draft_vocab: list[int] | None = None) -> TrainableDrafter:
    """An untrained drafter of `kind`, sized for `target`, seeded, drafting over `draft_vocab`
    (token ids; None: the whole vocabulary)."""
    if kind not in DRAFTERS:
        raise UserError(f"unknown drafter kind {kind!r}; known kinds: {', '.join(DRAFTERS)}")
    spec = DrafterSpec.for_target(kind, target, draft_vocab=draft_vocab, **DEFAULT_EXTRA.get(kind, {}))
    return _instantiate(spec, target, seed)


def _instantiate(spec: DrafterSpec, target, seed: int = 0) -> TrainableDrafter:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        drafter = DRAFTERS[spec.kind](spec, target.embed_tokens, target.lm_head)
    drafter.stop_tokens = frozenset(target.eos_token_ids)
    use_skinny_matmuls(drafter)
    return drafter.to(target.device, target.dtype).eval()


# Trained drafters for the toy targets, shipped in the package: `drafter=toy-m-msd` and so on.
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "drafters"


def shipped_drafters() -> list[str]:
    return sorted(p.name for p in SHIPPED.glob("*") if (p / "config.json").is_file())


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def drafter_folder(name: str) -> Path:
    """A drafter folder named by path, by the name of a shipped drafter, or by a hub id (e.g.
    JLKang/ViSpec-llava-1.5-7b-hf) found in the local hub cache: nothing is downloaded."""
    folder = Path(name).expanduser()
    if folder.is_dir() or name in DRAFTERS:
        return folder
    if name in shipped_drafters():
        return SHIPPED / name
    if HUB_ID.fullmatch(name):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached, or not a valid id: both mean "no such drafter here"
            raise UserError(f"drafter {name}: no such folder, and no hub model of that id in the local hub cache; "
                            f"fetch a released drafter once with `hf download {name}`, or give its folder") from None
    return folder


def check_drafter_name(name: str) -> Path:
    """Refuse, cheaply and before any model loads, a name that is neither a kind nor a folder;
    return its folder (resolved once: a hub id is looked up in the cache)."""
    folder = drafter_folder(name)
    if name not in DRAFTERS and not folder.is_dir():
        raise UserError(f"drafter {name!r}: not a folder, a drafter kind ({', '.join(DRAFTERS)}), a shipped "
                        f"drafter ({', '.join(shipped_drafters()) or 'none'}) or a cached hub id; to start from a "
                        "trained drafter, train it first (recipe NAME writes runs/NAME/drafter)")
    return folder


def drafter_kind(name: str) -> str:
    """The kind of the drafter `name` (a kind, a shipped drafter, a folder or a hub id), without loading it."""
    folder = check_drafter_name(name)
    if name in DRAFTERS:
        return name
    if is_authors_folder(folder):
        return authors_kind(folder)
    try:
        return json.loads((folder / "config.json").read_text())["kind"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"drafter {name}: cannot read its kind from config.json ({e})") from None


def load_drafter(name: str, target, seed: int = 0, draft_vocab: list[int] | None = None) -> TrainableDrafter:
    """`name` is a drafter folder, a shipped drafter's name, or a kind for an untrained drafter
    (which drafts over `draft_vocab`; a trained drafter brings its own)."""
    folder = check_drafter_name(name)
    if name in DRAFTERS:
        return build_drafter(name, target, seed, draft_vocab)
    if is_authors_folder(folder):
        spec, state = read_authors(folder, target)
        drafter = _instantiate(spec, target, seed)
        drafter.load_state_dict({k: v.to(target.device, target.dtype) for k, v in state.items()})
        return drafter
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"drafter {folder}: missing {path.name}; is this a drafter folder written by mmvsd, or "
                            "a released one (pytorch_model.bin or model.safetensors, and config.json)?")
    try:
        spec = DrafterSpec(**json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"drafter {folder}: config.json is not a valid drafter config ({e})") from None
    if spec.kind not in DRAFTERS:
        raise UserError(f"drafter {folder}: unknown kind {spec.kind!r}; known kinds: {', '.join(DRAFTERS)}")
    if spec.format != FORMAT:
        raise UserError(f"drafter {folder} was written by an earlier mmvsd (format {spec.format}), whose layer differs "
                        "from the authors' (fc without bias, an input norm): retrain it with its recipe")
    if not isinstance(spec.draft_vocab, list) or not all(isinstance(i, int) and 0 <= i < target.vocab_size
                                                         for i in spec.draft_vocab):
        raise UserError(f"drafter {folder}: config.json's draft_vocab must be a list of token ids in 0..{target.vocab_size - 1}")
    mismatch = {k: (v, target.fingerprint().get(k)) for k, v in spec.target.items() if target.fingerprint().get(k) != v}
    if mismatch:
        detail = ", ".join(f"{k} {was} vs {now}" for k, (was, now) in mismatch.items())
        raise UserError(f"drafter {folder} was trained for another target ({detail}; drafter vs {target.name})")
    drafter = _instantiate(spec, target, seed)
    try:
        state = load_file(str(weights_path), device=str(target.device))
        drafter.load_state_dict({k: v.to(target.dtype) for k, v in state.items()})
    except (SafetensorError, RuntimeError, OSError) as e:
        raise UserError(f"drafter {folder}: cannot read its weights ({' '.join(str(e).split())[:200]})") from None
    return drafter


def save_drafter(drafter: TrainableDrafter, folder: str | Path) -> Path:
    """Write config.json + model.safetensors atomically: readers see the old folder or the new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(drafter.spec.to_dict(), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"kind": drafter.kind})
        ordinary_modes(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
