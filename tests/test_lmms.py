"""lmms-eval end to end: the `mmvsd` model plugin (found through its entry point) runs the mmvsd
tasks on toy-world data; speculative answers and scores equal the target's own. `run_lmms_eval`
fails unless lmms-eval wrote results for every task (its CLI exits 0 on failure)."""

import json
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


def with_batch_size(monkeypatch, size: str):
    """run_lmms_eval, but with `--batch_size size` on lmms-eval's command line."""
    from mmvsd.lmms import runner

    real = subprocess.run

    def run(command, **kwargs):
        command = list(command)
        command[command.index("--batch_size") + 1] = size
        return real(command, **kwargs)

    monkeypatch.setattr(runner.subprocess, "run", run)


def test_a_batch_of_requests_answers_each_as_batch_size_1_does(tmp_path, monkeypatch):
    """--batch_size 3 over toy-s with its drafter: rows of different lengths joining and leaving,
    and every answer, score and metric name that of --batch_size 1."""
    build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 3})
    tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
    names, args = ["mmvsd_describe", "mmvsd_vqav2"], "target=toy-s,drafter=toy-s-msd,tree=short"
    one = run_lmms_eval(args, names, tasks, tmp_path / "one", limit=4)
    with monkeypatch.context() as patch:
        with_batch_size(patch, "3")
        three = run_lmms_eval(args, names, tasks, tmp_path / "three", limit=4)
    assert three["config"]["batch_size"] == "3" and three["answers"] == one["answers"]
    assert three["results"] == one["results"]
    assert len(set(map(len, one["answers"]["mmvsd_describe"]))) > 1  # answers of different lengths
    assert "avg_tau" in three["throughput"] and "avg_acceptance_depth_6" in three["throughput"]


@pytest.mark.parametrize("size", ["auto", "auto:4", "0", "2.5"])
def test_a_batch_size_that_is_not_a_whole_number_is_refused_in_one_line(size, tmp_path, monkeypatch):
    from mmvsd.lmms.model import parse_batch_size

    with pytest.raises(UserError, match=rf"^--batch_size {size}: mmvsd takes a whole number .*; e.g. --batch_size 8$"):
        parse_batch_size(size)
    if size == "auto":  # through lmms-eval: refused before the target loads, the last line of its output
        build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 1})
        tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
        with_batch_size(monkeypatch, size)
        with pytest.raises(UserError, match=r"UserError: --batch_size auto: mmvsd takes a whole number"):
            run_lmms_eval("target=toy-s", ["mmvsd_pope"], tasks, tmp_path / "out", limit=1)


def test_a_multi_round_task_is_one_conversation_whose_answers_are_the_targets(tmp_path):
    """mmvsd_vqav2_dialogue (lmms-eval's generate_until_multi_round): the drafter's answers are the
    target's, and each round's is what toy-s alone answers from a fresh prefill of the whole
    conversation so far (image, questions, its own earlier answers): not from each question alone."""
    import torch
    from datasets import load_dataset
    from lmms_eval.tasks.vqav2.utils import vqav2_doc_to_visual
    from lmms_eval.utils import load_yaml_config

    from mmvsd.config import DecodeConfig
    from mmvsd.decoding.speculative import autoregressive_generate, collect_tokens
    from mmvsd.lmms.tasks.dialogue import dialogue_doc_to_text, vqav2_conversations
    from mmvsd.models import load_target
    from mmvsd.models.chat import user_turn
    from mmvsd.models.llava import Prompt

    build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 12})
    tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
    task = ["mmvsd_vqav2_dialogue"]
    alone = run_lmms_eval("target=toy-s", task, tasks, tmp_path / "alone")
    spec = run_lmms_eval("target=toy-s,drafter=toy-s-msd,tree=short", task, tasks, tmp_path / "spec")
    assert spec["answers"] == alone["answers"] and spec["results"] == alone["results"]
    assert "avg_tau" in spec["throughput"]

    config = load_yaml_config(str(tasks / "mmvsd_vqav2_dialogue.yaml"), mode="simple")
    kwargs, cfg = config["lmms_eval_specific_kwargs"]["default"], DecodeConfig(max_new_tokens=16)
    docs = vqav2_conversations(load_dataset("parquet", data_files=str(tasks / "data" / "vqav2_test.parquet"))["train"])
    target = load_target("toy-s")

    def answer(ids: torch.Tensor, pixels: torch.Tensor) -> list[int]:
        return collect_tokens(autoregressive_generate(target, Prompt(ids, pixels, ""), cfg))

    conversations, alone_questions = [], []
    for doc in docs:
        image, questions = vqav2_doc_to_visual(doc)[0], [dialogue_doc_to_text(doc, kwargs)]
        questions += [dialogue_doc_to_text(doc, kwargs, round_idx=k)[1] for k in range(1, len(doc["rounds"]))]
        first = target.encode(image, questions[0], cfg.max_new_tokens)
        ids, answers = first.input_ids, []
        for k, question in enumerate(questions):
            if k:  # the next user turn, after the answer and the EOS that closes it (the chat format's)
                turn = target.tokenizer(user_turn(question.strip(), image=False), add_special_tokens=False)
                ids = torch.cat([ids, ids.new_tensor(turn["input_ids"])])
            tokens = answer(ids, first.pixel_values)
            ids = torch.cat([ids, ids.new_tensor(tokens + ([] if tokens[-1] in target.eos_token_ids
                                                           else [min(target.eos_token_ids)]))])
            answers.append(target.decode(tokens).split("\n")[0].strip())
        conversations.append(answers)
        alone_questions.append([target.decode(answer(p.input_ids, p.pixel_values)).split("\n")[0].strip()
                                for p in (target.encode(image, q, cfg.max_new_tokens) for q in questions)])
    assert alone["answers"]["mmvsd_vqav2_dialogue"] == conversations
    assert all(len(answers) == 2 for answers in conversations)  # every conversation went past its first round
    assert conversations != alone_questions  # the earlier rounds changed an answer: they were in the context


def test_a_row_that_cannot_be_encoded_is_refused_naming_its_task_and_doc(tiny_target, tmp_path, monkeypatch):
    """Batched or not, a prompt too long for the context or an unreadable image stops the run with
    one line naming the task and document (batched: before its batch decodes)."""
    import random
    import re
    from types import SimpleNamespace

    from conftest import random_image

    from mmvsd.lmms import model

    monkeypatch.setattr(model, "load_target", lambda *args: tiny_target)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    docs = [("what shape is it?", random_image(random.Random(0))), ("why? " * 3000, random_image(random.Random(1))),
            ("what colour is it?", str(tmp_path / "broken.png"))]
    gen_kwargs = {"max_new_tokens": 4, "until": ["\n"]}

    def messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": doc[1]}, {"type": "text", "text": doc[0]}]}]

    for batch_size, shown in [("1", [0, 1]), ("3", [0, 1]), ("3", [0, 2])]:
        plugin = model.Mmvsd(batch_size=batch_size, target="tiny-random")
        plugin.task_dict = {"toy": {"test": docs}}
        requests = [SimpleNamespace(args=("", messages, gen_kwargs, i, "toy", "test")) for i in shown]
        bad = shown[1]
        problem = "the prompt is too long: " if bad == 1 else re.escape(f"image {tmp_path / 'broken.png'}: ")
        with pytest.raises(UserError, match=rf"^toy doc {bad}: {problem}[^\n]*$"):
            plugin.generate_until(requests)


def test_two_processes_answer_every_document_once_as_one_process_does(tmp_path):
    """torchrun with 2 CPU processes (gloo): lmms-eval gives each its share of the documents through
    the plugin's rank and world size; every document is answered exactly once, with the scores and
    answers of a 1-process run, target alone and with a drafter, and the speed metrics cover both
    processes' requests."""
    build_datasets(tmp_path / "toy", seed=0, image_size=128, sizes={"train": 1, "validation": 1, "test": 3})
    tasks = task_folder(tmp_path / "home", datasets=tmp_path / "toy")
    chosen = ["mmvsd_vqav2", "mmvsd_pope"]
    one = run_lmms_eval("target=tiny-random", chosen, tasks, tmp_path / "one", limit=5)
    two = run_lmms_eval("target=tiny-random", chosen, tasks, tmp_path / "two", limit=5, processes=2)
    spec = run_lmms_eval("target=tiny-random,drafter=eagle,tree=narrow", chosen, tasks, tmp_path / "spec", limit=5,
                         processes=2)
    for task, metric in zip(chosen, ["exact_match,none", "pope_accuracy,none"]):
        for run in (two, spec):
            assert run["n-samples"][task]["effective"] == 5 and len(run["answers"][task]) == 5
            assert run["results"][task][metric] == one["results"][task][metric]
            assert run["answers"][task] == one["answers"][task]
    assert two["throughput"]["total_gen_tokens"] == one["throughput"]["total_gen_tokens"]  # both processes' requests
    assert spec["throughput"]["total_gen_tokens"] == one["throughput"]["total_gen_tokens"]


def test_processes_launch_through_torchrun_on_cpus_and_zero_is_refused(monkeypatch, capsys):
    from mmvsd import cli
    from mmvsd.lmms import report
    from mmvsd.lmms.runner import launcher

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert launcher(1) == [sys.executable]
    command = launcher(2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cli.run(report.RunConfig, report.main, "mmvsd eval", report.__doc__, ["processes=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "processes must be >= 1, got 0" in err
