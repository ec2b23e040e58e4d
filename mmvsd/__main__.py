"""`mmvsd COMMAND [key=value ...]` (or `python -m mmvsd ...`): one command, one syntax.

Every command takes `key=value` settings, `--help` (every key, its type and default) and
`dry_run=true` (the resolved settings); `python -m mmvsd.train` and the other modules still work.
"""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS = {  # name -> (module with run(argv), what it does); litgpt's subcommand table is the model
    "bench": ("mmvsd.bench", "the target alone vs speculative decoding on the same inputs, in one process"),
    "train": ("mmvsd.train", "train a drafter from a recipe (recipe=NAME), on CPU, one GPU or many"),
    "eval": ("mmvsd.lmms.report", "accuracy and speed of the target alone and each drafter through lmms-eval"),
    "demo": ("mmvsd.demo", "the Gradio demo: the target alone and speculative decoding side by side"),
    "zoo": ("mmvsd.zoo", "the toy world's targets (build, report, list), the lmms-eval task folder (tasks), a "
                         "drafter in its authors' layout (export)"),
    "answers": ("mmvsd.data.answers", "answers written by the target itself, as drafter training data"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: mmvsd COMMAND [key=value ...]   (mmvsd COMMAND --help for its keys)\n\ncommands:\n{rows}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"commands: {', '.join(COMMANDS)}"
        print(f"error: unknown command {name!r}; {hint}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).run(rest)


if __name__ == "__main__":
    sys.exit(main())
