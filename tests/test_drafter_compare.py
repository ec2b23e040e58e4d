"""eval/drafter_compare.py: which words count as image words, which tokens came from the draft,
and (slow) the whole comparison at a tiny size on toy-s."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import eval_script

from mmvsd.decoding.speculative import Step

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "drafter_compare.py"


def test_image_words_are_what_only_the_image_tells():
    words = eval_script("drafter_compare").image_words()
    assert {"red", "circle", "circles", "three", "7", "large", "left", "beige", "light", "Tue".lower(), "yes"} <= words
    assert not {"the", "is", "shape", "shapes", "image", "chart", "value", "background", ".", ""} & words


def test_drafted_tokens_flag_the_accepted_path_and_not_the_bonus():
    drafted_tokens = eval_script("drafter_compare").drafted_tokens
    tree = object()  # only a verification step's presence of a tree matters here
    steps = [Step([1], 0.0),  # the prefill's token: not a verification step, left out
             Step([5, 6, 7], 0.0, tree, [0, 3, 4]),  # two accepted draft tokens, then the bonus
             Step([8], 0.0, tree, [0]),  # nothing accepted: the bonus only
             Step([9, 2], 0.0, tree, [0, 1, 2, 3])]  # cut at EOS after two of three accepted tokens
    assert drafted_tokens(steps) == [(5, True), (6, True), (7, False), (8, False), (9, True), (2, True)]


def test_bad_settings_are_refused_in_one_line():
    for args, words in ((["kinds=eagle,medusa"], "unknown drafter 'medusa'"), (["n=0"], "n must be >= 1")):
        result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_comparison_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "cmp"
    result = subprocess.run([sys.executable, str(SCRIPT), "target=toy-s", "kinds=eagle,vispec", "steps=4", "vsd_steps=2",
                             "n=1", "max_new_tokens=12", "jobs=1", f"out={out}"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["kind"], r["label"]) for r in rows] == [("eagle", "baseline"), ("vispec", "baseline"),
                                                       ("eagle", "no VSD"), ("eagle", "VSD"),
                                                       ("vispec", "no VSD"), ("vispec", "VSD")]
    for row in rows:
        for name in ("scene descriptions", "chart descriptions", "short VQA"):
            cell = row[name]
            assert cell["tau"] >= 1 and cell["speedup"] > 0
            assert 0 <= cell["image_drafted"] <= 1 and 0 <= cell["template_drafted"] <= 1
            assert cell["image_tokens"] + cell["template_tokens"] > 0
    assert "| vispec, VSD |" in (out / "report.md").read_text() and (out / "drafters.png").stat().st_size > 0
