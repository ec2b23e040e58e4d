"""`random:llava-1.5-7b|13b`: LLaVA-1.5's real configurations with random weights, and (slow) every
real recipe running 3 steps end to end at those shapes on a CPU, cut to 2 layers."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mmvsd import cli
from mmvsd.errors import UserError
from mmvsd.models.real_shapes import real_config, real_shape_tokenizer

REAL_RECIPES = sorted(p.stem for p in cli.RECIPES_DIR.glob("llava*.yaml"))


@pytest.mark.parametrize("name, hidden, layers", [("llava-1.5-7b", 4096, 32), ("llava-1.5-13b", 5120, 40)])
def test_the_configs_are_llava_1_5s(name, hidden, layers):
    config = real_config(name)
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == \
        (32064, hidden, layers, layers)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy, config.image_token_id) == \
        (-2, "default", 32000)
    assert real_config(name, layers=2, vision_layers=3).text_config.num_hidden_layers == 2
    with pytest.raises(UserError, match="target_layers=99"):
        real_config(name, layers=99)


def test_the_tokenizer_has_llava_1_5s_vocabulary_and_special_ids():
    tokenizer = real_shape_tokenizer()
    assert len(tokenizer) == 32064
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")] == \
        [0, 1, 2, 32000, 32001]
    text = "Décris l'image 😀"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """A LLaVA-Instruct conversations file with image paths, a ShareGPT text-only file, and a
    target-answers JSON-lines file, each a few records."""
    folder = tmp_path_factory.mktemp("real-data")
    (folder / "images").mkdir()
    for i, colour in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (400 + 50 * i, 300), colour).save(folder / "images" / f"{i}.jpg")
    llava = [{"id": str(i), "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": f"A flat colour, {i}."}]}
        for i in range(4)]
    share = [{"id": f"s{i}", "conversations": [{"from": "human", "value": "Tell me a fact."},
                                               {"from": "gpt", "value": "Water boils at 100 degrees."}]} for i in range(4)]
    (folder / "llava.json").write_text(json.dumps(llava))
    (folder / "sharegpt.json").write_text(json.dumps(share))
    (folder / "answers.jsonl").write_text("".join(json.dumps({"image": f"images/{i}.jpg", "prompt": "Describe it.",
                                                              "answer": "A flat colour."}) + "\n" for i in range(4)))
    return folder


def real_args(recipe: str, data, out) -> list[str]:
    """The recipe as written, on files of its own formats, at its real shapes cut to 2 layers, 3 steps."""
    written = cli.load_recipe(recipe, cli.RECIPES_DIR)
    files = [f"data={data / 'answers.jsonl'}", f"image_folder={data}"] if written["data"].endswith(".jsonl") else \
        [f"data={data / 'llava.json'}", f"image_folder={data / 'images'}"]
    if written.get("text_data"):
        files.append(f"text_data={data / 'sharegpt.json'}")
    kind = "vispec" if "vispec" in recipe else "msd"  # a VSD recipe's baseline folder, untrained: enough for 3 steps
    small = ["batch_size=1", "grad_accum=1"]  # the shapes are real; a CPU affords one conversation per step
    if written.get("vsd", {}).get("enabled"):
        small += ["vsd.num_proposals=2", "vsd.contexts=2"]
    return [f"recipe={recipe}", f"target=random:llava-1.5-{'13b' if '13b' in recipe else '7b'}", "target_layers=2",
            "vision_layers=2", *files, f"drafter={kind}", *small, "steps=3", "warmup_steps=1", "dtype=float32",
            "device=cpu", "mixed_precision=no", "checkpoint_every=2", "eval_n=1", "eval_max_new_tokens=2",
            f"output_dir={out}"]


def train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmvsd.train", *args], env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REAL_RECIPES)
def test_every_real_recipe_runs_three_steps_at_its_real_shapes(recipe, real_data, tmp_path):
    result = train(real_args(recipe, real_data, tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    config = json.loads((out / "drafter" / "config.json").read_text())
    assert config["hidden_size"] == (5120 if "13b" in recipe else 4096) and config["vocab_size"] == 32064
    assert json.loads((out / "eval.json").read_text())["identical_outputs"] is True


def test_dry_run_estimates_memory_per_process_at_the_real_shapes(capsys):
    from mmvsd.train import run

    assert run(["recipe=llava13b_vispec", "target=random:llava-1.5-13b", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "# batch: 1 per process x 1 process x 8 accumulated = 8 conversations per step" in out
    assert "target weights (bfloat16, 13.35B parameters): 24.9 GB" in out
    assert "drafter weights (vispec, 500.7M parameters)" in out  # ViSpec's own code: 500.7M for 13B
    total = float(out.split("total: ")[1].split(" GB")[0])
    assert 28 < total < 40
