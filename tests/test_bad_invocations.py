"""Every setting is checked before any work: a bad invocation of any entry point exits 2 with one
`error:` line, no traceback, nothing "unexpected", and no model built (checked: building any torch
module fails the test)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvsd import bench, cli, train, zoo
from mmvsd.config import BenchConfig
from mmvsd.data import answers
from mmvsd.errors import UserError

ROOT = Path(__file__).parent.parent


@pytest.fixture
def no_model(monkeypatch):
    """Any torch module built from here on is a test failure (cli.run reports it as unexpected)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


@pytest.fixture
def places(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_file.yaml").write_text("distributed_type: TPU\nnum_processes: 8\n")
    (tmp_path / "a_folder").mkdir()
    monkeypatch.setenv("MMVSD_HOME", str(tmp_path / "home"))
    return tmp_path


def run_bench(argv):
    return cli.run(BenchConfig, bench.main, "mmvsd.bench", bench.__doc__, argv)


def run_answers(argv):
    return cli.run(answers.AnswersConfig, answers.main, "mmvsd.data.answers", answers.__doc__, argv)


# (entry point, arguments with {tmp} for the test's folder, what the error line must say)
CASES = [
    (run_bench, ["device=cuda"], "device cuda: this torch build has no CUDA support"),
    (run_bench, ["device=cuda:7"], "device cuda:7: this torch build has no CUDA support"),
    (run_bench, ["device=mps"], "device mps: MPS (Apple GPUs) is not available here; this machine offers cpu"),
    (run_bench, ["device=gpu0"], "device 'gpu0' is not a torch device; this machine offers cpu"),
    (run_bench, ["json={tmp}/a_folder"], "json={tmp}/a_folder is a folder; give a file name inside it"),
    (run_bench, ["json={tmp}/a_file/out.json"], "cannot be created, {tmp}/a_file is a file"),
    (run_bench, ["temperature=inf"], "temperature must be a finite number, got inf"),
    (run_bench, ["temperature=nan"], "temperature must be a finite number, got nan"),
    (run_bench, ["temperature=-0.5"], "temperature must be >= 0"),
    (run_bench, ["top_p=0"], "top_p must be in (0, 1], got 0.0"),
    (run_bench, ["top_p=1.5"], "top_p must be in (0, 1], got 1.5"),
    (run_bench, ["top_k=-1"], "top_k must be >= 0 (0 = off), got -1"),
    (run_bench, ["temperature=-inf"], "temperature must be a finite number, got -inf"),
    (run_bench, ["n=-1"], "n must be >= 0"),
    (run_bench, ["batch_size=0"], "batch_size must be >= 1"),
    (run_bench, ["drafter=oracle", "oracle.accept=0"], "oracle.accept must be in (0, 1], got 0.0"),
    (run_bench, ["drafter=oracle", "oracle.accept=1.5"], "oracle.accept must be in (0, 1], got 1.5"),
    (run_bench, ["drafter=oracle", "oracle.accept=nan"], "oracle.accept must be in (0, 1], got nan"),
    (run_bench, ["drafter=oracle", "temperature=0.7"], "drafter=oracle replays the target's greedy output"),
    (run_bench, ["drafter=toy-m-msd", "target=toy-m", "draft_vocab=64"], "draft_vocab applies to untrained drafters"),
    (run_bench, ["target=random:llava-1.5-70b"], "target random:llava-1.5-70b: unknown; known: random:llava-1.5-7b"),
    (run_bench, ["target=random:llava-1.5-7b", "target_layers=33"], "target_layers=33: llava-1.5-7b has 32"),
    (run_bench, ["tree.top_k=0"], "tree.top_k must be >= 1"),
    (run_bench, ["target_layers=-2"], "target_layers must be >= 0"),
    (run_bench, ["data={tmp}/a_folder"], "data {tmp}/a_folder: is a folder; give a JSONL file"),
    (run_bench, ["data={tmp}/missing.jsonl"], "data file {tmp}/missing.jsonl: no such file"),
    (train.run, ["recipe=toy_msd", "output_dir={tmp}/a_file"], "output_dir={tmp}/a_file is an existing file"),
    (train.run, ["recipe=llava7b_msd"], "device cuda: this torch build has no CUDA support"),
    (train.run, ["recipe=toy_msd", "lr=inf"], "lr must be a finite number, got inf"),
    (train.run, ["recipe=toy_msd", "vsd.car_weight=nan"], "vsd.car_weight must be a finite number, got nan"),
    (train.run, ["recipe=toy_msd", "weight_decay=-1"], "weight_decay must be >= 0"),
    (train.run, ["recipe=toy_msd", "batch_size=0"], "batch_size must be >= 1"),
    (train.run, ["recipe=toy_msd", "draft_vocab=-1"], "draft_vocab must be >= 0"),
    (train.run, ["recipe=toy_msd", "drafter=toy-m-msd", "draft_vocab=64", "output_dir={tmp}/run"],
     "draft_vocab sets up a new drafter: give a kind (drafter=msd)"),
    (train.run, ["recipe=toy_msd", "data={tmp}/a_folder"], "data {tmp}/a_folder: is a folder"),
    (train.run, ["recipe=toy_msd", "data={tmp}/missing.json"], "data file {tmp}/missing.json: no such file"),
    (train.run, ["recipe=toy_msd", "data={tmp}/a_file", "image_folder={tmp}/a_file"],
     "image_folder {tmp}/a_file: is a file, not a folder"),
    (train.run, ["recipe=toy_msd", "output_dir={tmp}/a_folder", "resume=true"], "resume=true but"),
    (train.run, ["recipe=llava7b_msd", "launch_config=nope", "dry_run=true"], "launch_config nope: no such file"),
    (train.run, ["recipe=llava7b_msd", "launch_config={tmp}/a_file.yaml", "dry_run=true"],
     "distributed_type must be one of NO, MULTI_GPU, MULTI_CPU, FSDP, DEEPSPEED, got 'TPU'"),
    (zoo.run, ["tasks", "home={tmp}/a_file"], "home={tmp}/a_file is an existing file"),
    (zoo.run, ["build", "toy-x"], "unknown toy target 'toy-x'"),
    (zoo.run, ["data"], "expected `build NAME`, `report NAME`, `list`, `tasks` or `export FOLDER OUT`, got data"),
    (run_answers, ["device=cuda"], "device cuda: this torch build has no CUDA support"),
    (run_answers, ["out={tmp}/a_file"], "out={tmp}/a_file is an existing file"),
    (run_answers, ["images={tmp}/a_file"], "images {tmp}/a_file: is a file, not a folder"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device rows describe a machine without CUDA")
@pytest.mark.parametrize("entry, argv, message", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_invocation_is_one_line_before_any_model(entry, argv, message, places, no_model, capsys):
    tmp = str(places)
    assert entry([a.replace("{tmp}", tmp) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.replace("{tmp}", tmp) in lines[0]
    assert "unexpected" not in err and "Traceback" not in err


def test_an_unwritable_mmvsd_home_is_refused_before_a_build(places, no_model, capsys, monkeypatch):
    monkeypatch.setenv("MMVSD_HOME", str(places / "a_file" / "home"))
    assert zoo.run(["tasks"]) == 2
    assert f"MMVSD_HOME={places}/a_file/home: cannot be created, {places}/a_file is a file" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device rows describe a machine without CUDA")
@pytest.mark.parametrize("model_args, message", [
    ({"device": "cuda"}, "device cuda: this torch build has no CUDA support"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"tree.depth": 0}, "tree.depth must be >= 1"),
    ({"tree.depth": "deep"}, "tree.depth must be an integer, got 'deep'"),
    ({"tree": "bushy"}, "tree must be a preset (auto, narrow, short, chain, wide)"),
    ({"dtype": "float64"}, "dtype must be one of float32, bfloat16, float16"),
    ({"depth": 3}, "unknown key 'depth'; did you mean 'tree.depth'?"),
])
def test_lmms_model_args_are_checked_before_the_target_loads(model_args, message, no_model):
    from mmvsd.lmms.model import Mmvsd

    with pytest.raises(UserError) as error:
        Mmvsd(**model_args)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["-m", "mmvsd.bench", "device=cuda:1"], "error: device cuda:1: "),
    (["-m", "mmvsd.train", "recipe=toy_msd", "temperature=1"], "error: unknown key 'temperature'"),
])
def test_the_real_command_prints_one_line_and_exits_2(argv, message, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMVSD_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
