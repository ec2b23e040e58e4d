"""The bench's inputs: one JSON object per line of a JSONL file, an image and what to ask about it.

A line is either mmvsd's own `{"image": path, "prompt": text}` or a line of MMSpec's
`mmspec.jsonl` as it is: `{"id": ..., "image": "general_vqa/img_000001.png", "turns": [question,
...], "category": caption, "topic": "general vqa"}`, a conversation of one or more questions about
the image (keys the bench does not use, like `category`, are ignored). A relative image path is
looked up beside the data file, then in the `images/` folder beside it (MMSpec's layout:
`<split>/mmspec.jsonl` with `<split>/images/<topic>/...`).

A bad line becomes a Request whose error names its `file:line`; the rest of the file still loads.
`data=toy:mmspec` is a small MMSpec-style set drawn from the toy world (mmvsd.toyworld.mmspec).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmvsd.errors import UserError
from mmvsd.images import load_image

LINE_FORMS = '{"image": path, "prompt": text} or {"image": path, "turns": [text, ...]}'
TOY_SETS = ("toy:mmspec",)


@dataclass
class Request:
    name: str  # how the input is named in errors and results
    image: Image.Image | None = None
    prompt: str = ""  # the first turn: what a single-turn run asks
    error: str | None = None
    turns: list[str] = field(default_factory=list)  # every question of the conversation, in order
    topic: str | None = None  # MMSpec's topic ("general vqa", "multi-turn", ...), to report by
    id: str | None = None  # the line's own id, when it has one


def read_requests(path: str, n: int) -> tuple[list[Request], int]:
    """The first `n` inputs of the JSONL file `path` (all of them when n is 0), and how many input
    lines the file holds, so that the caller can say when it used fewer.

    `path` may also name a toy set (`toy:mmspec`). A bad line becomes a Request with an error
    naming its line; only a missing or unreadable file stops the run.
    """
    file = _toy_set(path) if path.startswith("toy:") else Path(path)
    if file.is_dir():
        raise UserError(f"data {path}: is a folder; give a JSONL file with one {LINE_FORMS} per line")
    if not file.is_file():
        raise UserError(f"data file {path}: no such file")
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # Windows editors start the file with a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"data file {path}: cannot read it as UTF-8 text ({e})") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise UserError(f"data file {path} has no inputs; each line should be {LINE_FORMS}")
    kept = numbered[:n] if n > 0 else numbered
    return [_parse_line(line, f"{file.name}:{number}", file.parent) for number, line in kept], len(numbered)


def _toy_set(path: str) -> Path:
    if path not in TOY_SETS:
        raise UserError(f"data {path}: no such toy set; the toy sets are {', '.join(TOY_SETS)}")
    from mmvsd.toyworld.mmspec import toy_mmspec

    return toy_mmspec()


def _parse_line(line: str, name: str, base: Path) -> Request:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return Request(name, error=f"{name}: not valid JSON ({e.msg})")
    problem = _line_problem(record)
    if problem:
        return Request(name, error=f"{name}: {problem}; expected {LINE_FORMS}")
    turns = record["turns"] if "turns" in record else [record["prompt"]]
    line_id = record.get("id")
    request = Request(f"{name} ({record['image']})", prompt=turns[0], turns=turns, topic=record.get("topic"),
                      id=None if line_id is None else str(line_id))
    try:
        request.image = load_image(_image_path(base, record["image"]))
    except UserError as e:
        request.error = str(e)
    return request


def _image_path(base: Path, image: str) -> Path:
    """An absolute path as it is; a relative one beside the data file, else under images/ beside it."""
    path = Path(image)
    if path.is_absolute():
        return path
    for folder in (base, base / "images"):
        if (folder / path).exists():
            return folder / path
    raise UserError(f"image {image}: no such file (looked in {base} and in {base / 'images'}); "
                    "give a path relative to the data file's folder or to the images/ folder beside it")


def _line_problem(record: object) -> str | None:
    """What is wrong with one data line's JSON value, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    problem = _text_problem(record, "image")
    if problem:
        return problem
    if "turns" in record and "prompt" in record:
        return 'both "turns" and "prompt"; give one of them'
    if "turns" in record:
        problem = _turns_problem(record["turns"])
    elif "prompt" in record:
        problem = _text_problem(record, "prompt")
    else:
        problem = 'no "prompt" or "turns"'
    if problem:
        return problem
    if "topic" in record and not isinstance(record["topic"], str):
        return f'"topic" is {_json_kind(record["topic"])}, not a string'
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))):
        return f'"id" is {_json_kind(record["id"])}, not a string or a number'
    return None


def _text_problem(record: dict, key: str) -> str | None:
    if key not in record:
        return f'no "{key}"'
    if not isinstance(record[key], str):
        return f'"{key}" is {_json_kind(record[key])}, not a string'
    if not record[key].strip():
        return f'"{key}" is empty'
    return None


def _turns_problem(turns: object) -> str | None:
    if not isinstance(turns, list):
        return f'"turns" is {_json_kind(turns)}, not a list'
    if not turns:
        return '"turns" is an empty list'
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, str):
            return f'turn {number} of "turns" is {_json_kind(turn)}, not a string'
        if not turn.strip():
            return f'turn {number} of "turns" is empty'
    return None


def _json_kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def builtin_requests(n: int, seed: int) -> list[Request]:
    """Fresh images from the plugin that provides default inputs (the toy world's scenes and
    charts) with a request for a description: long answers, the setting in which speculation
    pays off (and in which MSD and ViSpec measure it)."""
    from mmvsd.plugins import default_inputs

    inputs = default_inputs()
    rng = random.Random(f"bench-{seed}")  # a stream of its own: not the images targets are trained on
    requests = []
    for i in range(n):
        prompt = inputs.prompts[i % len(inputs.prompts)]
        requests.append(Request(f"builtin-{i}", inputs.image(rng, 336), prompt, turns=[prompt]))
    return requests
