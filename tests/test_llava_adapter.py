"""The target adapter agrees with transformers' own LlavaForConditionalGeneration on the same inputs."""

import random

import pytest
import torch
from conftest import random_image, random_prompt

from mmvsd.decoding.tree import DraftTree
from mmvsd.errors import UserError
from mmvsd.models import load_target
from mmvsd.models.llava import LlavaTarget
from mmvsd.models.tiny import build_tiny_random


def reference_logits(target: LlavaTarget, prompt, continuation: list[int]) -> torch.Tensor:
    """transformers' logits [T + len(continuation), V] over the prompt and a continuation, one full pass."""
    ids = torch.cat([prompt.input_ids, torch.tensor(continuation, dtype=torch.long)])[None]
    with torch.no_grad():
        return target.model(input_ids=ids, pixel_values=prompt.pixel_values).logits[0]


def random_tree(rng: random.Random, vocab: int, size: int) -> DraftTree:
    parents = [-1] + [rng.randrange(i) for i in range(1, size)]
    return DraftTree(torch.tensor([rng.randrange(vocab) for _ in range(size)]), torch.tensor(parents),
                     torch.zeros(size))


def path_to(tree: DraftTree, node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = int(tree.parents[node])
    return path[::-1]


def text_tokens(target, rng, n):
    """Ordinary text tokens (no image placeholder, which the reference would try to fill with pixels)."""
    return [t for t in (rng.randrange(5, target.vocab_size) for _ in range(n * 2)) if t != target.image_token_id][:n]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prefill_and_tree_logits_equal_transformers(attention, rng):
    model, processor = build_tiny_random(seed=7)
    model.set_attn_implementation(attention)
    target = LlavaTarget(model, processor, "tiny")
    for _ in range(3):
        prompt = target.encode(random_image(rng), random_prompt(rng))
        prefill = target.prefill(prompt)
        ref = reference_logits(target, prompt, [])
        assert torch.allclose(prefill.logits, ref[-1], atol=1e-5)
        with torch.inference_mode():
            assert torch.allclose(target.lm_head(prefill.hidden), ref, atol=1e-5)
        assert int(prefill.image_mask.sum()) == target.num_image_tokens == len(prefill.image_embeds)

        tree = random_tree(rng, target.vocab_size, 12)
        tree.tokens = torch.tensor(text_tokens(target, rng, 12))
        logits, hidden = target.forward(tree.tokens, tree.depths, tree.ancestors)
        assert logits.shape == (12, target.vocab_size) and hidden.shape == (12, target.hidden_size)
        for node in range(len(tree)):  # each node's logits = plain decoding of its own root-to-node path
            path = tree.tokens[path_to(tree, node)].tolist()
            assert torch.allclose(logits[node], reference_logits(target, prompt, path)[-1], atol=1e-5)


def test_commit_keeps_exactly_the_accepted_path(tiny_target, rng):
    target = tiny_target
    for _ in range(4):
        prompt = target.encode(random_image(rng), random_prompt(rng))
        target.prefill(prompt)
        tree = random_tree(rng, target.vocab_size, 10)
        tree.tokens = torch.tensor(text_tokens(target, rng, 10))
        target.forward(tree.tokens, tree.depths, tree.ancestors)
        leaf = rng.randrange(1, 10)
        path = path_to(tree, leaf)
        target.commit(len(tree), torch.tensor(path))
        assert target.cache.get_seq_length() == len(prompt.input_ids) + len(path)
        # decoding continues from the compacted cache as if the path had been decoded one by one
        nxt = text_tokens(target, rng, 1)
        logits, _ = target.forward(torch.tensor(nxt), torch.zeros(1, dtype=torch.long))
        expected = reference_logits(target, prompt, tree.tokens[path].tolist() + nxt)[-1]
        assert torch.allclose(logits[0], expected, atol=1e-5)


def test_a_saved_folder_loads_through_the_real_checkpoint_path(tmp_path, tiny_target, rng):
    tiny_target.model.save_pretrained(tmp_path)
    tiny_target.processor.save_pretrained(tmp_path)
    loaded = load_target(str(tmp_path))
    assert loaded.fingerprint() == tiny_target.fingerprint()
    image, text = random_image(rng), random_prompt(rng)
    a, b = tiny_target.encode(image, text), loaded.encode(image, text)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.allclose(tiny_target.prefill(a).logits, loaded.prefill(b).logits, atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("/nonexistent/folder", "no such folder"),
    ("not-a-hub-id", "not a hub id"),
    ("someone/llava-that-is-not-cached", "not in the local Hugging Face cache; pass download=true"),
])
def test_unknown_targets_are_refused_clearly(name, message):
    with pytest.raises(UserError, match=message):
        load_target(name)


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a LLaVA checkpoint folder .it has no config.json"):
        load_target(str(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="not a usable LLaVA checkpoint folder"):
        load_target(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="is a 'bert' checkpoint"):
        load_target(str(tmp_path))


def test_tiny_random_is_deterministic():
    a, _ = build_tiny_random(seed=0)
    b, _ = build_tiny_random(seed=0)
    c, _ = build_tiny_random(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.parametrize("headroom", [0, 512])
def test_the_cache_outgrows_its_storage_without_changing_results(tiny_target, rng, monkeypatch, headroom):
    """Storage is allocated once at prefill; a tree that does not fit doubles it, in place of
    failing, and what the model computes from it is unchanged."""
    import mmvsd.models.llava as llava

    monkeypatch.setattr(llava, "CACHE_HEADROOM", headroom)
    target = tiny_target
    prompt = target.encode(random_image(rng), random_prompt(rng))
    target.prefill(prompt)
    layer = target.cache.layers[0]
    capacity = layer.capacity
    tree = random_tree(rng, target.vocab_size, 10)
    tree.tokens = torch.tensor(text_tokens(target, rng, 10))
    target.forward(tree.tokens, tree.depths, tree.ancestors)
    assert (layer.capacity > capacity) == (headroom == 0)
    path = path_to(tree, 9)
    target.commit(len(tree), torch.tensor(path))
    nxt = text_tokens(target, rng, 1)
    logits, _ = target.forward(torch.tensor(nxt), torch.zeros(1, dtype=torch.long))
    assert torch.allclose(logits[0], reference_logits(target, prompt, tree.tokens[path].tolist() + nxt)[-1], atol=1e-5)
    assert layer.keys.data_ptr() == target.cache.layers[0].keys.data_ptr()  # commits move rows, never reallocate
