"""The toy targets: deterministic builds, the zoo CLI, and (slow) that toy-s really looks at images."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import toy_home
from mmvsd.toyworld.targets.build import TOY_SPECS, build_target, data_dir, is_built

MICRO = dataclasses.replace(TOY_SPECS["toy-s"], name="micro-a", vision_hidden=32, vision_layers=2, hidden=64,
                            layers=1, intermediate=128, head_dim=16, truth_steps=3, tower_steps=2, tune_steps=2,
                            truth_batch=4, tower_batch=2, tune_batch=2, eval_per_family=1, eval_descriptions=1)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return toy_home(tmp_path_factory, {"train": 40, "validation": 4, "test": 12})


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_same_seed_same_weights_other_seed_other_weights(home):
    a = build_target(MICRO, home, log=lambda m: None)
    b = build_target(dataclasses.replace(MICRO, name="micro-b"), home, log=lambda m: None)
    c = build_target(dataclasses.replace(MICRO, name="micro-c", seed=1), home, log=lambda m: None)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    report = json.loads((a / "report.json").read_text())
    assert {"families", "summary", "descriptions", "decode_ms_per_token", "training_curve"} <= report.keys()
    assert is_built(MICRO, home) and not list((home / "targets").glob(".micro-a*.work"))


def test_a_built_folder_loads_through_the_llava_adapter(home):
    from transformers import LlavaForConditionalGeneration

    from mmvsd.models import load_target
    from mmvsd.toyworld.data import random_sample

    folder = build_target(MICRO, home, log=lambda m: None)  # already built: found, not rebuilt
    target = load_target(str(folder))
    assert isinstance(target.model, LlavaForConditionalGeneration)
    import random

    sample = random_sample(random.Random(0), 128)
    encoded = target.encode(sample.image, "Describe the image. ¿Qué es? 画像 😀", 4)
    assert target.decode(encoded.input_ids.tolist()).count("😀") == 1


def zoo(*args, home=None):
    env = {"MMVSD_HOME": str(home)} if home else {}
    import os

    return subprocess.run([sys.executable, "-m", "mmvsd.zoo", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_a_grown_target_starts_as_the_small_one_and_builds(home, monkeypatch):
    """Depth up-scaling: the doubled model computes exactly what the small one does, then trains on."""
    from mmvsd.toyworld.targets import build

    small_model = build._Builder(MICRO, home / "w-small", home, lambda m: None).model
    torch.nn.init.normal_(small_model.model.language_model.layers[0].mlp.down_proj.weight, std=0.05)
    big = dataclasses.replace(MICRO, name="micro-big", layers=2, grow_from="micro-a", image_size=84, patch_size=14)
    big_model = build._Builder(big, home / "w-big", home, lambda m: None).model
    build.grow(small_model, big_model)
    ids = torch.randint(5, 100, (2, 12))
    with torch.no_grad():
        a = small_model.model.language_model(input_ids=ids).last_hidden_state
        b = big_model.model.language_model(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    monkeypatch.setitem(build.TOY_SPECS, "micro-a", MICRO)
    folder = build_target(big, home, log=lambda m: None)  # stage 1 of micro-a first, then grown
    assert build.stage1_path(MICRO, home).is_file() and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["text_config"]["num_hidden_layers"] == 2


def test_stage_one_resumes_only_its_own_spec_and_never_brings_back_a_tower(home):
    """A changed spec (the grounding loss on) must not resume another spec's stage 1, and a stage-1
    checkpoint holds the parts it trains: loading it keeps the tower the build just trained."""
    from mmvsd.toyworld.targets import build

    grounded = dataclasses.replace(MICRO, ground_weight=1.0, layers=2)
    assert build.stage1_path(grounded, home) != build.stage1_path(MICRO, home)
    builder = build._Builder(grounded, home / "w-grounded", home, lambda m: None)
    builder.train_on_truth()
    tower = builder.model.model.vision_tower
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(1.0)  # as if the tower stage had just trained it
    trained = {k: v.clone() for k, v in tower.state_dict().items()}
    builder.train_on_truth()  # complete: resumes from its checkpoint
    assert all(torch.equal(trained[k], v) for k, v in tower.state_dict().items())
    assert not any("vision_tower" in k for k in torch.load(build.stage1_path(grounded, home))["model"])


@pytest.mark.parametrize("args, message", [
    ((), "expected `build NAME`, `report NAME`, `list`, `tasks` or `export FOLDER OUT`"),
    (("build",), "name a target"),
    (("build", "toy-xl"), "unknown toy target 'toy-xl'"),
    (("build", "toy-s", "forse=true"), "unknown key"),
    (("report", "toy-xl"), "unknown toy target or folder 'toy-xl'"),
    (("report", "."), "has no report.json"),
    (("export",), "export takes a drafter and an output folder"),
    (("export", "msd", "out"), "msd is a drafter kind, not a trained drafter"),
    (("export", "toy-m-msd", "out", "layout=vispec"), "layout=vispec does not fit a msd drafter"),
])
def test_zoo_refuses_bad_commands_in_one_line(args, message, tmp_path):
    result = zoo(*args, home=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_zoo_list_says_what_is_built(home):
    result = zoo("list", home=home)
    assert result.returncode == 0, result.stderr
    assert "toy-s" in result.stdout and "toy-m" in result.stdout and "built:   no" in result.stdout


# ------------------------------------------------------------------ the real toy-s (slow: builds it once)

@pytest.fixture(scope="module")
def toy_s():
    from mmvsd.models import load_target

    return load_target("toy-s")


@pytest.mark.slow
def test_toy_s_beats_image_blind_answers_on_held_out_questions(toy_s):
    """The same questions about the right image and about another one: only looking gets them right."""
    from mmvsd.toyworld.targets.evaluate import generate, normalize, question_items

    items = question_items(data_dir(), "test")
    right = blind = n = 0
    for family in ("count", "background", "size"):
        batch = items[family][:30]
        for i, item in enumerate(batch):
            right += normalize(generate(toy_s, item["image"], item["prompt"], 6)[0]) == normalize(item["answer"])
            other = batch[(i + 1) % len(batch)]["image"]
            blind += normalize(generate(toy_s, other, item["prompt"], 6)[0]) == normalize(item["answer"])
            n += 1
    assert right / n > blind / n + 0.15, (right, blind, n)


@pytest.mark.slow
def test_image_blind_descriptions_get_the_image_words_wrong(toy_s):
    """Why vision matters: the facts in a description (colours, counts, values, ...) come from the
    image. Describing another image, the target writes fluent but wrong facts, and on reference
    descriptions it predicts the image words far worse (the template words much less so)."""
    from datasets import load_from_disk

    from mmvsd.toyworld.data import truth_from_json
    from mmvsd.toyworld.targets.evaluate import description_word_accuracy, generate
    from mmvsd.toyworld.facts import fact_scores, stated_facts, truth_facts

    rows = load_from_disk(str(data_dir() / "descriptions"))["test"].select(range(16))
    seeing, blind = [], []
    for i, row in enumerate(rows):
        truth, chart = truth_from_json(row["truth"]), row["kind"] == "chart"
        text = generate(toy_s, row["image"], row["prompt"], 160)[0]
        wrong = generate(toy_s, rows[(i + 1) % len(rows)]["image"], row["prompt"], 160)[0]
        seeing.append(fact_scores(stated_facts(text, chart), truth_facts(truth))["f1"])
        blind.append(fact_scores(stated_facts(wrong, chart), truth_facts(truth))["f1"])
    assert sum(seeing) / len(seeing) > sum(blind) / len(blind) + 0.05, (seeing, blind)
    words = description_word_accuracy(toy_s, rows)
    assert words["image_words_right_image"] > words["image_words_wrong_image"] + 0.1, words


@pytest.mark.slow
def test_bench_accepts_the_toy_target(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "mmvsd.bench", "target=toy-s", "drafter=eagle", "n=2",
                             "max_new_tokens=24", f"json={out}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["identical_outputs"] is True and report["n_prompts"] == 2


def test_a_second_builder_of_the_same_cache_entry_waits_and_says_so(tmp_path):
    import threading
    import time

    from mmvsd.files import cache_lock

    said, order = [], []
    entry = tmp_path / "targets" / "toy-x"

    def first():
        with cache_lock(entry, "toy-x", said.append):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    while not order:
        time.sleep(0.01)
    with cache_lock(entry, "toy-x", said.append):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert len(said) == 1 and "another process is building toy-x; waiting" in said[0]
