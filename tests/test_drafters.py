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


def begun(target, drafter, prompt):
    """Prefill `prompt`, start `drafter` on it; the prefill and the pairs' tokens, ending on the
    target's first token (as the decoding loop does)."""
    prefill = target.prefill(prompt)
    drafter.begin(prompt.input_ids, prefill)
    return prefill, torch.cat([prompt.input_ids[1:], prefill.logits.argmax()[None]])


def first_tree(target, drafter, prompt):
    prefill, tokens = begun(target, drafter, prompt)
    return drafter.propose(prefill.hidden, tokens, TreeConfig())


@pytest.mark.parametrize("kind", ["eagle", "msd", "vispec"])
def test_save_and_load_round_trip(tmp_path, tiny_target, rng, kind):
    drafter = build_drafter(kind, tiny_target, seed=5)
    folder = save_drafter(drafter, tmp_path / "drafter")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == kind and config["target"] == tiny_target.fingerprint()
    loaded = load_drafter(str(folder), tiny_target)
    for key, value in drafter.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert "embed_tokens.weight" not in drafter.state_dict()  # the target's, not saved
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    a, b = first_tree(tiny_target, drafter, prompt), first_tree(tiny_target, loaded, prompt)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    save_drafter(build_drafter(kind, tiny_target, seed=6), folder)  # overwriting leaves one clean folder
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
    with pytest.raises(UserError, match="not a folder, a drafter kind"):
        load_drafter("vispecc", tiny_target)
    with pytest.raises(UserError, match="unknown drafter kind"):
        build_drafter("nope", tiny_target)


def test_msd_reads_the_image_embeddings_and_eagle_does_not(tiny_target, rng):
    """Same weights, two images: MSD's tree changes with the image through its embeddings; an
    EAGLE drafter sees the image only through target features of the text after it."""
    from mmvsd.drafters.msd import MsdDrafter

    drafter = build_drafter("msd", tiny_target, seed=1)
    assert isinstance(drafter, MsdDrafter)
    prompt = tiny_target.encode(random_image(rng), "describe")
    prefill, tokens = begun(tiny_target, drafter, prompt)
    with torch.inference_mode():  # as in decoding
        x, positions = drafter.embed_pairs(prefill.hidden, tokens)
    image_pairs = prompt.input_ids[1:] == tiny_target.image_token_id
    assert torch.equal(x[: len(image_pairs)][image_pairs], prefill.image_embeds)
    assert positions.tolist() == list(range(1, len(tokens) + 1))


def test_vispec_compresses_each_image_and_starts_as_eagle(tiny_target, rng):
    from mmvsd.drafters.vispec import VispecDrafter

    drafter = build_drafter("vispec", tiny_target, seed=1)
    assert isinstance(drafter, VispecDrafter)
    prompt = tiny_target.encode(random_image(rng), "describe the image")
    prefill, tokens = begun(tiny_target, drafter, prompt)
    with torch.inference_mode():
        x, positions = drafter.embed_pairs(prefill.hidden, tokens)
        h, e = prefill.hidden[-3:], tokens[-3:]
        fused, plain = drafter.fuse(h, e), drafter.fc(torch.cat([h, drafter.embed_tokens(e)], -1))
    n_image = tiny_target.num_image_tokens
    assert len(x) == len(tokens) - n_image + 1  # the image's tokens become one compressed token
    assert positions.tolist() == sorted(positions.tolist()) and positions[-1] == len(tokens)
    last_image = int((prompt.input_ids[1:] == tiny_target.image_token_id).nonzero().max()) + 1
    assert last_image in positions.tolist()  # the compressed token keeps the image's last position
    assert drafter.image_feature.abs().sum() > 0  # g comes from the image
    assert torch.allclose(fused, plain)  # img_fc starts as [I | 0]: the plain EAGLE fusion


@pytest.mark.parametrize("kind", ["eagle", "msd", "vispec"])
def test_training_rollouts_draft_what_decoding_drafts(tiny_target, rng, kind):
    """VSD's rollouts run on a whole teacher-forced sequence; from each context they must see only
    the sequence up to it and their own nodes, exactly as `propose` does after that context."""
    from mmvsd.drafters.eagle import Rollout

    drafter = build_drafter(kind, tiny_target, seed=3)
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    prefill, tokens = begun(tiny_target, drafter, prompt)  # the training pass below resets the drafter
    features = prefill.hidden  # pair j: (h_j, x_{j+1})
    n, depth = len(tokens), 4
    contexts = torch.tensor([n - 1, n - 3, n - 6])
    rollout = Rollout(contexts[None], depth, lambda b, logits, level: logits.argmax(-1))
    with torch.no_grad():
        _, logits, paths = drafter(features[None], tokens[None], (tokens == tiny_target.image_token_id)[None],
                                   prefill.image_embeds[None], rollout)
    for m, c in enumerate(contexts.tolist()):
        drafter.reset((tokens == tiny_target.image_token_id)[: c + 1], prefill.image_embeds)
        tree = drafter.propose(features[: c + 1], tokens[: c + 1], TreeConfig(depth=depth, top_k=1, total_tokens=depth))
        assert tree.tokens[1:].tolist() == paths[0, m].tolist()
        logp = torch.log_softmax(logits[0, m], -1).gather(-1, paths[0, m, :, None])[:, 0]
        assert torch.allclose(tree.scores[1:], logp.cumsum(0), atol=1e-4)
