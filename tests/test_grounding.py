"""The grounding loss of the toy build: which patches each word names, and the loss on attention."""

import re

import numpy as np
import pytest
import torch
from conftest import toy_home

from mmvsd.toyworld.charts import Chart
from mmvsd.toyworld.scenes import Scene, Shape
from mmvsd.toyworld.targets.grounding import attention_mass_loss, ground_sequence, word_spans
from mmvsd.toyworld.targets.vision import _patch_owner

# a red star top left, a blue circle bottom right, on grey
SCENE = Scene((Shape("star", "red", "large", 1 / 6, 1 / 6), Shape("circle", "blue", "small", 5 / 6, 5 / 6)), "grey")
GRID = 6


def owned_by(shape_index: int) -> set[int]:
    return set(np.flatnonzero(_patch_owner(SCENE, GRID * 8, GRID) == shape_index + 1).tolist())


def sequence(question: str, answer: str) -> list[str]:
    """Token texts of one turn, split at spaces (what the toy tokenizer does to these words)."""
    pieces = re.findall(r"\w+|[^\w\s]", question)  # punctuation on its own, as the toy tokenizer splits it
    words = [f" {w}" if i and w[0].isalnum() else w for i, w in enumerate(pieces)]
    return ["USER", ":", " ", *["<image>"] * GRID ** 2, "\n", *words, " ASSISTANT", ":", f" {answer}", "</s>"]


def test_words_are_runs_of_tokens_and_punctuation_stands_alone():
    assert word_spans([" T", "o", "p", " left", " there", ".", " Tue", "?"]) == [
        ("top", 2), ("left", 3), ("there", 4), (".", 5), ("tue", 6), ("?", 7)]


def test_object_words_point_at_the_patches_that_show_them():
    texts = sequence("What colour is the star?", "red")
    words, phrases = ground_sequence(texts, SCENE, GRID)
    found = {texts[position].strip(): set(patches.tolist()) for position, patches in words}
    assert found["star"] == owned_by(0) and found["red"] == owned_by(0)  # the question's word and the answer's
    assert "colour" not in found and "What" not in found
    assert phrases == []  # one naming word: no phrase


def test_a_place_is_grounded_once_at_its_last_word():
    texts = sequence("What shape is in the top left corner?", "star")
    words, _ = ground_sequence(texts, SCENE, GRID)
    grounded = [texts[position].strip() for position, _ in words]
    assert grounded == ["left", "star"]  # the place and the answer; "top" of "top left" is not a place of its own
    assert set(words[0][1].tolist()) == owned_by(0)


def test_a_phrase_points_at_what_shows_all_of_it_or_at_the_background_sink_when_nothing_does():
    texts = sequence("Is there a blue circle in the image?", "yes")
    _, phrases = ground_sequence(texts, SCENE, GRID)
    [(position, patches)] = phrases
    assert texts[position] == " circle" and set(patches.tolist()) == owned_by(1)
    texts = sequence("Is there a red circle in the image?", "no")  # red and circle exist, not together
    words, phrases = ground_sequence(texts, SCENE, GRID)
    [(position, patches)] = phrases
    background = set(np.flatnonzero(_patch_owner(SCENE, GRID * 8, GRID) == 0).tolist())
    assert texts[position] == " circle" and set(patches.tolist()) == background
    assert {texts[p].strip() for p, _ in words} == {"red", "circle"}
    texts = sequence("There is a large red star in the top left corner.", "ok")  # descriptions too
    _, phrases = ground_sequence(texts, SCENE, GRID)
    assert [(texts[p], set(f.tolist())) for p, f in phrases] == [(" star", owned_by(0))]
    texts = sequence("How many triangles are there?", "0")  # nothing to look at, no phrase
    assert ground_sequence(texts, SCENE, GRID) == ([], [])


def test_chart_labels_point_at_their_column_and_absent_ones_at_nothing():
    chart = Chart("bar", "Sales", ("Mon", "Tue", "Wed"), (3, 7, 5), ("red", "blue", "green"))
    texts = sequence("What is the value for Tue? And Fri?", "7")
    words, _ = ground_sequence(texts, chart, GRID)
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
    return toy_home(tmp_path_factory, {"train": 8, "validation": 2, "test": 4})


def word_head_mass(builder) -> float:
    """Geometric mean attention mass of the word head on the patches each word names, over held-out
    conversations."""
    import random

    from mmvsd.toyworld.data import random_sample
    from mmvsd.toyworld.targets.steps import answer_logits
    from mmvsd.toyworld.targets.grounding import HeadRecorder, grounding_batch

    rng = random.Random("held-out")
    samples = [random_sample(rng, 32) for _ in range(32)]
    grid = builder.spec.truth_grid
    batch = builder._collate(samples, builder._conversations(samples, rng), grid, pixels=False)
    texts = [[builder.token_texts[i] for i in row] for row in batch["input_ids"].tolist()]
    targets = grounding_batch(texts, [x.truth for x in samples], grid, len(texts[0]))
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


def run_ablation(home, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "eval" / "grounding_ablation.py"
    env = {**os.environ, "MMVSD_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_ablation_script_runs_and_refuses_unknown_families_in_one_line(home, tmp_path):
    import json

    bad = run_ablation(home, "families=colour,starshine")
    assert bad.returncode != 0 and "unknown families starshine" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    out = tmp_path / "curve.json"
    done = run_ablation(home, "steps=2", "batch_size=4", f"out={tmp_path / 'work'}", f"json={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    curve = json.loads(out.read_text())["curve"]
    assert [row["step"] for row in curve] == [0, 2]
    assert set(curve[-1]) == {"step", "seconds", "colour", "presence", "shape"}
    assert all(0 <= curve[-1][f] <= 1 for f in ("colour", "presence", "shape"))
