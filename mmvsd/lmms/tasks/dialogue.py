"""mmvsd_vqav2_dialogue: the toy VQAv2 questions about one image asked one after another, in one
conversation (lmms-eval's `generate_until_multi_round`). The functions its YAML names."""

from __future__ import annotations

import statistics

from lmms_eval.tasks.vqav2.utils import vqav2_process_results


def vqav2_conversations(dataset):
    """One document per image: its first row, with every question about it in `rounds` and each
    question's reference answers in `round_answers`, in the data's order."""
    rows: dict[object, list[int]] = {}
    for i, image_id in enumerate(dataset["image_id"]):
        rows.setdefault(image_id, []).append(i)
    firsts = dataset.select([indices[0] for indices in rows.values()])
    return firsts.add_column("rounds", [[dataset[i]["question"] for i in indices] for indices in rows.values()]) \
                 .add_column("round_answers", [[[a["answer"] for a in dataset[i]["answers"]] for i in indices]
                                               for indices in rows.values()])


def dialogue_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None, round_idx: int | None = None,
                         previous_output: list[str] | None = None, previous_round_info=None):
    """Round 1 (round_idx None): its question. Round k + 1 (round_idx k): lmms-eval's per-round
    payload (visuals, text, terminal, previous_output, round_info), terminal after the last question;
    no visuals, as the image was given in round 1."""
    kwargs = lmms_eval_specific_kwargs or {}
    k = round_idx or 0
    if k == len(doc["rounds"]):
        return None, None, True, previous_output, None
    text = f"{kwargs.get('pre_prompt', '')}{doc['rounds'][k]}{kwargs.get('post_prompt', '')}"
    return text if round_idx is None else ([], text, False, previous_output, None)


def dialogue_process_results(doc: dict, results: list) -> dict:
    """VQA accuracy (lmms-eval's, with EvalAI normalisation) of each round, averaged over the conversation."""
    answers = results[0]  # a multi-round request's result is its list of answers, one per round
    scores = [vqav2_process_results({"question_id": doc["question_id"],  # answer_id keeps equal answers apart
                                     "answers": [{"answer": a, "answer_id": j} for j, a in enumerate(references)]},
                                    [answer])["exact_match"]
              for answer, references in zip(answers, doc["round_answers"])]
    return {"exact_match": statistics.mean(scores) if len(answers) == len(doc["rounds"]) else 0.0}
