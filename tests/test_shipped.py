"""The trained toy targets and drafters shipped in the package: each folder is what its recorded
build spec says (config, tokenizer, data version, seed, weight digests), answers from the image
(the blind controls fall to chance), copes with ordinary phrasings, and still measures what its
report recorded."""

import json
import random

import pytest
import torch

from mmvsd.toyworld.targets.build import DIGESTED, TOY_SPECS, _spec_record, is_current, sha256, shipped_target_dir

SHIPPED = [name for name in TOY_SPECS if (shipped_target_dir(name) / "build.json").is_file()]


def test_every_toy_target_is_shipped():
    assert SHIPPED == list(TOY_SPECS), "ship them: python -m mmvsd.zoo build NAME ship=true"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_matches_its_recorded_build(name):
    folder = shipped_target_dir(name)
    record = json.loads((folder / "build.json").read_text())
    assert record["spec"] == _spec_record(TOY_SPECS[name]) and is_current(folder, TOY_SPECS[name])
    for file in DIGESTED:
        assert sha256(folder / file) == record["digests"][file], f"{file} differs from the shipped build"
    config = json.loads((folder / "config.json").read_text())
    spec = TOY_SPECS[name]
    assert config["text_config"]["num_hidden_layers"] == spec.layers
    assert config["vision_config"]["image_size"] == spec.image_size and config["vision_feature_layer"] == -2
    report = json.loads((folder / "report.json").read_text())
    assert {"families", "summary", "descriptions", "training_curve"} <= report.keys()


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    from mmvsd.models import load_target

    return load_target(request.param)


def test_toy_m_has_llava_15_image_geometry():
    from mmvsd.models import load_target

    target = load_target("toy-m")
    assert target.num_image_tokens == 576 and target.model.config.vision_config.patch_size == 14
    assert target.num_layers >= 8


def _ask(target, image, prompt: str) -> str:
    from mmvsd.toyworld.targets.evaluate import generate, normalize

    return normalize(generate(target, image, prompt, 6)[0])


def test_answers_come_from_the_image_not_the_wording(shipped):
    """The blind control: the same questions with the right image, another image and a blank one."""
    from PIL import Image

    from mmvsd.toyworld.data import random_sample

    rng = random.Random("shipped-blind")
    right = other = blank = 0
    samples = [random_sample(rng, 336, chart_share=0) for _ in range(21)]
    for i, sample in enumerate(samples[:-1]):
        question, answer = "How many shapes are there?", str(len(sample.truth.shapes))
        right += _ask(shipped, sample.image, question) == answer
        other += _ask(shipped, samples[i + 1].image, question) == answer
        blank += _ask(shipped, Image.new("RGB", (336, 336), (150, 150, 150)), question) == answer
    assert right >= other + 4 and right >= blank + 4, (right, other, blank)  # 20 points above both controls


@pytest.mark.parametrize("template, answers", [
    ("What colour is the {kind}?", "colours"), ("What color is the {kind}?", "colours"),
    ("What is the color of the {kind}?", "colours"), ("How many shapes are there?", "count"),
    ("How many shapes can you see?", "count"), ("Is there a red {kind} in the image?", "yes/no"),
    ("Is there a red {kind}?", "yes/no")])
def test_ordinary_phrasings_get_an_answer_word_first(shipped, template, answers):
    """Wordings people use, on scenes laid out here (all large, in the corners, at other sizes):
    the answer starts with a word of the right kind, and counts beat the same questions about a
    blank image."""
    from PIL import Image

    from mmvsd.toyworld.scenes import BACKGROUNDS, COLOURS, KINDS, Scene, Shape, draw_scene

    rng = random.Random(template)
    words = {"colours": set(COLOURS), "count": {"1", "2", "3", "4"}, "yes/no": {"yes", "no"}}[answers]
    right = blind = 0
    for i in range(12):
        shapes = tuple(Shape(KINDS[(i + j) % 4], rng.choice(list(COLOURS)), "large", x, y)
                       for j, (x, y) in enumerate([(0.2, 0.2), (0.8, 0.8), (0.8, 0.2), (0.2, 0.8)][: 1 + i % 4]))
        scene = Scene(shapes, rng.choice(list(BACKGROUNDS)))
        answer = _ask(shipped, draw_scene(scene, rng.choice([200, 336, 448])), template.format(kind=KINDS[i % 4]))
        assert answer and answer.split()[0] in words, (template, answer)
        right += answer.split()[0] == str(len(shapes))
        blind += _ask(shipped, Image.new("RGB", (336, 336), (150, 150, 150)), template) == str(len(shapes))
    if answers == "count" and shipped.name == "toy-s":
        # toy-m's counts on these layouts are at chance so far (3/12, blank 3/12; README, issue 12)
        assert right >= blind + 2, (right, blind)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_report_still_measures(name):
    """Re-measure a few held-out families on a small sample: within noise of the recorded report."""
    from mmvsd.models import load_target
    from mmvsd.toyworld.targets.build import ensure_datasets
    from mmvsd.toyworld.targets.evaluate import generate, normalize, question_items

    recorded = json.loads((shipped_target_dir(name) / "report.json").read_text())["families"]
    target = load_target(name)
    items = question_items(ensure_datasets(), "test")
    for family in ("count", "background", "chart_title"):
        batch = items[family][:20]
        accuracy = sum(normalize(generate(target, x["image"], x["prompt"], 6)[0]) == normalize(x["answer"])
                       for x in batch) / len(batch)
        assert abs(accuracy - recorded[family]["accuracy"]) <= 0.3, (family, accuracy, recorded[family])


def test_shipped_drafters_load_and_stay_lossless():
    from mmvsd.config import DecodeConfig, TreeConfig
    from mmvsd.decoding import autoregressive_generate, collect_tokens
    from mmvsd.decoding.speculative import speculative_generate
    from mmvsd.drafters import load_drafter, shipped_drafters
    from mmvsd.models import load_target
    from mmvsd.toyworld.data import random_sample

    names = shipped_drafters()
    assert {"toy-s-msd", "toy-m-msd", "toy-m-eagle", "toy-m-vispec"} <= set(names)  # make run: toy-s-msd
    image = random_sample(random.Random("shipped-drafters"), 336).image
    for name in names:
        target = load_target(name.rsplit("-", 1)[0])
        drafter = load_drafter(name, target)
        prompt = target.encode(image, "Describe the image in detail.", 40)
        config = DecodeConfig(max_new_tokens=40, tree=TreeConfig(depth=6, top_k=2, total_tokens=10))
        with torch.no_grad():
            alone = [t for s in autoregressive_generate(target, prompt, config) for t in s.tokens]
            steps = list(speculative_generate(target, drafter, prompt, config))
        assert collect_tokens(steps) == alone
        assert len(alone) / len(steps) > 2  # a trained drafter is accepted
