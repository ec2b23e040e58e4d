"""The grounding loss of the toy build: which patches each word names, and the loss on attention."""

import re

import numpy as np
import pytest
import torch

from mmvsd.data.conversations import IGNORE
from mmvsd.toyworld.charts import Chart
from mmvsd.toyworld.scenes import Scene, Shape
from mmvsd.toyworld.targets.grounding import attention_mass_loss, ground_sequence, word_spans
from mmvsd.toyworld.targets.vision import _patch_owner

# a red star top left, a blue circle bottom right, on grey
SCENE = Scene((Shape("star", "red", "large", 1 / 6, 1 / 6), Shape("circle", "blue", "small", 5 / 6, 5 / 6)), "grey")
GRID = 6


def owned_by(shape_index: int) -> set[int]:
    return set(np.flatnonzero(_patch_owner(SCENE, GRID * 8, GRID) == shape_index + 1).tolist())


def sequence(question: str, answer: str) -> tuple[list[str], list[int]]:
    """Token texts split at spaces (what the toy tokenizer does to these words) and labels on the answer."""
    pieces = re.findall(r"\w+|[^\w\s]", question)  # punctuation on its own, as the toy tokenizer splits it
    words = [f" {w}" if i and w[0].isalnum() else w for i, w in enumerate(pieces)]
    asked = ["USER", ":", " ", *["<image>"] * GRID ** 2, "\n", *words, " ASSISTANT", ":"]
    replied = [f" {answer}", "</s>"]
    return asked + replied, [IGNORE] * len(asked) + [0] * len(replied)


def test_words_are_runs_of_tokens_and_punctuation_stands_alone():
    assert word_spans([" T", "o", "p", " left", " there", ".", " Tue", "?"]) == [
        ("top", 2), ("left", 3), ("there", 4), (".", 5), ("tue", 6), ("?", 7)]


def test_object_words_point_at_the_patches_that_show_them():
    texts, labels = sequence("What colour is the star?", "red")
    words, answers = ground_sequence(texts, labels, SCENE, GRID)
    found = {texts[position].strip(): set(patches.tolist()) for position, patches in words}
    assert found["star"] == owned_by(0) and found["red"] == owned_by(0)
    assert "colour" not in found and "What" not in found
    [(position, patches)] = answers  # the answer is predicted looking at what was asked about
    assert texts[position + 1] == " red" and set(patches.tolist()) == owned_by(0)


def test_a_place_is_grounded_once_at_its_last_word():
    texts, labels = sequence("What shape is in the top left corner?", "star")
    words, _ = ground_sequence(texts, labels, SCENE, GRID)
    grounded = [texts[position].strip() for position, _ in words]
    assert grounded == ["left", "star"]  # the place and the answer; "top" of "top left" is not a place of its own
    assert set(words[0][1].tolist()) == owned_by(0)


def test_answers_look_at_what_was_asked_about_or_the_background_sink_for_absent():
    texts, labels = sequence("Is there a blue circle in the image?", "yes")
    _, answers = ground_sequence(texts, labels, SCENE, GRID)
    [(position, patches)] = answers
    assert texts[position + 1] == " yes" and set(patches.tolist()) == owned_by(1)
    texts, labels = sequence("Is there a red circle in the image?", "no")  # red and circle exist, not together
    words, answers = ground_sequence(texts, labels, SCENE, GRID)
    [(_, patches)] = answers
    background = set(np.flatnonzero(_patch_owner(SCENE, GRID * 8, GRID) == 0).tolist())
    assert set(patches.tolist()) == background
    assert {texts[p].strip() for p, _ in words} == {"red", "circle"}
    texts, labels = sequence("How many triangles are there?", "0")  # nothing to look at, no yes/no sink
    assert ground_sequence(texts, labels, SCENE, GRID) == ([], [])


def test_chart_labels_point_at_their_column_and_absent_ones_at_nothing():
    chart = Chart("bar", "Sales", ("Mon", "Tue", "Wed"), (3, 7, 5), ("red", "blue", "green"))
    texts, labels = sequence("What is the value for Tue? And Fri?", "7")
    words, _ = ground_sequence(texts, labels, chart, GRID)
    [(position, patches)] = words
    assert texts[position] == " Tue"
    columns = {int(p) % GRID for p in patches}
    assert len(patches) == GRID * len(columns) and columns <= {2, 3, 4}  # whole columns, in the middle third


def test_attention_mass_loss_is_zero_when_all_mass_is_on_target_and_log_share_when_uniform():
    batch, length, patches, start = 2, 12, 4, 1
    targets = torch.zeros(batch, length, patches)
    targets[:, 9, :2] = 1.0  # position 9 should look at patches 0 and 1
    uniform = torch.full((batch, length, length), 1 / length)
    assert attention_mass_loss(uniform, targets, torch.tensor([start] * batch)).item() == pytest.approx(
        -np.log(2 / length), rel=1e-4)
    focused = torch.zeros(batch, length, length)
    focused[:, :, start] = 1.0
    assert attention_mass_loss(focused, targets, torch.tensor([start] * batch)).item() == pytest.approx(0, abs=1e-5)
    assert attention_mass_loss(uniform, torch.zeros_like(targets), torch.tensor([start] * batch)).item() == 0


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from mmvsd.toyworld.data import build_datasets
    from mmvsd.toyworld.targets.build import data_dir

    home = tmp_path_factory.mktemp("mmvsd-home")
    folder = data_dir(home)
    build_datasets(folder, seed=0, image_size=128, sizes={"train": 8, "validation": 2, "test": 4})
    (folder / "done").write_text("ok\n")
    return home


def word_head_mass(builder) -> float:
    """Geometric mean attention mass of the word head on the patches each word names, over held-out
    conversations."""
    import random

    from mmvsd.toyworld.data import random_sample
    from mmvsd.toyworld.targets.build import answer_logits
    from mmvsd.toyworld.targets.grounding import HeadRecorder, grounding_batch

    rng = random.Random("held-out")
    samples = [random_sample(rng, 32) for _ in range(32)]
    grid = builder.spec.truth_grid
    batch = builder._collate(samples, builder._conversations(samples, rng), grid, pixels=False)
    texts = [[builder.token_texts[i] for i in row] for row in batch["input_ids"].tolist()]
    targets = grounding_batch(texts, batch["labels"], [x.truth for x in samples], grid, len(texts[0]))
    language_model = builder.model.model.language_model
    language_model.set_attn_implementation("eager")
    recorder = HeadRecorder(language_model.layers, (0,))
    with torch.no_grad():
        answer_logits(builder.model, batch, builder.truth(batch["targets"]))
    recorder.remove()
    start = (batch["input_ids"] == builder.image_token_id).int().argmax(1)
    return float(torch.exp(-attention_mass_loss(recorder.weights[0][:, 0], targets["ground_words"], start)))


@pytest.mark.slow
def test_a_tiny_build_with_the_grounding_loss_looks_where_words_point(home):
    """Stage 1 of a tiny target, with and without the loss: the designated head learns to put its
    attention on the patches each word names only when it is told to."""
    import dataclasses

    from mmvsd.toyworld.targets.build import TOY_SPECS, _Builder

    masses = {}
    for weight in (1.0, 0.0):
        spec = dataclasses.replace(TOY_SPECS["toy-s"], name=f"tiny-ground-{weight}", hidden=64, layers=2,
                                   intermediate=128, head_dim=16, vision_hidden=32, vision_layers=1, truth_steps=60,
                                   truth_batch=8, ground_weight=weight)
        builder = _Builder(spec, home / spec.name, home, lambda m: None)
        builder.train_on_truth()
        masses[weight] = word_head_mass(builder)
    assert masses[1.0] > 0.3 and masses[1.0] > 3 * masses[0.0], masses
