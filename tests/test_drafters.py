"""Drafter folders: round trip, and clear refusals of mismatched or broken checkpoints."""

import json

import pytest
import torch
from conftest import random_image, random_prompt

from mmvsd.config import TreeConfig
from mmvsd.drafters import build_drafter, load_drafter, save_drafter
from mmvsd.errors import UserError
from mmvsd.models.llava import LlavaTarget
from mmvsd.models.tiny import build_tiny_random


def first_tree(target, drafter, prompt):
    prefill = target.prefill(prompt)
    drafter.begin(prompt.input_ids, prefill)
    tokens = torch.cat([prompt.input_ids[1:], prefill.logits.argmax()[None]])
    return drafter.propose(prefill.hidden, tokens, TreeConfig())


def test_save_and_load_round_trip(tmp_path, tiny_target, rng):
    drafter = build_drafter("eagle", tiny_target, seed=5)
    folder = save_drafter(drafter, tmp_path / "drafter")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "eagle" and config["target"] == tiny_target.fingerprint()
    loaded = load_drafter(str(folder), tiny_target)
    for key, value in drafter.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert "embed_tokens.weight" not in drafter.state_dict()  # the target's, not saved
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    a, b = first_tree(tiny_target, drafter, prompt), first_tree(tiny_target, loaded, prompt)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    save_drafter(build_drafter("eagle", tiny_target, seed=6), folder)  # overwriting leaves one clean folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drafter"]


def test_a_drafter_for_another_target_is_refused(tmp_path, tiny_target):
    folder = save_drafter(build_drafter("eagle", tiny_target), tmp_path / "d")
    model, processor = build_tiny_random(hidden_size=96)
    other = LlavaTarget(model, processor, "wider")
    with pytest.raises(UserError, match="trained for another target .hidden_size 64 vs 96"):
        load_drafter(str(folder), other)


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda f: (f / "config.json").write_text("{oops"), "config.json is not a valid drafter config"),
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                          "kind": "medusa"})), "unknown kind 'medusa'"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), "cannot read its weights"),
])
def test_broken_drafter_folders_are_refused(tmp_path, tiny_target, breakage, message):
    folder = save_drafter(build_drafter("eagle", tiny_target), tmp_path / "d")
    breakage(folder)
    with pytest.raises(UserError, match=message):
        load_drafter(str(folder), tiny_target)


def test_unknown_kind_or_path(tiny_target):
    with pytest.raises(UserError, match="not a folder and not a drafter kind"):
        load_drafter("vispecc", tiny_target)
    with pytest.raises(UserError, match="unknown drafter kind"):
        build_drafter("nope", tiny_target)
