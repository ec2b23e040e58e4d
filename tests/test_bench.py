"""`python -m mmvsd.bench` on a mixed set of real-looking and broken inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmvsd import bench, cli
from mmvsd.config import BenchConfig
from mmvsd.toyworld.scenes import draw_scene, random_scene

ROOT = Path(__file__).resolve().parent.parent


def write_inputs(folder: Path) -> tuple[Path, int, dict[str, str]]:
    """A JSONL mixing good inputs and broken ones; returns (file, good count, {input: expected error})."""
    import random

    rng = random.Random(0)
    images = folder / "images"
    images.mkdir()
    draw_scene(random_scene(rng), 256).save(images / "scene.png")
    draw_scene(random_scene(rng), 300).convert("L").save(images / "gray.jpg")
    Image.new("RGBA", (120, 80), (0, 128, 255, 100)).save(images / "rgba.png")
    Image.new("P", (64, 64), 7).save(images / "palette.gif")
    Image.new("1", (33, 17), 1).save(images / "bilevel.bmp")
    Image.new("RGB", (1, 1), (200, 0, 0)).save(images / "pixel.png")
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("not a picture")
    (images / "cut.png").write_bytes((images / "scene.png").read_bytes()[:300])
    good = [
        {"image": "images/scene.png", "prompt": "Describe the image in detail."},
        {"image": "images/gray.jpg", "prompt": "How many shapes are there?"},
        {"image": "images/rgba.png", "prompt": "Quelle est la couleur dominante ?"},
        {"image": "images/palette.gif", "prompt": "この画像を説明してください。"},
        {"image": "images/bilevel.bmp", "prompt": "Is there a circle? 🤔"},
        {"image": "images/pixel.png", "prompt": "What is this?"},
    ]
    bad = {
        "images/missing.png": ({"image": "images/missing.png", "prompt": "hi"}, "no such file"),
        "images/empty.png": ({"image": "images/empty.png", "prompt": "hi"}, "the file is empty"),
        "images/text.jpg": ({"image": "images/text.jpg", "prompt": "hi"}, "not an image file"),
        "images/cut.png": ({"image": "images/cut.png", "prompt": "hi"}, "cannot decode"),
        "empty prompt": ({"image": "images/scene.png", "prompt": "   \n"}, '"prompt" is empty'),
        "null prompt": ({"image": "images/scene.png", "prompt": None}, '"prompt" is null, not a string'),
        "number prompt": ({"image": "images/scene.png", "prompt": 42}, '"prompt" is a number, not a string'),
        "list prompt": ({"image": "images/scene.png", "prompt": ["a"]}, '"prompt" is a list, not a string'),
        "no prompt": ({"image": "images/scene.png"}, 'no "prompt"'),
        "object image": ({"image": {"path": "a.png"}, "prompt": "hi"}, '"image" is an object, not a string'),
        "folder image": ({"image": "images", "prompt": "hi"}, "is a folder, not an image file"),
        "a list line": (["images/scene.png", "hi"], "a JSON list, not an object"),
        "long prompt": ({"image": "images/scene.png", "prompt": "why " * 400}, "the prompt is too long"),
        "placeholder": ({"image": "images/scene.png", "prompt": "what is <image>?"}, "reserved"),
        "no image key": ({"prompt": "hi"}, 'no "image"; expected {"image": path, "prompt": text}'),
    }
    lines = [json.dumps(r, ensure_ascii=False) for r in good] + [json.dumps(r) for r, _ in bad.values()]
    lines.append("{not json")
    path = folder / "inputs.jsonl"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    expected = {name: message for name, (_, message) in bad.items()}
    expected["not json"] = "not valid JSON"
    return path, len(good), expected


def test_bench_on_mixed_inputs_is_identical_and_lists_every_error(tmp_path):
    data, n_good, expected_errors = write_inputs(tmp_path)
    out = tmp_path / "out.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "mmvsd.bench", "target=tiny-random", "drafter=eagle", f"data={data}",
                          f"json={out}", "n=100", "max_new_tokens=12"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    report = json.loads(out.read_text())
    for key in ("speedup", "tau", "baseline_tokens_per_s", "speculative_tokens_per_s", "identical_outputs",
                "n_prompts", "errors", "acceptance_by_depth"):
        assert key in report
    assert report["identical_outputs"] is True
    assert report["n_prompts"] == n_good
    assert len(report["errors"]) == len(expected_errors)
    messages = " | ".join(e["error"] for e in report["errors"])
    for message in expected_errors.values():
        assert message in messages
    assert 1.0 <= report["tau"] <= report["config"]["tree"]["depth"] + 1
    assert "speed-up" in run.stdout and "skipped:" in run.stdout


@pytest.mark.parametrize("argv, message", [
    (["data=/no/such/file.jsonl"], "error: data file /no/such/file.jsonl: no such file"),
    (["data=/tmp"], "error: data /tmp: is a folder; give a JSONL file"),
    (["max_new_tokens=0"], "error: max_new_tokens must be >= 1"),
    (["max_new_token=5"], "did you mean 'max_new_tokens'"),
    (["drafter=/no/drafter"], "error: drafter '/no/drafter': not a folder, a drafter kind"),
    (["target=/no/target"], "error: target '/no/target': no such folder"),
    (["temperature=hot"], "error: temperature must be a number"),
])
def test_bad_arguments_exit_with_one_line(argv, message, capsys):
    assert cli.run(BenchConfig, bench.main, "mmvsd.bench", bench.__doc__, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_all_inputs_broken_is_an_error(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"image": "nope.png", "prompt": "hi"}\n')
    assert cli.run(BenchConfig, bench.main, "mmvsd.bench", bench.__doc__, [f"data={data}"]) == 2
    assert "none of the 1 inputs could be used" in capsys.readouterr().err


def test_sampling_run_reports_no_identity_claim(tmp_path):
    out = tmp_path / "t1.json"
    cfg = cli.parse(BenchConfig, ["n=2", "max_new_tokens=6", "temperature=1.0", f"json={out}"])
    bench.main(cfg)
    report = json.loads(out.read_text())
    assert report["identical_outputs"] is None and report["n_prompts"] == 2


def test_assisted_generation_peer_runs_on_the_same_inputs(tmp_path):
    """transformers' generate(assistant_model=...) as a peer: greedy, it must reproduce plain generate."""
    out = tmp_path / "peer.json"
    cfg = cli.parse(BenchConfig, ["n=2", "max_new_tokens=8", "assistant=tiny-random", f"json={out}"])
    bench.main(cfg)
    peer = json.loads(out.read_text())["assisted"]
    assert peer["identical_outputs"] is True and peer["assisted_tokens_per_s"] > 0
    assert peer["speedup_vs_target_alone"] > 0 and peer["assistant"] == "tiny-random"


def test_a_bad_assistant_is_refused_before_any_timing(capsys):
    assert cli.run(BenchConfig, bench.main, "mmvsd.bench", bench.__doc__, ["assistant=/no/such/model", "n=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: assistant: target '/no/such/model'") and "bench" not in err
