"""The toy world: deterministic data in the lmms-lab schemas, a tokenizer that round-trips any text,
conversation encoding that matches the processor, and facts read back exactly."""

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from mmvsd.data.conversations import IGNORE, encode_conversation
from mmvsd.toyworld.charts import Chart, random_chart
from mmvsd.toyworld.data import (Sample, build_datasets, description, questions, random_sample,
                                 training_conversation, truth_from_json, truth_json)
from mmvsd.toyworld.facts import stated_facts, truth_facts
from mmvsd.toyworld.scenes import random_scene
from mmvsd.toyworld.tokenizer import train_tokenizer
from mmvsd.toyworld.targets.vision import targets_for

SMALL = {"train": 12, "validation": 6, "test": 6}


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toyworld")
    build_datasets(folder, seed=3, image_size=128, sizes=SMALL)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = []
    for _ in range(300):
        sample = random_sample(rng, 32)
        texts += [q for turn in training_conversation(sample, rng, 0.5) for q in turn]
    return train_tokenizer(texts, 1024)


def test_same_seed_same_data_other_seed_other_data(datasets_dir, tmp_path):
    from datasets import load_from_disk

    build_datasets(tmp_path / "again", seed=3, image_size=128, sizes=SMALL)
    build_datasets(tmp_path / "other", seed=4, image_size=128, sizes=SMALL)
    for task in ("vqav2", "chartqa", "pope", "descriptions"):
        a, b = load_from_disk(str(datasets_dir / task)), load_from_disk(str(tmp_path / "again" / task))
        c = load_from_disk(str(tmp_path / "other" / task))
        for split in SMALL:
            rows_a, rows_b = a[split].to_list(), b[split].to_list()
            assert rows_a == rows_b  # texts and image bytes alike
        assert a["test"].to_list() != c["test"].to_list()


def test_dataset_schemas_follow_lmms_lab(datasets_dir):
    from datasets import load_from_disk

    vqa = load_from_disk(str(datasets_dir / "vqav2"))
    assert set(vqa) == set(SMALL)
    row = vqa["test"][0]
    assert {"question_id", "question", "answers", "multiple_choice_answer", "answer_type", "image"} <= set(row)
    assert len(row["answers"]) == 10 and all(a["answer"] == row["multiple_choice_answer"] for a in row["answers"])
    assert row["image"].size == (128, 128)
    chart = load_from_disk(str(datasets_dir / "chartqa"))["test"]
    assert {"question", "answer", "type", "image"} <= set(chart.column_names)
    assert set(chart["type"]) <= {"human_test", "augmented_test"}
    pope = load_from_disk(str(datasets_dir / "pope"))["test"]
    assert {"question_id", "question", "answer", "category", "image"} <= set(pope.column_names)
    assert set(pope["category"]) == {"random", "popular", "adversarial"}
    for category in ("random", "popular", "adversarial"):
        answers = [r["answer"] for r in pope if r["category"] == category]
        assert answers.count("yes") == answers.count("no") > 0  # POPE is balanced
    desc = load_from_disk(str(datasets_dir / "descriptions"))["test"]
    for row in desc:
        truth = truth_from_json(row["truth"])
        assert stated_facts(row["description"], row["kind"] == "chart") == truth_facts(truth)


def test_splits_do_not_share_images(datasets_dir):
    from datasets import load_from_disk

    vqa = load_from_disk(str(datasets_dir / "vqav2"))
    train = {np.asarray(im).tobytes() for im in vqa["train"]["image"]}
    assert not any(np.asarray(im).tobytes() in train for im in vqa["test"]["image"])


def test_pope_adversarial_negatives_are_near_misses():
    from mmvsd.toyworld.language import all_objects, pope_questions

    rng = random.Random(1)
    for _ in range(50):
        scene = random_scene(rng)
        present = {f"{s.colour} {s.kind}" for s in scene.shapes}
        for qa in pope_questions(scene, rng, "adversarial", all_objects()):
            obj = re.fullmatch(r"Is there an? (\w+ \w+) in the image\?", qa.question).group(1)
            assert (obj in present) == (qa.answer == "yes")
            if qa.answer == "no":
                colour, kind = obj.split()
                assert any(colour == p.split()[0] or kind == p.split()[1] for p in present)


@pytest.mark.parametrize("seed", range(5))
def test_facts_are_read_back_exactly(seed):
    rng = random.Random(seed)
    for _ in range(200):
        sample = random_sample(rng, 64)
        assert stated_facts(description(sample, rng), sample.is_chart) == truth_facts(sample.truth)
        assert truth_from_json(truth_json(sample.truth)) == sample.truth


def test_a_wrong_fact_is_caught():
    rng = random.Random(0)
    for _ in range(20):
        chart = random_chart(rng)
        off_by_one = dataclasses.replace(chart, values=(chart.values[0] % 9 + 1, *chart.values[1:]))
        text = description(Sample(off_by_one, None), rng)
        assert ("value", chart.labels[0], off_by_one.values[0]) in stated_facts(text, True) - truth_facts(chart)


UNICODE_SAMPLES = ["", " ", "plain words", "Ünïcödé façade", "画像を説明して", "مرحبا بالعالم", "emoji 😀🎉👩‍👩‍👧",
                   "tabs\tand\nnewlines\r\n", "\x00\x01\x7f", "zero\u200bwidth", "<image> literal", "a" * 500]


def test_tokenizer_round_trips_any_text(tokenizer):
    rng = random.Random(7)
    texts = UNICODE_SAMPLES + ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFFF)]))
                                       for _ in range(rng.randrange(1, 40))) for _ in range(200)]
    for text in texts:
        text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer("The image shows two shapes on a grey background.")["input_ids"]) < 15  # words are tokens


def test_conversation_encoding_matches_the_processor(tokenizer):
    from PIL import Image

    from mmvsd.models.llava import LlavaTarget  # noqa: F401  (the adapter formats prompts the same way)
    from mmvsd.models.tiny import llava_processor

    processor = llava_processor(tokenizer, 128, 16)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    turns = [("What colour is the circle?", "red"), ("Describe the image in detail.", "Two shapes. One is red.")]
    encoded = encode_conversation(tokenizer, turns, image_id, 64)
    conversation = []
    for question, answer in turns:
        content = [{"type": "text", "text": question}]
        if not conversation:
            content.insert(0, {"type": "image"})
        conversation += [{"role": "user", "content": content},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = processor.apply_chat_template(conversation)
    expected = processor(images=Image.new("RGB", (128, 128)), text=text, return_tensors="pt")["input_ids"][0]
    assert encoded.input_ids == expected.tolist()
    answers = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE]
    assert tokenizer.decode(answers) == " red</s> Two shapes. One is red.</s>"
    prompt = processor.apply_chat_template(conversation[:1], add_generation_prompt=True)
    prompt_ids = processor(images=Image.new("RGB", (9, 9)), text=prompt)["input_ids"][0]
    assert encoded.input_ids[: len(prompt_ids)] == list(prompt_ids)


def test_patch_targets_mark_the_objects():
    rng = random.Random(2)
    scene = random_scene(rng, min_objects=3, max_objects=3)
    targets = targets_for(scene, 128, 8)
    owned = targets.patch["colour"] > 0
    assert owned.sum() >= 3 and (~owned).sum() > 20
    assert targets.global_["count"] == 3 and targets.patch["value"].max() == -100
    chart = Chart("bar", "Sales", ("Mon", "Tue", "Wed"), (3, 9, 1), ("red", "blue", "green"))
    values = targets_for(chart, 128, 8).patch["value"].reshape(8, 8)
    assert set(values[0].tolist()) == {0, 3, 9, 1} and (values == values[0]).all()  # a column shares its value
    assert torch.tensor(targets.patch["kind"]).dtype == torch.int64


def test_set_targets_state_each_fact_once_and_leave_ambiguous_ones_out():
    from mmvsd.toyworld.scenes import KINDS, Scene, Shape
    from mmvsd.toyworld.targets.vision import IGNORE, OBJECTS

    scene = Scene((Shape("triangle", "red", "small", 0.15, 0.15), Shape("triangle", "blue", "large", 0.85, 0.85),
                   Shape("circle", "red", "large", 0.5, 0.5)), "grey")
    s = targets_for(scene, 128, 8).set_
    assert s["present"].sum() == 3 and s["present"][OBJECTS.index(("blue", "triangle"))] == 1
    assert s["colour_of_kind"][KINDS.index("triangle")] == IGNORE  # two triangles: "which colour?" has no answer
    assert s["colour_of_kind"][KINDS.index("square")] == 0  # no square
    assert s["count_of_kind"].tolist() == [1, 0, 2, 0]
    assert s["cell_of_object"][OBJECTS.index(("blue", "triangle"))] == 1 + 8  # bottom right
    assert s["colour_at_cell"][4] > 0 and s["colour_at_cell"][1] == 0
    chart = Chart("bar", "Sales", ("Mon", "Tue", "Wed"), (3, 9, 3), ("red", "blue", "green"))
    c = targets_for(chart, 128, 8).set_
    assert c["value_of_label"].tolist().count(0) == len(c["value_of_label"]) - 3
    assert c["lowest"][0] == IGNORE and c["highest"][0] > 0  # a tie has no lowest label
    assert (s["value_of_label"] == IGNORE).all() and (c["present"] == IGNORE).all()


def test_ground_truth_features_say_what_covers_each_patch():
    """Recolouring the star changes exactly the star's patches; on a coarse grid no shape is lost."""
    from mmvsd.toyworld.scenes import Scene, Shape
    from mmvsd.toyworld.targets.vision import TruthFeatures, collate_targets

    scene = Scene((Shape("star", "red", "large", 0.2, 0.2), Shape("circle", "blue", "small", 0.8, 0.5)), "grey")
    recoloured = Scene((Shape("star", "green", "large", 0.2, 0.2), scene.shapes[1]), "grey")
    targets = [targets_for(x, 64, 8) for x in (scene, recoloured)]
    features = TruthFeatures(16)(collate_targets(targets))  # [2, 64, 16]
    changed = (features[0] - features[1]).abs().sum(-1) > 1e-6
    star = torch.from_numpy(targets[0].patch["kind"] == 1 + 3)
    assert star.any() and torch.equal(changed, star)
    rng = random.Random(5)
    for _ in range(100):
        shapes = random_scene(rng).shapes
        owners = targets_for(Scene(shapes, "grey"), 48, 6).patch["colour"]
        assert (owners > 0).sum() >= len(shapes)  # each shape owns at least its centre patch


def test_questions_come_in_the_wordings_people_use():
    rng = random.Random(3)
    asked = [qa.question for _ in range(300) for qa in questions(random_sample(rng, 32, chart_share=0), rng)]
    for wording in ("What color is the", "What colour is the", "How many shapes are there?", "Is there a",
                    "Do you see a"):
        assert any(q.startswith(wording) or wording in q for q in asked), wording


def test_listings_put_each_fact_right_after_its_key():
    from mmvsd.toyworld.language import list_chart, list_scene
    from mmvsd.toyworld.scenes import Scene, Shape

    scene = Scene((Shape("star", "red", "large", 0.8, 0.2), Shape("circle", "blue", "small", 0.2, 0.2)), "grey")
    answers = {list_scene(scene, random.Random(seed)).answer for seed in range(20)}
    assert answers == {"circle: blue, small, top left; star: red, large, top right", "blue: circle; red: star"}
    chart = Chart("bar", "Sales", ("Mon", "Tue"), (3, 9), ("red", "blue"))
    assert list_chart(chart, random.Random(0)).answer == "Mon: 3; Tue: 9"
    rng = random.Random(0)
    plain = [training_conversation(random_sample(rng, 32), rng, 0.3, 4) for _ in range(50)]
    assert not any(q.startswith("List each") for turns in plain for q, _ in turns)  # off by default
