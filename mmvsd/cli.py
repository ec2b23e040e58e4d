"""The `key=value` command line shared by every entry point.

Precedence: dataclass defaults < recipe YAML (`recipe=NAME` or a YAML path, training only) <
`key=value` arguments. Values are converted by the field's declared type, so a string stays a
string; nested configs take dotted keys (`tree.depth=6`). Unknown keys are refused with the
closest valid key. `run()` wraps an entry point: `--help`, `dry_run=true`, and one-line errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmvsd.errors import UserError

T = TypeVar("T")
# recipes/ sits beside the package in a checkout, and inside it once installed (pyproject.toml maps it there)
RECIPES_DIR = next((d for d in (Path(__file__).parent / "recipes", Path(__file__).parents[1] / "recipes") if d.is_dir()),
                   Path(__file__).parent / "recipes")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
PRESET = "<preset>"  # where `group=NAME` is kept among the group's fields until the group is built


def parse(cls: type[T], argv: Sequence[str], recipes_dir: Path | None = None) -> T:
    """Build a `cls` from `key=value` arguments (and `recipe=...` when `recipes_dir` is given)."""
    overrides: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {arg!r} (see --help)")
        overrides[key.strip()] = value
    values: dict[str, Any] = {}
    if recipes_dir is not None and "recipe" in overrides:
        values = load_recipe(overrides.pop("recipe"), recipes_dir)
    for key, value in overrides.items():
        _set_dotted(values, key, value)
    return _build(cls, values, "")


def load_recipe(name: str, recipes_dir: Path) -> dict[str, Any]:
    """Read `recipes_dir/NAME.yaml`, or a YAML file by path, as a nested dict."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else recipes_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(known) or 'none'}"
        raise UserError(f"recipe {name!r} not found ({path}); {hint}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path} is not valid YAML: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of key: value, got {type(data).__name__}")
    return data


def _set_dotted(values: dict[str, Any], key: str, value: str) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        if isinstance(node.get(part), str):  # a preset (`tree=short`), now refined field by field
            node[part] = {PRESET: node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"key {key!r}: {part!r} is not a group of settings")
    node[leaf] = value  # a preset for a group replaces whatever the group held: the last word wins


def _build(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = prefix + name
        if name not in fields:
            raise UserError(f"unknown key {key!r}{_suggest(key, cls, prefix)}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, _with_preset(tp, value, key), key + ".")
        else:
            kwargs[name] = coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field was not given
        raise UserError(f"{cls.__name__}: {_one_line(e)}") from None


def _with_preset(group: type, value: Any, key: str) -> dict[str, Any]:
    """A group's values: `tree=NAME` (a str, or {PRESET: NAME} plus fields) starts from the preset."""
    presets = group.presets() if hasattr(group, "presets") else {}
    if isinstance(value, str):
        value = {PRESET: value}
    if not isinstance(value, dict) or (PRESET in value and not presets):
        raise UserError(f"{key} is a group of settings; set its fields as {key}.<name>=value")
    if PRESET not in value:
        return value
    name = str(value[PRESET])
    if name not in presets:
        raise UserError(f"{key} must be a preset ({', '.join(presets)}) or set field by field as {key}.<name>=value; "
                        f"got {name!r}")
    return {**dataclasses.asdict(presets[name]), **{k: v for k, v in value.items() if k != PRESET}}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a CLI string or YAML value to the declared type `tp`, or say what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or str(value).strip().lower() in ("null", "none", "")):
            return None
        return coerce(value, inner[0], key)
    if origin is Literal:
        if str(value) not in [str(a) for a in args]:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return next(a for a in args if str(a) == str(value))
    if origin is list:
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        return [coerce(v, args[0], key) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise UserError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise UserError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{key} must be a single value, got {value!r}")
        return str(value)
    raise TypeError(f"config field {key} has a type the parser does not handle: {tp}")


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(key: str, cls: type, prefix: str) -> str:
    candidates = [prefix + k for k in all_keys(cls)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # a bare leaf name that lives in a group, e.g. depth= for tree.depth=
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    return f"; did you mean {close[0]!r}?" if close else "; see --help for the valid keys"


def help_text(cls: type, prog: str, doc: str, recipes: bool = False) -> str:
    """Usage, the entry point's description and every key with its type, default and help."""
    lines = [f"usage: {prog} {'recipe=NAME ' if recipes else ''}[key=value ...]", "", doc.strip(), ""]
    if recipes:
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        lines += [f"recipes ({RECIPES_DIR}): {', '.join(names) or 'none'}", ""]
    lines.append("keys:")
    rows = [(f"{key}={default!s}", text, tp) for key, tp, default, text in _describe(cls, "")]
    width = max(len(setting) for setting, _, _ in rows)
    lines += [f"  {setting:<{width}}  {text}  [{tp}]" for setting, text, tp in rows]
    return "\n".join(lines)


def _describe(cls: type, prefix: str, instance: Any = None) -> list[tuple[str, str, Any, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    instance = cls() if instance is None else instance
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(instance, f.name)
        if dataclasses.is_dataclass(tp):
            if hasattr(tp, "presets"):
                shapes = ", ".join(f"{name} ({'/'.join(str(v) for v in dataclasses.astuple(c) if not isinstance(v, bool))})"
                                   for name, c in tp.presets().items())
                named = next((name for name, c in tp.presets().items() if c == default), "custom")
                rows.append((prefix + f.name, "preset", named, f"a preset: {shapes}; or the fields below"))
            rows += _describe(tp, prefix + f.name + ".", default)
            continue
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        text = f.metadata.get("help", "")
        rows.append((prefix + f.name, _type_name(tp), shown, text() if callable(text) else text))
    return rows


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"comma-separated {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML that `recipe=PATH` reads back."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)


def _one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 400 else text[:397] + "..."


def run(cls: type[T], main: Callable[[T], None], prog: str, doc: str,
        argv: Sequence[str] | None = None, recipes: bool = False,
        explain: Callable[[T], str] | None = None) -> int:
    """Parse, honour --help and dry_run=true (the resolved config, then `explain(cfg)` as YAML
    comments), size torch's thread pool (`threads=`), call `main`, and turn failures into one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help", "help") for a in argv):
            print(help_text(cls, prog, doc, recipes))
            return 0
        cfg = parse(cls, argv, RECIPES_DIR if recipes else None)
        if getattr(cfg, "dry_run", False):
            comments = explain(cfg) if explain is not None else ""  # may refuse: before anything is printed
            print(to_yaml(cfg) + "".join(f"# {line}\n" for line in comments.splitlines()), end="")
            return 0
        if hasattr(cfg, "threads"):
            from mmvsd.threads import configure_threads

            configure_threads(cfg.threads)
        main(cfg)
        return 0
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("MMVSD_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (MMVSD_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
