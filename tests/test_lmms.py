"""lmms-eval end to end: the `mmvsd` model plugin (found through its entry point) runs the mmvsd
tasks on toy-world data; speculative answers and scores equal the target's own. `run_lmms_eval`
fails unless lmms-eval wrote results for every task (its CLI exits 0 on failure)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmvsd.errors import UserError
from mmvsd.lmms.runner import run_lmms_eval
from mmvsd.lmms.task_files import TEMPLATES, task_folder
from mmvsd.toyworld.data import build_datasets

TASKS = ["mmvsd_vqav2", "mmvsd_chartqa", "mmvsd_pope", "mmvsd_describe"]


def test_lmms_eval_scores_speculative_answers_exactly_as_the_targets(tmp_path):
    build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 3})
    tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
    assert task_folder(tmp_path / "home") == tasks  # made once, then found

    alone = run_lmms_eval("target=tiny-random", TASKS, tasks, tmp_path / "alone", limit=3)
    spec = run_lmms_eval("target=tiny-random,drafter=eagle,tree.depth=3,tree.top_k=2,tree.total_tokens=6", TASKS, tasks,
                         tmp_path / "spec", limit=3)
    for task, metric in zip(TASKS, ["exact_match,none", "relaxed_overall,none", "pope_accuracy,none", "chair_i,none"]):
        assert metric in alone["results"][task] and alone["n-samples"][task]["effective"] == 3
        assert alone["results"][task][metric] == spec["results"][task][metric]
        assert alone["answers"][task] == spec["answers"][task]
    assert "avg_tau" in json.dumps(spec["throughput"]) and "avg_tau" not in json.dumps(alone["throughput"])
    assert "avg_acceptance_depth_3" in json.dumps(spec["throughput"])


def test_a_released_drafter_answers_as_the_target_alone(tmp_path, tiny_target):
    """An author's checkpoint (ViSpec's layout) through the plugin: drafter=FOLDER, same answers."""
    from test_released_drafters import released

    released(tiny_target, "vispec", tmp_path / "vispec")
    build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 2})
    tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
    alone = run_lmms_eval("target=tiny-random", ["mmvsd_vqav2"], tasks, tmp_path / "alone", limit=2)
    spec = run_lmms_eval(f"target=tiny-random,drafter={tmp_path / 'vispec'}", ["mmvsd_vqav2"], tasks, tmp_path / "spec",
                         limit=2)
    assert alone["answers"]["mmvsd_vqav2"] == spec["answers"]["mmvsd_vqav2"] and "avg_tau" in json.dumps(spec["throughput"])


def test_chair_counts_stated_facts_that_are_not_in_the_image():
    from mmvsd.lmms.describe import describe_process_results, pooled_share
    from mmvsd.toyworld.data import truth_json
    from mmvsd.toyworld.scenes import Scene, Shape

    scene = Scene(shapes=(Shape("circle", "red", "large", 0.17, 0.17),), background="grey")  # top left
    doc = {"truth": truth_json(scene), "kind": "scene"}
    right = describe_process_results(doc, ["There is one shape on a grey background. "
                                           "A large red circle is in the top left corner."])
    wrong = describe_process_results(doc, ["There are two shapes on a grey background. "
                                           "A small blue square is in the top left corner."])
    assert right == {"chair_i": (0, 3), "chair_s": 0.0, "fact_recall": 1.0}
    assert wrong["chair_i"] == (2, 3) and wrong["chair_s"] == 1.0 and wrong["fact_recall"] == pytest.approx(1 / 3)
    assert pooled_share([right["chair_i"], wrong["chair_i"]]) == 2 / 6


def test_every_task_indexes_and_the_hub_switch_names_the_lmms_lab_datasets():
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    tasks = TEMPLATES
    names = set(TaskManager(include_path=str(tasks), include_defaults=False).all_tasks)
    assert {*TASKS, "mmvsd_vqav2_hub", "mmvsd_chartqa_hub", "mmvsd_pope_hub"} <= names
    for task, dataset in [("vqav2", "lmms-lab-encoder/VQAv2"), ("chartqa", "lmms-lab-encoder/ChartQA"),
                          ("pope", "lmms-lab-encoder/POPE")]:
        hub = load_yaml_config(str(tasks / "hub" / f"mmvsd_{task}_hub.yaml"), mode="simple")
        local = load_yaml_config(str(tasks / f"mmvsd_{task}.yaml"), mode="simple")
        assert hub["dataset_path"] == dataset and "token" not in hub["dataset_kwargs"]
        assert hub["generation_kwargs"] == local["generation_kwargs"]
        assert hub["process_results"].value == local["process_results"].value


@pytest.mark.slow
def test_the_runner_reports_identical_accuracy_and_speed(tmp_path):
    """`mmvsd eval` end to end on toy-s: every run checked, the report written."""
    result = subprocess.run([sys.executable, "-m", "mmvsd", "eval", "target=toy-s", "drafters=eagle", "limit=2",
                             "tree.depth=3", "tree.top_k=2", "tree.total_tokens=6", f"out={tmp_path}"],
                            capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["drafters"]["eagle"]["identical"] is True and summary["drafters"]["eagle"]["speedup"] > 0
    assert len(summary["drafters"]["eagle"]["acceptance_by_depth"]) == 3
    assert "| mmvsd_pope (pope_accuracy) |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "acceptance_by_depth.png").stat().st_size > 1000


def test_tasks_without_their_data_are_refused_in_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from mmvsd.lmms.task_files import check_task_data

    with pytest.raises(UserError, match=r"mmvsd_pope: .*data/pope_test.parquet does not exist; run `python -m mmvsd.zoo tasks`"):
        check_task_data(["mmvsd_pope"], TEMPLATES)  # the package's own YAMLs have no data beside them
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="mmvsd_pope_hub needs the Hugging Face dataset lmms-lab-encoder/POPE"):
        check_task_data(["mmvsd_pope_hub"], TEMPLATES)
    (tmp_path / "hub" / "datasets--lmms-lab-encoder--POPE").mkdir(parents=True)
    check_task_data(["mmvsd_pope_hub"], TEMPLATES)  # in the cache: lmms-eval may go on


@pytest.mark.parametrize("argv, shape", [([], "tree auto (at most 10 deep, 64 tokens)."), (["tree=short"], "tree 6/2/10.")])
def test_mmvsd_eval_passes_a_tree_only_when_one_is_named_and_reports_it(argv, shape, monkeypatch, tmp_path):
    """`mmvsd eval` leaves the plugin's own default (auto) alone unless a tree is named, then hands
    over every field; the report's first line names the tree."""
    from mmvsd import cli
    from mmvsd.lmms import report

    calls = []
    monkeypatch.setattr(report, "evaluate", lambda cfg, name, model_args, tasks: calls.append(model_args) or {})
    monkeypatch.setattr(report, "summarize", lambda cfg, alone, runs: summary)
    summary = {"target": "toy-s", "tasks": ["mmvsd_pope"], "n": {"mmvsd_pope": 2}, "alone": {"mmvsd_pope": 0.5},
               "drafters": {"eagle": {"scores": {"mmvsd_pope": 0.5}, "identical": True, "speedup": 1.1, "tau": 2.0,
                                      "acceptance_by_depth": [0.5, 0.2]}}}
    cfg = cli.parse(report.RunConfig, ["drafters=eagle", "tasks=mmvsd_pope_hub", f"out={tmp_path}", *argv])
    report.main(cfg)
    assert calls[0] == "target=toy-m"
    assert calls[1] == ("target=toy-m,drafter=eagle" if not argv else
                        "target=toy-m,drafter=eagle,tree.depth=6,tree.top_k=2,tree.total_tokens=10,tree.auto=False")
    assert (tmp_path / "report.md").read_text().splitlines()[0].endswith(shape)
