"""`mmvsd bench` with batches (`batch_size=B`), conversations of several turns and MMSpec's data."""

import json

import pytest

from mmvsd import bench, cli
from mmvsd.config import BenchConfig
from test_bench import write_inputs


def run_bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.run(BenchConfig, bench.main, "mmvsd.bench", bench.__doc__, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_batch_decodes_the_good_rows_and_refuses_each_bad_one_in_a_line(tmp_path, capsys):
    data, n_good, expected_errors = write_inputs(tmp_path)
    with data.open("a") as f:  # a conversation cannot join a batch: refused, the rest decodes
        f.write(json.dumps({"image": "images/scene.png", "turns": ["Describe it.", "And the colours?"]}) + "\n")
    out = tmp_path / "out.json"
    code, stdout, _ = run_bench(capsys, "target=tiny-random", "drafter=eagle", f"data={data}", "batch_size=3",
                                "max_new_tokens=10", f"json={out}")
    assert code == 0
    report = json.loads(out.read_text())
    assert report["batch_size"] == 3 and report["n_prompts"] == n_good
    assert report["identical_outputs"] is True
    messages = [e["error"] for e in report["errors"]]
    assert len(messages) == len(expected_errors) + 1
    assert any("2 turns; conversations are decoded one at a time (batch_size=1)" in m for m in messages)
    assert all("\n" not in m for m in messages)
    for side in ("baseline", "speculative"):
        latency, first = report["latency_s"][side], report["time_to_first_token_s"][side]
        assert 0 < first["p50"] <= first["p90"] and 0 < latency["p50"] <= latency["p90"]
        assert first["p50"] <= latency["p50"]
    assert all(0 < r["time_to_first_token_s"] <= r["latency_s"] for r in report["per_input"])
    assert report["config"]["tree"]["auto"] is False  # a batch drafts a fixed tree in place of auto
    assert "latency p50 / p90" in stdout and "3 at a time" in stdout


def test_a_batch_that_would_not_fit_in_memory_is_refused_with_the_size_that_fits(monkeypatch, capsys):
    from mmvsd.decoding import batch

    monkeypatch.setattr(batch, "free_memory", lambda device: 40 * 2**20)  # 40 MiB free
    code, _, err = run_bench(capsys, "target=tiny-random", "drafter=eagle", "batch_size=64", "max_new_tokens=500")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: batch_size=64 needs ~") and "MiB free on cpu; batch_size=" in err
    fits = int(err.rsplit("batch_size=", 1)[1].split()[0])
    assert 1 <= fits < 64


def test_a_conversation_is_answered_turn_by_turn_and_reported_per_turn_and_topic(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (50, 40), (20, 120, 200)).save(tmp_path / "blue.png")
    lines = [{"image": "blue.png", "turns": ["describe the image", "what colour is it?", "and the shape?"],
              "topic": "multi-turn"},
             {"image": "blue.png", "prompt": "what is this?", "topic": "general vqa"}]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.json"
    code, stdout, _ = run_bench(capsys, "target=tiny-random", "drafter=eagle", f"data={data}", "tree=narrow",
                                "max_new_tokens=8", f"json={out}")
    assert code == 0
    report = json.loads(out.read_text())
    assert report["identical_outputs"] is True and report["n_prompts"] == 4  # three turns and one question
    assert set(report["per_turn"]) == {"1", "2", "3"} and report["per_turn"]["1"]["answers"] == 2
    assert set(report["per_topic"]) == {"multi-turn", "general vqa"}
    turns = [r for r in report["per_input"] if r["topic"] == "multi-turn"]
    assert [r["turn"] for r in turns] == [1, 2, 3] and turns[1]["input"].endswith("turn 2")
    assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"]  # later turns start after the earlier ones
    assert "turn 2" in stdout and "topic multi-turn" in stdout
    latency = report["latency_s"]["speculative"]  # one request after another, from the start
    assert report["time_to_first_token_s"]["speculative"]["p50"] <= latency["p50"] <= latency["p90"]


def test_a_cut_data_file_says_so(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = tmp_path / "ten.jsonl"
    data.write_text("".join(json.dumps({"image": "a.png", "prompt": f"question {i}"}) + "\n" for i in range(10)))
    out = tmp_path / "out.json"
    code, _, err = run_bench(capsys, "target=tiny-random", f"data={data}", "n=3", "max_new_tokens=2", f"json={out}")
    assert code == 0 and "the first 3 of its 10 inputs (n=3)" in err
    assert json.loads(out.read_text())["inputs_in_file"] == 10


@pytest.mark.parametrize("batch_size", [1])
def test_the_toy_mmspec_set_runs_offline_per_topic_and_turn(tmp_path, monkeypatch, capsys, batch_size):
    monkeypatch.setenv("MMVSD_HOME", str(tmp_path))
    out = tmp_path / "out.json"
    code, _, _ = run_bench(capsys, "target=toy-s", "drafter=toy-s-msd", "data=toy:mmspec", "tree=short",
                           "max_new_tokens=24", f"batch_size={batch_size}", f"json={out}")
    assert code == 0
    report = json.loads(out.read_text())
    assert report["identical_outputs"] is True and not report["errors"]
    assert len(report["per_topic"]) == 4 and "2" in report["per_turn"]
    assert report["tau"] > 1.5  # the shipped drafter is accepted on the toy world's own questions


def test_the_batch_gpu_check_script_runs_at_tiny_size_on_the_cpu(tmp_path):
    """scripts/gpu_check_batch.sh is ready for a GPU machine: the same script, settings shrunk."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check_batch.sh"
    env = {**os.environ, "TARGET": "tiny-random", "DEVICE": "cpu", "DTYPE": "float32", "PROMPT_CHARS": "120",
           "N": "5", "MAX_NEW": "16", "SIZES": "1 3",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # its `python` is this one
    result = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("identical outputs    yes") == 2
    report = json.loads((tmp_path / "batch_3.json").read_text())
    assert report["batch_size"] == 3 and report["identical_outputs"] is True and report["tau"] > 2
