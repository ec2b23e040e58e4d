"""Draft trees: structure, and EAGLE-2 growth/reranking on hand-made and random log-probabilities."""

import random

import pytest
import torch

from mmvsd.decoding.tree import DraftTree, TreeGrower


def test_structure_of_a_hand_made_tree():
    #      0
    #    1   2
    #   3     4
    #         5
    tree = DraftTree(torch.tensor([9, 1, 2, 3, 4, 5]), torch.tensor([-1, 0, 0, 1, 2, 4]), torch.zeros(6))
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 3]
    assert tree.children(0) == [1, 2] and tree.children(2) == [4] and tree.children(5) == []
    assert tree.ancestors[5].nonzero().flatten().tolist() == [0, 2, 4, 5]
    assert tree.ancestors[3].nonzero().flatten().tolist() == [0, 1, 3]
    assert int(tree.depths.max()) == 3


def test_parents_must_come_first():
    with pytest.raises(ValueError, match="parents must come before children"):
        DraftTree(torch.tensor([1, 2, 3]), torch.tensor([-1, 2, 0]), torch.zeros(3))


def test_growth_keeps_the_best_candidates_and_their_ancestors():
    grower = TreeGrower(root_token=0, top_k=2)
    root_logp = torch.log_softmax(torch.tensor([[0.0, 3.0, 2.0, 0.0, 0.0, 0.0]]), -1)
    frontier = grower.expand([0], root_logp)
    assert [grower.tokens[i] for i in frontier] == [1, 2]
    logp = torch.log_softmax(torch.tensor([[5.0, 0, 0, 0, 0, 4.0], [0, 0, 0, 0, 3.0, 0]]), -1)
    frontier = grower.expand(frontier, logp)
    assert len(grower.tokens) == 1 + 2 + 4 and len(frontier) == 2
    tree = grower.tree(total_tokens=4)
    assert len(tree) == 5
    # every kept node's parent is kept, and scores never increase going down
    for i in range(1, len(tree)):
        parent = int(tree.parents[i])
        assert tree.scores[i] <= tree.scores[parent]
    # the kept set is the top-4 candidates by cumulative score
    all_scores = sorted(grower.scores[1:], reverse=True)[:4]
    assert sorted(tree.scores[1:].tolist(), reverse=True) == pytest.approx(all_scores)


@pytest.mark.parametrize("seed", range(20))
def test_random_growth_is_ancestor_closed_and_bounded(seed):
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    top_k, depth, total, vocab = rng.randint(1, 5), rng.randint(1, 6), rng.randint(1, 40), rng.randint(2, 30)
    grower = TreeGrower(root_token=0, top_k=top_k)
    frontier = grower.expand([0], torch.log_softmax(torch.randn(1, vocab, generator=gen) * 3, -1))
    for _ in range(depth - 1):
        frontier = grower.expand(frontier, torch.log_softmax(torch.randn(len(frontier), vocab, generator=gen) * 3, -1))
    tree = grower.tree(total)
    assert len(tree) == 1 + min(total, len(grower.tokens) - 1)
    assert int(tree.depths.max()) <= depth
    for i in range(1, len(tree)):
        assert 0 <= tree.parents[i] < i
        siblings = tree.children(int(tree.parents[i]))
        assert len({int(tree.tokens[s]) for s in siblings}) == len(siblings)  # no duplicate children
    kept = sorted(tree.scores[1:].tolist(), reverse=True)
    assert kept == pytest.approx(sorted(grower.scores[1:], reverse=True)[: len(kept)])


def test_chain():
    tree = DraftTree(torch.tensor([5, 6, 7]), torch.tensor([-1, 0, 1]), torch.zeros(3))  # a chain
    assert tree.depths.tolist() == [0, 1, 2] and tree.children(1) == [2]


def test_an_end_of_answer_token_is_a_leaf():
    """Nothing after EOS can be accepted: an EOS candidate is kept, never expanded (the frontier
    takes the open candidates only)."""
    grower = TreeGrower(root_token=0, top_k=2, stop_tokens=frozenset({2}))
    frontier = grower.expand([0], torch.log_softmax(torch.tensor([[0.0, 2.0, 3.0, 1.0]]), -1))
    assert [grower.tokens[i] for i in frontier] == [1]  # 2, the best candidate, ends the answer
    frontier = grower.expand(frontier, torch.log_softmax(torch.tensor([[0.0, 0, 9.0, 1.0]]), -1))
    assert [grower.tokens[i] for i in frontier] == [3]
    tree = grower.tree(total_tokens=6)
    eos = [i for i in range(len(tree)) if tree.tokens[i] == 2]
    assert len(eos) == 2 and all(tree.children(i) == [] for i in eos)
    everything_ends = TreeGrower(root_token=0, top_k=2, stop_tokens=frozenset({1, 2}))
    assert everything_ends.expand([0], torch.log_softmax(torch.tensor([[0.0, 5.0, 5.0, -9.0]]), -1)) == []
