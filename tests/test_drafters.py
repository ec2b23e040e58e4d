"""Drafters: the pair convention, what each kind reads, training rollouts equal to decoding, and
drafter folders (round trip, clear refusals of mismatched or broken checkpoints)."""

import json

import pytest
import torch
from conftest import random_image, random_prompt

from mmvsd.config import DecodeConfig, TreeConfig
from mmvsd.drafters import DRAFTERS, build_drafter, load_drafter, save_drafter
from mmvsd.decoding.drafting import make_pairs
from mmvsd.drafters.base import Rollout, pair_position
from mmvsd.errors import UserError
from mmvsd.models.llava import LlavaTarget
from mmvsd.models.tiny import build_tiny_random


def begun(target, drafter, prompt):
    """Prefill `prompt`, start `drafter` on it; its state, the prefill and the pairs, ending on the
    target's first token (as the decoding loop does)."""
    prefill = target.prefill(prompt)
    state = drafter.begin(prompt.input_ids, prefill)
    features, tokens = make_pairs(prefill.hidden, torch.cat([prompt.input_ids, prefill.logits.argmax()[None]]))
    return state, prefill, features, tokens


def first_tree(target, drafter, prompt):
    state, _, features, tokens = begun(target, drafter, prompt)
    return drafter.propose(state, features, tokens, TreeConfig())


def test_pair_t_is_the_feature_before_token_t():
    """Pinned by hand: positions 0..3 hold tokens 10, 11, 12, 13 and features h0..h3."""
    hidden = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # h_t = t
    ids = torch.tensor([10, 11, 12, 13])
    features, tokens = make_pairs(hidden, ids)  # teacher forcing: h3 has no next token
    assert features[:, 0].tolist() == [0, 1, 2] and tokens.tolist() == [11, 12, 13]
    assert pair_position(torch.arange(3)).tolist() == [1, 2, 3]  # each pair sits at its token's position
    features, tokens = make_pairs(hidden, torch.tensor([10, 11, 12, 13, 14]))  # decoding: + the sampled token
    assert features[:, 0].tolist() == [0, 1, 2, 3] and tokens.tolist() == [11, 12, 13, 14]
    batch_features, batch_tokens = make_pairs(hidden[None].expand(2, -1, -1), ids[None].expand(2, -1))
    assert batch_features.shape == (2, 3, 1) and batch_tokens.tolist() == [[11, 12, 13]] * 2


def test_one_drafter_serves_two_sequences_at_once(tiny_target, rng):
    """Decoding state lives in the DraftState, not on the module: interleaving two sequences'
    steps gives each the trees it gets alone."""
    drafter = build_drafter("vispec", tiny_target, seed=2)
    prompts = [tiny_target.encode(random_image(rng), random_prompt(rng)) for _ in range(2)]
    alone = [first_tree(tiny_target, drafter, p) for p in prompts]
    a, b = (begun(tiny_target, drafter, p) for p in prompts)
    tree_b = drafter.propose(b[0], *b[2:], TreeConfig())
    tree_a = drafter.propose(a[0], *a[2:], TreeConfig())
    assert torch.equal(tree_a.tokens, alone[0].tokens) and torch.equal(tree_b.tokens, alone[1].tokens)


@pytest.mark.parametrize("kind", list(DRAFTERS))
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
    (lambda f: (f / "config.json").write_text("{oops"), "config.json is not valid"),
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                          "kind": "medusa"})), "unknown kind 'medusa'"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), "cannot read its weights"),
    (lambda f: (f / "config.json").write_text(json.dumps({k: v for k, v in json.loads((f / "config.json").read_text()).items()
                                                          if k != "format"})), "written by an earlier mmvsd .format 1."),
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
    state, prefill, features, tokens = begun(tiny_target, drafter, prompt)
    with torch.inference_mode():  # as in decoding
        x, positions = drafter.embed_pairs(state, features, tokens)
    image_pairs = make_pairs(prefill.hidden, prompt.input_ids == tiny_target.image_token_id)[1]
    assert torch.equal(x[: len(image_pairs)][image_pairs], prefill.image_embeds)
    assert positions.tolist() == list(range(1, len(tokens) + 1))


def test_vispec_compresses_each_image_and_starts_as_eagle(tiny_target, rng):
    from mmvsd.drafters.vispec import VispecDrafter

    drafter = build_drafter("vispec", tiny_target, seed=1)
    assert isinstance(drafter, VispecDrafter)
    prompt = tiny_target.encode(random_image(rng), "describe the image")
    state, prefill, features, tokens = begun(tiny_target, drafter, prompt)
    with torch.inference_mode():
        x, positions = drafter.embed_pairs(state, features, tokens)
        h, e = features[-3:], tokens[-3:]
        fused, plain = drafter.fuse(state, h, e), drafter.fc(torch.cat([drafter.embed_tokens(e), h], -1))
    n_image = tiny_target.num_image_tokens
    assert len(x) == len(tokens) - n_image + 1  # the image's tokens become one compressed token
    assert positions.tolist() == sorted(positions.tolist()) and positions[-1] == len(tokens)
    last_image = int(pair_position((tokens == tiny_target.image_token_id).nonzero().max()))
    assert last_image in positions.tolist()  # the compressed token keeps the image's last position
    assert state.image_feature.abs().sum() > 0  # g comes from the image
    assert torch.allclose(fused, plain)  # img_fc starts as [I | 0]: the plain EAGLE fusion


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_training_rollouts_draft_what_decoding_drafts(tiny_target, rng, kind):
    """VSD's rollouts run on a whole teacher-forced sequence; from each context they must see only
    the sequence up to it and their own nodes, exactly as `propose` does after that context."""
    drafter = build_drafter(kind, tiny_target, seed=3)
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    _, prefill, features, tokens = begun(tiny_target, drafter, prompt)
    n, depth = len(tokens), 4
    contexts = torch.tensor([n - 1, n - 3, n - 6])
    rollout = Rollout(contexts[None], depth, lambda b, logits, level: logits.argmax(-1))
    with torch.no_grad():
        _, logits, paths = drafter(features[None], tokens[None], (tokens == tiny_target.image_token_id)[None],
                                   prefill.image_embeds[None], rollout)
    for m, c in enumerate(contexts.tolist()):
        state = drafter.start((tokens == tiny_target.image_token_id)[: c + 1], prefill.image_embeds)
        tree = drafter.propose(state, features[: c + 1], tokens[: c + 1],
                               TreeConfig(depth=depth, top_k=1, total_tokens=depth))
        assert tree.tokens[1:].tolist() == paths[0, m].tolist()
        logp = torch.log_softmax(logits[0, m], -1).gather(-1, paths[0, m, :, None])[:, 0]
        assert torch.allclose(tree.scores[1:], logp.cumsum(0), atol=1e-4)


def test_a_registered_kind_is_everywhere_a_kind_is(tiny_target, monkeypatch, rng):
    """Adding a drafter kind is one class with @register_drafter: build, load, --help and decoding
    take it from the registry."""
    from mmvsd import cli
    from mmvsd.config import TrainConfig
    from mmvsd.decoding import collect_tokens, speculative_generate
    from mmvsd.drafters.base import register_drafter
    from mmvsd.drafters.eagle import EagleDrafter

    monkeypatch.setitem(DRAFTERS, "blind", None)  # so that the registry is restored after the test

    @register_drafter("blind")
    class BlindDrafter(EagleDrafter):  # ignores the target's features: drafts from tokens alone
        def fuse(self, state, features, tokens):
            return super().fuse(state, torch.zeros_like(features), tokens)

    drafter = build_drafter("blind", tiny_target)
    assert isinstance(drafter, BlindDrafter) and drafter.kind == "blind"
    assert "(eagle, msd, vispec, blind)" in cli.help_text(TrainConfig, "mmvsd.train", "")
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    assert len(collect_tokens(speculative_generate(tiny_target, drafter, prompt, DecodeConfig(8)))) == 8


def test_a_drafted_end_of_answer_gets_no_children(tiny_target, rng):
    """A drafter that favours EOS everywhere: EOS nodes are leaves of every tree, and the answer is
    still the target's own."""
    from mmvsd.decoding import speculative

    drafter = build_drafter("eagle", tiny_target, seed=0)
    eos = min(tiny_target.eos_token_ids)
    assert drafter.stop_tokens == frozenset(tiny_target.eos_token_ids)
    logp = drafter._logp
    drafter._logp = lambda hidden: logp(hidden).index_fill(-1, torch.tensor([eos]), -0.01)  # EOS near-certain
    prompt = tiny_target.encode(random_image(rng), "describe the image")
    steps = list(speculative.speculative_generate(tiny_target, drafter, prompt, DecodeConfig(max_new_tokens=12)))
    trees = [s.tree for s in steps if s.tree is not None]
    assert trees and all(any(t.tokens[i] == eos for i in range(1, len(t))) for t in trees)
    for tree in trees:
        assert all(tree.children(i) == [] for i in range(len(tree)) if tree.tokens[i] == eos and i > 0)
    alone = speculative.collect_tokens(speculative.autoregressive_generate(tiny_target, prompt, DecodeConfig(max_new_tokens=12)))
    assert speculative.collect_tokens(steps) == alone
