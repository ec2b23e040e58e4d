"""Batched decoding (mmvsd.decoding.batch): every row lossless on its own, whatever the batch.

Rows differ in prompt length, image size, answer length and where EOS comes; requests outnumber
the batch so rows leave and new ones join mid-stream. Greedy rows must equal transformers'
`generate(do_sample=False)` token for token at B = 1, 3, 4 for every drafter, and a trained
drafter must propose, row by row, the very trees it proposes at batch size 1.
"""

import random

import pytest
import torch

from conftest import random_image, random_prompt
from mmvsd.config import DecodeConfig, TreeConfig
from mmvsd.decoding import collect_tokens, speculative_generate
from mmvsd.decoding.batch import batch_generate
from mmvsd.drafters import build_drafter
from mmvsd.drafters.oracle import OracleDrafter
from mmvsd.models.kv_cache import RowsLayer, keep_paths

TREE = TreeConfig(depth=5, top_k=2, total_tokens=8)


def by_request(steps, n: int, what=lambda step: step.tokens) -> list[list]:
    rows = [[] for _ in range(n)]
    for batch_step in steps:
        for request, step in batch_step.rows:
            rows[request] += what(step)
    return rows


def generate_greedy(target, prompt, max_new_tokens: int) -> list[int]:
    ids = prompt.input_ids[None]
    out = target.model.generate(input_ids=ids, pixel_values=prompt.pixel_values, attention_mask=torch.ones_like(ids),
                                do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(target.eos_token_ids),
                                pad_token_id=0)[0, ids.shape[1]:].tolist()
    cut = next((i + 1 for i, t in enumerate(out) if t in target.eos_token_ids), len(out))
    return out[:cut]


@pytest.fixture(scope="module")
def stream(tiny_target):
    """Six requests of different prompts and images, and the target's greedy answers, some ended
    early by an extra EOS id (a token the untrained target emits mid-answer)."""
    target, rng = tiny_target, random.Random(11)
    prompts = [target.encode(random_image(rng), random_prompt(rng), 24) for _ in range(6)]
    plain = [generate_greedy(target, p, 24) for p in prompts]
    early = plain[1][6]  # answers now end where this token first comes, at different lengths
    eos = target.eos_token_ids | {early}
    return prompts, eos


@pytest.mark.parametrize("kind", ["none", "eagle", "msd", "vispec", "oracle"])
def test_every_row_equals_generate_at_every_batch_size(tiny_target, stream, monkeypatch, kind):
    target = tiny_target
    prompts, eos = stream
    monkeypatch.setattr(target, "eos_token_ids", eos)
    expected = [generate_greedy(target, p, 24) for p in prompts]
    assert len({len(e) for e in expected}) >= 3  # answers of different lengths, early EOS included
    cfg = DecodeConfig(max_new_tokens=24, tree=TREE)
    for batch_size in (1, 3, 4):
        if kind == "oracle":  # proposes the right token 70% of the time: trees partly accepted
            drafter = OracleDrafter(target.vocab_size, accept=0.7)
            for answer in expected:
                drafter.expect(answer)
        else:
            drafter = None if kind == "none" else build_drafter(kind, target, seed=0)
        steps = list(batch_generate(target, drafter, prompts, cfg, batch_size))
        assert by_request(steps, len(prompts)) == expected, f"batch_size={batch_size}"
        assert max(len(step.rows) for step in steps) == batch_size  # rows really were in flight together
        if kind == "oracle":
            assert sum(step.accepted for batch_step in steps for _, step in batch_step.rows) > 0


@pytest.mark.parametrize("drafter_name", ["toy-s-msd"])
def test_a_trained_drafter_proposes_each_row_the_trees_it_proposes_alone(drafter_name):
    """Batched drafting computes what single-sequence drafting does: the same trees, step by step,
    for every row, and so the same accepted paths (toy-s answers from its own images)."""
    from mmvsd.data.requests import builtin_requests
    from mmvsd.drafters import load_drafter
    from mmvsd.models import load_target

    target = load_target("toy-s")
    drafter = load_drafter(drafter_name, target, seed=0)
    requests = builtin_requests(5, seed=3)
    prompts = [target.encode(r.image, r.prompt, 48) for r in requests]
    cfg = DecodeConfig(max_new_tokens=48, tree=TreeConfig(6, 2, 10))

    def trees(step):
        return [(step.tree.tokens.tolist(), step.path)] if step.tree is not None else []

    alone = [[t for s in speculative_generate(target, drafter, p, cfg) for t in trees(s)] for p in prompts]
    batched = by_request(batch_generate(target, drafter, prompts, cfg, 3), len(prompts), trees)
    assert batched == alone
    assert sum(len(path) - 1 for row in alone for _, path in row) / sum(map(len, alone)) > 1  # trees accepted


def test_a_batch_of_one_prompt_many_times_answers_each_once(tiny_target):
    """Nine copies of one request at batch size 4: nine answers, all the target's."""
    target = tiny_target
    prompt = target.encode(random_image(random.Random(2)), "describe the image", 10)
    cfg = DecodeConfig(max_new_tokens=10, tree=TREE)
    answer = collect_tokens(speculative_generate(target, build_drafter("eagle", target, seed=0), prompt, cfg))
    steps = list(batch_generate(target, build_drafter("eagle", target, seed=0), [prompt] * 9, cfg, 4))
    assert by_request(steps, 9) == [answer] * 9


def test_keep_paths_moves_each_rows_accepted_positions_into_place():
    layer = RowsLayer(16)
    for length in (5, 3, 7):  # rows of their own lengths
        keys = torch.arange(length, dtype=torch.float).reshape(1, 1, length, 1) + 100 * len(layer.lengths)
        layer.add(keys, -keys)
    starts = list(layer.lengths)
    layer.update(torch.zeros(3, 1, 4, 1), torch.zeros(3, 1, 4, 1))  # 4 tree slots per row, after each row's own
    for b, start in enumerate(starts):
        layer.keys[b, 0, start:start + 4, 0] = torch.arange(4, dtype=torch.float) + 10 * (b + 1)
    keep_paths([layer], starts, [[0, 2, 3], [0], [0, 1]])
    assert layer.lengths == [8, 4, 9]
    assert layer.keys[0, 0, 5:8, 0].tolist() == [10, 12, 13]
    assert layer.keys[1, 0, :4, 0].tolist() == [100, 101, 102, 20]
    assert layer.keys[2, 0, 7:9, 0].tolist() == [30, 31]
    assert torch.equal(layer.values[2, 0, :7, 0], -torch.arange(7, dtype=torch.float) - 200)
