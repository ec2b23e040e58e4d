"""The lossless contract: greedy speculative output equals `model.generate(do_sample=False)`, token
for token, for every drafter: an untrained one, one forced to be right and one forced to be wrong."""

import random

import pytest
import torch
from conftest import random_image, random_prompt

from mmvsd.config import DecodeConfig, TreeConfig
from mmvsd.decoding import DraftTree, autoregressive_generate, collect_tokens, speculative_generate
from mmvsd.drafters import DRAFTERS, build_drafter
from mmvsd.metrics import tau

MAX_NEW = 24
pytestmark = pytest.mark.usefixtures("one_thread")  # fixed seeds, one thread: the same result on every run


def hf_greedy(target, prompt, max_new_tokens: int) -> list[int]:
    out = target.model.generate(input_ids=prompt.input_ids[None], pixel_values=prompt.pixel_values,
                                do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt.input_ids):].tolist()


class ScriptedDrafter:
    """Knows the target's greedy continuation and drafts a tree from it.

    right=True: the correct chain sits under decoy siblings (tried first), so verification must
    search the tree; right=False: every child is a wrong token, so nothing can be accepted.
    """

    kind = "scripted"

    def __init__(self, continuation: list[int], vocab: int, right: bool, depth: int):
        self.continuation, self.vocab, self.right, self.depth = continuation, vocab, right, depth

    def begin(self, input_ids, prefill):
        return {"emitted": -len(input_ids) + 1}  # the first propose() receives the prompt (minus BOS) + root

    def propose(self, state, features, tokens, tree_cfg):
        state["emitted"] += len(tokens)
        future = self.continuation[state["emitted"]: state["emitted"] + self.depth]
        tokens, parents = [int(tokens[-1])], [-1]
        parent = 0
        for correct in future:
            decoy = (correct + 1) % self.vocab
            tokens.append(decoy)
            parents.append(parent)
            if self.right:
                tokens.append(correct)
                parents.append(parent)
                parent = len(tokens) - 1
            else:
                tokens.append((correct + 2) % self.vocab)
                parents.append(parent)
                parent = len(tokens) - 2  # continue under a wrong token
        return DraftTree(torch.tensor(tokens), torch.tensor(parents), torch.zeros(len(tokens)))


def cases(n: int, seed: int):
    rng = random.Random(seed)
    return [(random_image(rng), random_prompt(rng)) for _ in range(n)]


@pytest.mark.parametrize("kind", list(DRAFTERS))
@pytest.mark.parametrize("tree", [TreeConfig(), TreeConfig(depth=3, top_k=2, total_tokens=6),
                                  TreeConfig(depth=7, top_k=10, total_tokens=60), TreeConfig(1, 1, 1)])
def test_untrained_drafter_is_lossless(tiny_target, tree, kind):
    drafter = build_drafter(kind, tiny_target, seed=3)
    cfg = DecodeConfig(max_new_tokens=MAX_NEW, tree=tree)
    for image, text in cases(6, seed=tree.depth):
        prompt = tiny_target.encode(image, text)
        expected = hf_greedy(tiny_target, prompt, MAX_NEW)
        steps = list(speculative_generate(tiny_target, drafter, prompt, cfg))
        assert collect_tokens(steps) == expected
        assert [t for s in autoregressive_generate(tiny_target, prompt, cfg) for t in s.tokens] == expected


@pytest.mark.parametrize("depth", [1, 4])
def test_a_drafter_forced_to_be_right_reaches_depth_plus_one(tiny_target, depth):
    checked = 0
    for image, text in cases(5, seed=10 + depth):
        prompt = tiny_target.encode(image, text)
        continuation = hf_greedy(tiny_target, prompt, MAX_NEW + depth + 1)
        drafter = ScriptedDrafter(continuation, tiny_target.vocab_size, right=True, depth=depth)
        steps = list(speculative_generate(tiny_target, drafter, prompt, DecodeConfig(max_new_tokens=MAX_NEW)))
        assert collect_tokens(steps) == continuation[:MAX_NEW]
        if tiny_target.eos_token_ids.isdisjoint(continuation[:MAX_NEW]):
            assert tau(steps) == depth + 1
            assert len(steps) == 1 + -(-(MAX_NEW - 1) // (depth + 1))  # prefill + ceil(rest / (depth + 1))
            checked += 1
    assert checked >= 3  # answers cut short by EOS leave the drafter nothing to know; most are not


def test_a_drafter_forced_to_be_wrong_accepts_nothing(tiny_target):
    for image, text in cases(5, seed=20):
        prompt = tiny_target.encode(image, text)
        continuation = hf_greedy(tiny_target, prompt, MAX_NEW + 5)
        drafter = ScriptedDrafter(continuation, tiny_target.vocab_size, right=False, depth=4)
        steps = list(speculative_generate(tiny_target, drafter, prompt, DecodeConfig(max_new_tokens=MAX_NEW)))
        assert collect_tokens(steps) == continuation[:MAX_NEW]
        assert tau(steps) == 1.0


def test_eos_and_budget_stop_generation(tiny_target):
    prompt = tiny_target.encode(*cases(1, seed=5)[0])
    continuation = hf_greedy(tiny_target, prompt, 10)
    eos = continuation[3]  # pretend the 4th greedy token is the end of the answer
    saved = tiny_target.eos_token_ids
    tiny_target.eos_token_ids = {eos}
    try:
        drafter = ScriptedDrafter(continuation + [0] * 10, tiny_target.vocab_size, right=True, depth=5)
        steps = list(speculative_generate(tiny_target, drafter, prompt, DecodeConfig(max_new_tokens=50)))
        tokens = collect_tokens(steps)
        assert tokens == continuation[: continuation.index(eos) + 1]
    finally:
        tiny_target.eos_token_ids = saved
    for budget in (1, 2, 7):
        steps = speculative_generate(tiny_target, build_drafter("eagle", tiny_target), prompt,
                                     DecodeConfig(max_new_tokens=budget))
        assert len(collect_tokens(steps)) == budget
