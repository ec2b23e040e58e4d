"""eval/tree_sizing.py, the harness behind the README's tree=auto table: a row on tiny-random is
merged into results.json by its key and reported, and bad settings are refused in one line."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import eval_script

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "tree_sizing.py"


def test_a_row_is_measured_merged_by_its_key_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("MMVSD_HOME", str(tmp_path / "home"))  # its own calibration
    sizing = eval_script("tree_sizing")
    (tmp_path / "results.json").write_text(json.dumps([
        {"target": "toy-m", "target_layers": 0, "vision_layers": 0, "drafter": "toy-m-msd", "n": 1,
         "max_new_tokens": 8, "sets": {"descriptions": {"auto": {"speedup": 1.5, "tau": 5.0, "tree_tokens": 9.0,
                                                                  "tree_depth": 4.0, "plain_share": 0.0}}}},
        {"target": "tiny-random", "target_layers": 0, "vision_layers": 0, "drafter": "eagle", "n": 9}]))
    cfg = sizing.SizingConfig(target="tiny-random", drafter="eagle", trees=["auto", "chain"], n=2,
                              max_new_tokens=8, out=str(tmp_path))
    sizing.main(cfg)  # raises if any output differed from the target's
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["target"], r["n"]) for r in rows] == [("toy-m", 1), ("tiny-random", 2)]  # the old tiny row replaced
    row = rows[1]["sets"]
    assert set(row) == {"descriptions", "short VQA"} and set(row["descriptions"]) == {"auto", "chain"}
    for cells in row.values():
        assert cells["chain"]["plain_share"] == 0 and cells["chain"]["speedup"] > 0
        assert 0 <= cells["auto"]["plain_share"] <= 1
    report = (tmp_path / "report.md").read_text()
    assert "### toy-m + toy-m-msd" in report and "### tiny-random + eagle, 2 inputs per set" in report
    assert "| auto | **" in report and "plain" in report


def test_unknown_trees_and_sets_are_refused_in_one_line(tmp_path):
    for arg, message in (("trees=auto,bushy", "unknown tree 'bushy'"), ("sets=essays", "unknown set 'essays'")):
        run = subprocess.run([sys.executable, str(SCRIPT), arg, f"out={tmp_path}"], capture_output=True, text=True)
        assert run.returncode != 0 and run.stderr.startswith(f"error: {message}") and run.stderr.count("\n") == 1
