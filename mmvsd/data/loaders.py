"""Drafter training data from files: LLaVA-format conversations with an image folder (e.g.
llava_v1_5_mix665k.json), ShareGPT conversations (text only), and answers written by the target
itself (JSONL of {"image", "prompt", "answer"}).

Real datasets have holes: a record whose image is missing or unreadable, or whose turns are
malformed, is skipped and counted by reason, never fatal. A file that cannot be read at all, or
that yields no usable record, is refused with one line.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmvsd.errors import UserError
from mmvsd.models.chat import IMAGE_PLACEHOLDER

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}


@dataclass
class Record:
    turns: list[tuple[str, str]]  # (user text, assistant answer); the image placeholder removed
    image: Path | None  # None: a text-only conversation


@dataclass
class Loaded:
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    _orders: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def order(self, stream: str) -> list[int]:
        """Record indices in the seeded order of `stream` (shuffled once per stream)."""
        if stream not in self._orders:
            self._orders[stream] = list(range(len(self.records)))
            random.Random(stream).shuffle(self._orders[stream])
        return self._orders[stream]

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "none"
        return f"{len(self.records)} records used; skipped: {skipped}"


def load_records(path: str | Path, image_folder: str | Path | None = None) -> Loaded:
    """Read a .json (LLaVA or ShareGPT: a list of {"conversations": [...]}) or a .jsonl of target
    answers; image paths are relative to `image_folder` (default: the data file's folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"data {path}: is a folder; give the conversations file itself (.json or .jsonl)")
    if not path.is_file():
        raise UserError(f"data file {path}: no such file")
    folder = Path(image_folder).expanduser() if image_folder else path.parent
    if image_folder and not folder.is_dir():
        raise UserError(f"image_folder {folder}: {'is a file, not a folder' if folder.exists() else 'no such folder'}")
    try:
        text = path.read_text(encoding="utf-8")
        items = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"data file {path}: not valid JSON{'L' if path.suffix == '.jsonl' else ''} ({e})") from None
    if not isinstance(items, list):
        raise UserError(f"data file {path}: expected a list of records, got {type(items).__name__}")
    loaded = Loaded([])
    for item in items:
        record, problem = _parse(item, folder)
        if problem:
            loaded.skipped[problem] += 1
        else:
            loaded.records.append(record)
    if not loaded.records:
        raise UserError(f"data file {path}: no usable record ({loaded.summary()})")
    return loaded


def _parse(item, folder: Path) -> tuple[Record | None, str | None]:
    """A record, or the reason it cannot be used."""
    if not isinstance(item, dict):
        return None, "not an object"
    if "conversations" in item:
        turns = _turns(item["conversations"])
        if turns is None:
            return None, "malformed conversations"
    elif isinstance(item.get("prompt"), str) and isinstance(item.get("answer"), str):
        turns = [(item["prompt"], item["answer"])]
    else:
        return None, "neither conversations nor prompt/answer"
    image = item.get("image")
    if image is None:
        return Record(turns, None), None
    if not isinstance(image, str):
        return None, "image is not a path"
    image_path = folder / image
    if not image_path.is_file():
        return None, "missing image"
    return Record(turns, image_path), None


def _turns(conversation) -> list[tuple[str, str]] | None:
    """(user, assistant) pairs; None when roles do not alternate user -> assistant or texts are empty."""
    if not isinstance(conversation, list) or not conversation:
        return None
    turns, pending = [], None
    for message in conversation:
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            return None
        role = ROLES.get(str(message.get("from", "")).lower())
        text = message["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if role == "user" and pending is None and text:
            pending = text
        elif role == "assistant" and pending is not None and text:
            turns.append((pending, text))
            pending = None
        else:
            return None
    return turns or None
