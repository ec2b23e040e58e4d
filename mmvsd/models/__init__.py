"""Target loading: `tiny-random`, the toy world's targets, `random:llava-1.5-7b|13b`, a local folder, or a hub id."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mmvsd.errors import UserError
from mmvsd.models.llava import LlavaTarget, PrefillOutput, Prompt

__all__ = ["LlavaTarget", "PrefillOutput", "Prompt", "load_target", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_target(name: str, dtype: str = "float32", device: str = "cpu", download: bool = False,
                layers: int = 0, vision_layers: int = 0) -> LlavaTarget:
    """Load a LLaVA-1.5 target by id. Hub ids are read from the local cache unless `download`;
    `toy-s` / `toy-m` are the trained folders shipped in the package (built under $MMVSD_HOME
    instead, on first use, if the package has none for the current spec); `random:llava-1.5-7b`
    and `-13b` are the real shapes with random weights, cut to `layers` / `vision_layers`."""
    torch_dtype = DTYPES[dtype]
    if name.startswith("random:"):
        from mmvsd.models.real_shapes import build_real_shape

        return LlavaTarget(*build_real_shape(name, layers, vision_layers, dtype=torch_dtype, device=device), name)
    if layers or vision_layers:
        raise UserError(f"target_layers and vision_layers apply to the random:* targets only, not to {name}")
    if name == "tiny-random":
        from mmvsd.models.tiny import build_tiny_random

        model, processor = build_tiny_random()
        return LlavaTarget(model.to(device, torch_dtype), processor, name)
    from mmvsd.plugins import target_folder

    folder = target_folder(name)  # a plugin's target, e.g. the toy world's toy-s and toy-m
    if folder is not None:
        return LlavaTarget(*_from_pretrained(str(folder), torch_dtype, device, False), name)
    return LlavaTarget(*_from_pretrained(_resolve(name), torch_dtype, device, download), name)


def _resolve(name: str) -> str:
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise UserError(f"target {name!r}: no such folder, and not a hub id (owner/name); "
                        "use tiny-random, toy-s, toy-m, random:llava-1.5-7b, a local folder or a hub id such as "
                        "llava-hf/llava-1.5-7b-hf")
    return name


def _from_pretrained(path: str, dtype: torch.dtype, device: str, download: bool):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    logging.getLogger("transformers").setLevel(logging.ERROR)  # e.g. the torchvision fallback notice
    is_folder = Path(path).is_dir()
    if is_folder and not (Path(path) / "config.json").is_file():
        raise UserError(f"target {path}: not a LLaVA checkpoint folder (it has no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=not download)
        if config.model_type != "llava":
            raise UserError(f"target {path} is a {config.model_type!r} checkpoint; mmvsd targets are LLaVA-1.5 "
                            "(model_type 'llava')")
        processor = AutoProcessor.from_pretrained(path, local_files_only=not download)
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=not download,
                                                              attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        if is_folder:
            raise UserError(f"target {path}: not a usable LLaVA checkpoint folder ({_short(e)})") from None
        hint = "" if download else "; pass download=true to fetch it"
        raise UserError(f"target {path!r} is not in the local Hugging Face cache{hint}") from None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise UserError(f"target {path}: its processor has no tokenizer or image processor; is it a LLaVA checkpoint?")
    return model.to(device), processor


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]
