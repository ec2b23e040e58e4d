"""The key=value parser: typed conversion, nesting, recipes, and refusals that name the fix."""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mmvsd import cli
from mmvsd.config import BenchConfig, opt
from mmvsd.errors import UserError


@dataclass
class Inner:
    depth: int = 3
    ratio: float = 0.5


@dataclass
class Example:
    name: str = "run"
    steps: int = 10
    lr: float = 1e-3
    flag: bool = False
    maybe: int | None = None
    mode: Literal["fast", "slow"] = "fast"
    layers: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = opt(Inner, "a group")
    dry_run: bool = False


@pytest.mark.parametrize("argv, attr, expected", [
    (["name=0e12345"], "name", "0e12345"),  # a string stays a string (no YAML reinterpretation)
    (["name=001"], "name", "001"),
    (["name=true"], "name", "true"),
    (["steps=7"], "steps", 7),
    (["steps=1_000"], "steps", 1000),
    (["lr=1e-4"], "lr", 1e-4),
    (["lr=3"], "lr", 3.0),
    (["flag=true"], "flag", True),
    (["flag=NO"], "flag", False),
    (["maybe=null"], "maybe", None),
    (["maybe=5"], "maybe", 5),
    (["mode=slow"], "mode", "slow"),
    (["layers=4,5,6"], "layers", [4, 5, 6]),
    (["inner.depth=9"], "inner", Inner(9, 0.5)),
    (["steps=1", "steps=2"], "steps", 2),  # the last one wins
    (["name=a=b"], "name", "a=b"),  # only the first '=' splits
])
def test_values_are_converted_by_declared_type(argv, attr, expected):
    assert getattr(cli.parse(Example, argv), attr) == expected


@pytest.mark.parametrize("argv, message", [
    (["stpes=3"], "did you mean 'steps'"),
    (["inner.dept=3"], "did you mean 'inner.depth'"),
    (["depth=3"], "did you mean 'inner.depth'"),
    (["steps=ten"], "steps must be an integer, got 'ten'"),
    (["lr=fast"], "lr must be a number"),
    (["flag=maybe"], "flag must be true or false"),
    (["mode=medium"], "mode must be one of fast, slow"),
    (["inner=3"], "inner is a group of settings"),
    (["steps"], "expected key=value"),
    (["--steps=3"], "unknown key '--steps'"),
])
def test_bad_arguments_are_refused_with_the_fix(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        cli.parse(Example, argv)


def test_recipe_then_command_line_precedence(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 50\nlr: '2e-4'\ninner:\n  depth: 7\n")
    cfg = cli.parse(Example, ["recipe=base", "steps=60"], recipes_dir=tmp_path)
    assert (cfg.steps, cfg.lr, cfg.inner.depth, cfg.name) == (60, 2e-4, 7, "run")
    by_path = cli.parse(Example, [f"recipe={tmp_path / 'base.yaml'}"], recipes_dir=tmp_path)
    assert by_path.steps == 50


@pytest.mark.parametrize("text, message", [
    ("steps: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("stepz: 3\n", "did you mean 'steps'"),
])
def test_bad_recipes_are_refused(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        cli.parse(Example, ["recipe=bad"], recipes_dir=tmp_path)


def test_unknown_recipe_suggests_the_closest(tmp_path):
    (tmp_path / "toy_msd.yaml").write_text("steps: 1\n")
    with pytest.raises(UserError, match="did you mean 'toy_msd'"):
        cli.parse(Example, ["recipe=toy_mds"], recipes_dir=tmp_path)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = cli.parse(Example, ["name=0e5", "layers=3", "inner.ratio=0.25", "maybe=4"])
    (tmp_path / "run.yaml").write_text(cli.to_yaml(cfg))
    assert cli.parse(Example, [f"recipe={tmp_path / 'run.yaml'}"], recipes_dir=tmp_path) == cfg


@pytest.mark.parametrize("argv, message", [
    (["max_new_tokens=0"], "max_new_tokens must be >= 1"),
    (["max_new_tokens=-5"], "max_new_tokens must be >= 1"),
    (["temperature=-1"], "temperature must be >= 0"),
    (["top_p=0"], "top_p must be in"),
    (["tree.depth=0"], "tree.depth must be >= 1"),
    (["n=-1"], "n must be >= 0"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["batch_size=2", "assistant=tiny-random"], "use batch_size=1"),
    (["dtype=float64"], "dtype must be one of"),
])
def test_bench_config_validation(argv, message):
    with pytest.raises(UserError, match=message):
        cli.parse(BenchConfig, argv)


def test_help_lists_every_key_with_its_default():
    text = cli.help_text(BenchConfig, "mmvsd.bench", "Bench.")
    for key in cli.all_keys(BenchConfig):
        assert f"  {key}=" in text
    assert "tree=auto" in text and "tree.total_tokens=64" in text and "data=null" in text
    assert "auto (10/2/64)" in text and "short (6/2/10)" in text  # the presets, listed once


@pytest.mark.parametrize("argv, shape", [
    ([], (10, 2, 64)),  # auto: the bench's default, at most 10 deep and 64 tokens
    (["tree.top_k=3"], (10, 3, 16)),  # a field alone: auto off, the other fields narrow's
    (["tree=short"], (6, 2, 10)),
    (["tree=chain", "tree.depth=12"], (12, 1, 8)),  # a field on top of a preset
    (["tree.depth=3", "tree=wide"], (5, 8, 24)),  # a later preset replaces earlier fields: the last word wins
    (["recipe=fields"], (4, 1, 4)),
    (["recipe=fields", "tree=short"], (6, 2, 10)),
    (["recipe=named"], (8, 1, 8)),  # a recipe names a preset as a plain value
    (["recipe=named", "tree.top_k=3"], (8, 3, 8)),
])
def test_tree_presets_and_fields(argv, shape, tmp_path):
    (tmp_path / "fields.yaml").write_text("tree:\n  depth: 4\n  top_k: 1\n  total_tokens: 4\n")
    (tmp_path / "named.yaml").write_text("tree: chain\n")
    cfg = cli.parse(BenchConfig, argv, recipes_dir=tmp_path)
    assert (cfg.tree.depth, cfg.tree.top_k, cfg.tree.total_tokens) == shape
    assert cfg.tree.auto == (argv == [])


def test_run_prints_one_line_errors_and_dry_run(capsys):
    assert cli.run(BenchConfig, lambda cfg: None, "mmvsd.bench", "Bench.", ["max_new_tokens=zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: max_new_tokens must be an integer") and err.count("\n") == 1
    assert cli.run(BenchConfig, lambda cfg: None, "mmvsd.bench", "Bench.", ["dry_run=true", "tree.depth=7"]) == 0
    assert "depth: 7" in capsys.readouterr().out


def test_one_mmvsd_command_lists_and_dispatches_its_subcommands(capsys):
    from mmvsd.__main__ import COMMANDS, main

    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {name}" in listing for name in ("bench", "train", "eval", "demo", "zoo", "answers"))
    assert main(["bnech"]) == 2 and "unknown command 'bnech'; did you mean 'bench'?" in capsys.readouterr().err
    for name in COMMANDS:  # every subcommand takes --help the same way
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: mmvsd {name}")
    assert main(["bench", "tree=short", "dry_run=true"]) == 0 and "top_k: 2" in capsys.readouterr().out


def test_the_installed_console_script_runs():
    import shutil
    import subprocess

    script = shutil.which("mmvsd", path=str(Path(sys.executable).parent))
    assert script, "the mmvsd console script is not installed next to this Python (pip install -e .)"
    result = subprocess.run([script, "train", "recipe=toy_msd", "dry_run=true"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "drafter: msd" in result.stdout, result.stderr
