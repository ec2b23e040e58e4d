"""lmms-eval's own tasks (pope, chartqa, vqav2_val, vqav2_val_lite) and our `*_hub` variants, run
through the mmvsd plugin offline on a few documents in the schema of lmms-lab's datasets, written
to a Hugging Face datasets cache under tmp_path (tests/hf_cache.py says how `datasets` finds them).

Each score is recomputed here from the answers lmms-eval logged and the ground truth written; the
second round writes ground truth equal to some of the first round's answers, so that the scores
are not all zero, and runs the speculative decoder, whose answers must be the target's."""

import json
import re
import random
import statistics

import pytest
from PIL import Image

from hf_cache import CHARTQA, POPE, VQAV2, write_prepared
from mmvsd.lmms.runner import run_lmms_eval
from mmvsd.lmms.task_files import TEMPLATES

N = 4
# task: (dataset id, config, split, features): each read from the task's YAML in lmms_eval/tasks
# (pope/pope.yaml, chartqa/chartqa.yaml, vqav2/_default_template_vqav2_yaml + vqav2_val.yaml,
# vqav2/vqav2_val_lite.yaml) or in mmvsd/lmms/tasks/hub.
TASKS = {
    "pope": ("lmms-lab-encoder/POPE", None, "test", POPE),
    "mmvsd_pope_hub": ("lmms-lab-encoder/POPE", None, "test", POPE),
    "chartqa": ("lmms-lab-encoder/ChartQA", None, "test", CHARTQA),
    "mmvsd_chartqa_hub": ("lmms-lab-encoder/ChartQA", None, "test", CHARTQA),
    "vqav2_val": ("lmms-lab-encoder/VQAv2", None, "validation", VQAV2),
    "mmvsd_vqav2_hub": ("lmms-lab-encoder/VQAv2", None, "validation", VQAV2),
    "vqav2_val_lite": ("lmms-lab-encoder/LMMs-Eval-Lite", "vqav2_val", "lite", VQAV2),
}
QUESTIONS = ["Is there a red circle in the image?", "What colour is the square?", "How many shapes are there?",
             "Which bar is the tallest?"]


def images() -> list[Image.Image]:
    rng = random.Random(27)
    out = []
    for k in range(N):
        image = Image.new("RGB", (64 + 16 * k, 48 + 8 * k), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(4):
            x, y = rng.randrange(image.width), rng.randrange(image.height)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 20, y + 20))
        out.append(image)
    return out


def write_documents(cache, truth: dict[str, list[str]]) -> dict[str, list[dict]]:
    """The documents of every dataset, with `truth[dataset][k]` as document k's ground truth (for
    VQAv2: its ten human answers, "|"-separated). Returns {dataset: rows}."""
    pics, written = images(), {}
    rows = {
        "lmms-lab-encoder/POPE": [dict(id=str(k), question_id=str(100 + k), question=QUESTIONS[k],
                                       answer=truth["pope"][k], image_source=f"COCO_val2014_{k:012d}", image=pics[k],
                                       category="adversarial") for k in range(N)],
        "lmms-lab-encoder/ChartQA": [dict(type=["human_test", "augmented_test"][k % 2], question=QUESTIONS[k],
                                          answer=truth["chartqa"][k], image=pics[k]) for k in range(N)],
    }
    for dataset, key in [("lmms-lab-encoder/VQAv2", "vqav2"), ("lmms-lab-encoder/LMMs-Eval-Lite", "vqav2_lite")]:
        rows[dataset] = [dict(question_type="what", multiple_choice_answer=truth[key][k].split("|")[0],
                              answers=[dict(answer=a, answer_confidence="yes", answer_id=i + 1)
                                       for i, a in enumerate(truth[key][k].split("|"))],
                              image_id=200 + k, answer_type="other", question_id=300 + k, question=QUESTIONS[k],
                              image=pics[k]) for k in range(N)]
    for task, (dataset, config, split, features) in TASKS.items():
        if dataset not in written:
            write_prepared(cache, dataset, config, split, rows[dataset], features)
            written[dataset] = rows[dataset]
    return written


def samples(out, task) -> list[dict]:
    """lmms-eval's logged samples of `task`, by document, each with its "answer"."""
    [path] = out.rglob(f"*_samples_{task}.jsonl")
    logged = sorted((json.loads(line) for line in path.open()), key=lambda s: s["doc_id"])
    for sample in logged:  # lmms-eval 0.7.3 logs one response as a string, not a list
        answer = sample["filtered_resps"]
        sample["answer"] = answer if isinstance(answer, str) else answer[0]
    return logged


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """The VQA accuracy (each of the ten answers left out in turn, min(1, matches / 3)); the answers
    written are either a model's answer verbatim or words no answer normalises to."""
    def clean(text):
        return text.replace("\n", " ").replace("\t", " ").strip()

    return statistics.mean(min(1.0, sum(clean(a) == clean(pred) for a in answers[:i] + answers[i + 1:]) / 3)
                           for i in range(len(answers)))


def relaxed(pred: str, target: str) -> float:
    def number(text):
        try:
            return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
        except ValueError:
            return None

    p, t = number(pred), number(target)
    return float(abs(p - t) / abs(t) <= 0.05) if p is not None and t else float(pred.lower() == target.lower())


def expected_scores(task: str, logged: list[dict], docs: list[dict]) -> dict[str, float]:
    """What each metric must be, from the answers lmms-eval logged and the documents written."""
    preds = [s["answer"] for s in logged]
    if "pope" in task:
        pairs = [(p.lower().strip(), d["answer"]) for p, d in zip(preds, docs)]
        tp = sum(p == g == "yes" for p, g in pairs)
        fp = sum(p == "yes" and g == "no" for p, g in pairs)
        fn = sum(p == "no" and g == "yes" for p, g in pairs)
        precision, recall = tp / (tp + fp) if tp + fp else 0, tp / (tp + fn) if tp + fn else 0
        scores = {"pope_accuracy": statistics.mean(p == g for p, g in pairs), "pope_precision": precision,
                  "pope_recall": recall,
                  "pope_f1_score": 2 * precision * recall / (precision + recall) if precision + recall else 0}
        if task == "pope":
            scores["pope_yes_ratio"] = statistics.mean(g == "yes" for _, g in pairs)
        return scores
    if "chartqa" in task:
        right = [relaxed(p, d["answer"]) for p, d in zip(preds, docs)]
        scores = {"relaxed_overall": statistics.mean(right)}
        if task == "chartqa":
            for split, kind in [("relaxed_human_split", "human_test"), ("relaxed_augmented_split", "augmented_test")]:
                scores[split] = statistics.mean(r for r, d in zip(right, docs) if d["type"] == kind)
        return scores
    return {"exact_match": statistics.mean(vqa_accuracy(p, [a["answer"] for a in d["answers"]])
                                           for p, d in zip(preds, docs))}


def check_scores(report: dict, out, written: dict) -> dict[str, list[str]]:
    """Every task's scores are what its logged answers and the documents imply; returns the answers."""
    answers = {}
    for task, (dataset, *_) in TASKS.items():
        logged = samples(out, task)
        assert [s["doc_id"] for s in logged] == list(range(N)), task
        expected = expected_scores(task, logged, written[dataset])
        got = {metric.removesuffix(",none"): value for metric, value in report["results"][task].items()
               if metric.endswith(",none") and "_stderr" not in metric
               and value != []}  # what process_results returns beyond the YAML's metric_list reads []
        assert got == pytest.approx(expected), task
        answers[task] = [s["answer"] for s in logged]
    return answers


def test_lmms_evals_own_tasks_and_the_hub_variants_run_offline_and_score_what_was_answered(tmp_path, monkeypatch):
    """About 30 s: two lmms-eval runs of 7 tasks x 4 documents on tiny-random."""
    cache = tmp_path / "hf" / "datasets"
    for name, path in [("HF_HOME", tmp_path / "hf"), ("HF_DATASETS_CACHE", cache),
                       ("HF_HUB_CACHE", tmp_path / "hf" / "hub")]:
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LMMS_EVAL_DATASETS_CACHE", raising=False)
    tasks = list(TASKS)

    # Round 1, the target alone: ground truth no answer matches (POPE's is yes / no)
    placeholder = {"pope": ["yes", "no", "yes", "yes"], "chartqa": ["12", "3.5%", "Blue", "Tuesday"],
                   "vqav2": ["two|2|two"] * N, "vqav2_lite": ["red|red|maroon"] * N}
    written = write_documents(cache, placeholder)
    alone = run_lmms_eval("target=tiny-random", tasks, TEMPLATES, tmp_path / "alone", limit=N)
    answers = check_scores(alone, tmp_path / "alone", written)

    # Round 2, with a drafter: ground truth that some of round 1's answers match, in part
    a = answers
    truth = {"pope": ["no", "yes", "yes", "no"],
             "chartqa": [a["chartqa"][0], a["mmvsd_chartqa_hub"][1], "7", a["chartqa"][3]],
             "vqav2": ["|".join([a["vqav2_val"][0]] * 2 + ["zebra"] * 8),
                       "|".join([a["mmvsd_vqav2_hub"][1]] * 10), "zebra|zebra",
                       "|".join([a["vqav2_val"][3], "zebra"] * 5)],
             "vqav2_lite": ["|".join([a["vqav2_val_lite"][k]] * (k + 1) + ["zebra"] * (9 - k)) for k in range(N)]}
    written = write_documents(cache, truth)
    spec = run_lmms_eval("target=tiny-random,drafter=eagle,tree.depth=3,tree.top_k=2,tree.total_tokens=6", tasks,
                         TEMPLATES, tmp_path / "spec", limit=N)
    assert check_scores(spec, tmp_path / "spec", written) == answers
    # the answers are not "zebra" or "7": the VQA accuracy of an answer 1, 2, 3, 4 of 10 humans gave is .3, .6, .9, 1
    assert spec["results"]["vqav2_val_lite"]["exact_match,none"] == pytest.approx((0.3 + 0.6 + 0.9 + 1) / 4)
    assert spec["results"]["vqav2_val"]["exact_match,none"] == pytest.approx((0.6 + 1 + 0 + 1) / 4)
    assert spec["results"]["chartqa"]["relaxed_augmented_split,none"] == 1.0
    assert spec["results"]["pope"]["pope_yes_ratio,none"] == 0.5
    assert "avg_tau" in json.dumps(spec["throughput"]) and "avg_tau" not in json.dumps(alone["throughput"])


@pytest.mark.parametrize("task, dataset", [("pope", "lmms-lab-encoder/POPE"), ("chartqa", "lmms-lab-encoder/ChartQA"),
                                           ("vqav2_val", "lmms-lab-encoder/VQAv2"),
                                           ("vqav2_val_lite", "lmms-lab-encoder/LMMs-Eval-Lite (vqav2_val)"),
                                           ("mmvsd_chartqa_hub", "lmms-lab-encoder/ChartQA")])
def test_lmms_evals_own_tasks_without_their_data_are_refused_offline_naming_the_dataset(task, dataset, tmp_path,
                                                                                       monkeypatch):
    """check_task_data (run before lmms-eval starts) reads the dataset id from lmms-eval's own YAML
    (vqav2_val's from the template it includes) and looks where offline `load_dataset` looks."""
    from mmvsd.errors import UserError
    from mmvsd.lmms.task_files import check_task_data

    cache = tmp_path / "datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.delenv("LMMS_EVAL_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_task_data([task], TEMPLATES)  # online: lmms-eval may fetch it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=rf"^{task} needs the Hugging Face dataset {re.escape(dataset)}, which is not "
                                        r"in the local datasets cache and HF_HUB_OFFLINE is set; load it once where"):
        check_task_data([task], TEMPLATES)
    repo, config, split, features = TASKS[task]
    if config:  # another configuration of the same dataset is not this one
        write_prepared(cache, repo, "chartqa", split, [], features)
        with pytest.raises(UserError, match=re.escape(dataset)):
            check_task_data([task], TEMPLATES)
    write_prepared(cache, repo, config, split, [], features)  # as `load_dataset` leaves it (the name in snake_case)
    check_task_data([task], TEMPLATES)
    check_task_data(["no_such_task"], TEMPLATES)  # not a task it knows: left to lmms-eval
