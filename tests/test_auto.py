"""tree=auto: measured costs cached per machine and remeasured when the cache is bad or foreign, a
chooser that grows confident trees deep and doubtful ones not at all, falls back to plain decoding
when no tree pays, stays lossless, and the command-line rule that naming a tree turns it off."""

import json

import pytest
import torch
from conftest import random_image, random_prompt

from mmvsd import cli, metrics
from mmvsd.config import BenchConfig, DecodeConfig, TreeConfig
from mmvsd.decoding import TreeGrower, autoregressive_generate, collect_tokens, speculative_generate
from mmvsd.decoding.auto import AutoTree
from mmvsd.decoding.costs import Costs, _increasing, load_costs
from mmvsd.drafters import build_drafter
from mmvsd.drafters.oracle import OracleDrafter

AUTO = TreeConfig.presets()["auto"]


def flat_costs(draft_root: float, draft_level: float, verify: float = 1.0, per_token: float = 0.01,
               decode: float = 1.0) -> Costs:
    """Hand-made costs (seconds): verifying n tokens costs `verify` + (n - 1) `per_token`, a plain step `decode`."""
    return Costs(contexts=[0], sizes=[1, 64], verify=[[verify, verify + 63 * per_token]], decode=[decode],
                 draft_root=draft_root, draft_level=draft_level, draft_pair=0.0)


def test_costs_are_measured_once_then_read_and_remeasured_when_the_file_is_bad_or_foreign(tiny_target, tmp_path, rng):
    drafter = build_drafter("eagle", tiny_target, seed=0)
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    said = []
    costs = load_costs(tiny_target, drafter, prompt, 2, home=tmp_path, log=said.append)
    [file] = (tmp_path / "calibration").glob("*.json")
    assert len(said) == 1 and "measuring" in said[0] and str(file) in said[0]
    assert costs.sizes[0] == 1 and costs.sizes[-1] == 64 and len(costs.contexts) == 3
    assert costs.contexts == sorted(costs.contexts) and costs.draft_level > 0 and costs.decode_s(costs.contexts[0]) > 0
    assert all(row == sorted(row) for row in costs.verify)  # a bigger tree never costs less
    assert load_costs(tiny_target, drafter, prompt, 2, home=tmp_path, log=said.append) == costs and len(said) == 1

    saved = json.loads(file.read_text())
    saved["key"]["torch"] = "1.0.0"
    file.write_text(json.dumps(saved))
    load_costs(tiny_target, drafter, prompt, 2, home=tmp_path, log=said.append)
    assert len(said) == 3 and "another torch; recalibrating" in said[1]
    file.write_text('{"key": ')  # cut short, as by a killed writer
    load_costs(tiny_target, drafter, prompt, 2, home=tmp_path, log=said.append)
    assert "is unreadable (JSONDecodeError); recalibrating" in said[3]
    assert json.loads(file.read_text())["key"]["torch"] == torch.__version__  # replaced by a good file


def test_verification_costs_are_made_non_decreasing_keeping_their_mean():
    times = [3.0, 1.0, 2.0, 5.0, 4.0, 6.0]
    smooth = _increasing(times)
    assert smooth == sorted(smooth) and sum(smooth) == pytest.approx(sum(times))
    assert smooth == [2.0, 2.0, 2.0, 4.5, 4.5, 6.0]
    costs = Costs([100, 300], [1, 5], [[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], 0.1, 0.1, 0.0)
    assert costs.verify_s(3, 200) == pytest.approx(2.5) and costs.verify_s(5, 500) == pytest.approx(6.0)  # extended past the last


def grower_with(logp: float, levels: int, chooser: AutoTree) -> tuple[TreeGrower, int]:
    """A grower whose drafter gives its best child log-probability `logp` at every level (the rest
    far less), grown while `chooser` says so; returns it and the levels drafted."""
    vocab = 50
    grower = TreeGrower(0, chooser.top_k)
    row = torch.full((vocab,), -20.0)
    row[1], row[2] = logp, logp - 6
    frontier = grower.expand([0], row[None])
    depth = 1
    while depth <= levels and chooser.grows(grower, frontier, depth):
        frontier = grower.expand(frontier, row.expand(len(frontier), vocab))
        depth += 1
    return grower, depth - 1


def test_a_confident_drafter_is_drafted_deep_and_a_doubtful_one_not_at_all():
    costs = flat_costs(draft_root=0.1, draft_level=0.1)
    confident = AutoTree(costs, 2, 10, 64)
    grower, levels = grower_with(-0.01, 20, confident)
    assert levels == 9 and 9 <= confident.size(grower) <= 12  # the whole chain, not the unlikely siblings
    doubtful = AutoTree(costs, 2, 10, 64)
    grower, levels = grower_with(-6.0, 20, doubtful)
    assert levels == 0 and doubtful.size(grower) == 0  # p = 0.0025: verifying even one node does not pay


def test_a_drafter_that_is_always_wrong_sends_the_loop_to_plain_decoding(tiny_target, rng):
    """An oracle that never proposes the target's token, on costs where a failed tree costs twice
    a decoding step: after a failed tree the loop decodes plainly, and waits longer after each failed
    try; the output is the target's."""
    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    cfg = DecodeConfig(max_new_tokens=60, tree=AUTO)
    expected = collect_tokens(autoregressive_generate(tiny_target, prompt, cfg))
    drafter = OracleDrafter(tiny_target.vocab_size, accept=1e-9, seed=0)
    chooser = AutoTree(flat_costs(draft_root=1.0, draft_level=0.1), AUTO.top_k, AUTO.depth, AUTO.total_tokens)
    for _ in range(2):  # a session of two answers: the waits carry over
        drafter.expect(expected)
        steps = list(speculative_generate(tiny_target, drafter, prompt, cfg, chooser))
        assert collect_tokens(steps) == expected and all(s.accepted == 0 for s in steps)
    trees = [i for i, s in enumerate(steps[1:]) if s.tree is not None]
    assert len(trees) <= 2 and len(steps) - 1 - len(trees) >= 40  # a probe or two, the rest plain
    assert chooser.waited >= 16  # 4, 8, 16, ...: each failed probe doubles the wait


def test_trees_that_failed_on_short_answers_do_not_keep_a_long_answer_from_drafting(tiny_target, rng):
    """A session mixing answers (lmms-eval runs VQA, POPE and descriptions in one): trees fail on
    short answers and the wait grows past a long answer's length; the long answer still tries a
    tree once it is PROBE_AT tokens in, and keeps drafting when trees pay there."""
    from mmvsd.decoding.auto import PROBE_AT

    prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
    long_cfg = DecodeConfig(max_new_tokens=40, tree=AUTO)
    answer = collect_tokens(autoregressive_generate(tiny_target, prompt, long_cfg))
    chooser = AutoTree(flat_costs(draft_root=0.1, draft_level=0.05), AUTO.top_k, AUTO.depth, AUTO.total_tokens)
    wrong = OracleDrafter(tiny_target.vocab_size, accept=1e-9, seed=0)
    for _ in range(200):  # short answers whose trees never hit, until the wait outlasts the long answer
        wrong.expect(answer)
        list(speculative_generate(tiny_target, wrong, prompt, DecodeConfig(max_new_tokens=6, tree=AUTO), chooser))
        if chooser.wait > 40:
            break
    assert chooser.wait > 40
    right = OracleDrafter(tiny_target.vocab_size, accept=1.0)
    right.expect(answer)
    steps = list(speculative_generate(tiny_target, right, prompt, long_cfg, chooser))
    assert collect_tokens(steps) == answer
    first_tree = next(sum(len(s.tokens) for s in steps[:i]) for i, s in enumerate(steps) if s.tree is not None)
    assert first_tree == PROBE_AT  # plain until PROBE_AT tokens, then a tree
    assert sum(s.tree is not None for s in steps) >= 3 and metrics.tau(steps) > 3  # and trees from then on


def test_a_session_of_one_word_answers_stops_drafting_and_a_long_one_keeps_it(tiny_target, rng):
    chooser = AutoTree(flat_costs(draft_root=0.2, draft_level=0.1, verify=1.1), 2, 10, 64)
    assert not chooser.drafts(context=50, emitted=1, pending=40, budget=64)  # the prior: one two-token answer
    assert chooser.drafts(context=50, emitted=2, pending=1, budget=64)  # no answer known to end here
    for _ in range(5):
        chooser.finish(2)
    assert not chooser.drafts(context=50, emitted=1, pending=40, budget=64)
    for _ in range(16):
        chooser.finish(64)
    assert chooser.drafts(context=50, emitted=1, pending=40, budget=64)


@pytest.mark.parametrize("kind", ["eagle", "msd", "vispec"])
def test_auto_trees_are_lossless(tiny_target, kind):
    """Greedy output with tree=auto on measured costs equals the target alone's, answer after
    answer of one session."""
    import random

    drafter = build_drafter(kind, tiny_target, seed=3)
    rng = random.Random(kind)
    cfg = DecodeConfig(max_new_tokens=24, tree=AUTO)
    chooser = None
    for _ in range(4):
        prompt = tiny_target.encode(random_image(rng), random_prompt(rng))
        if chooser is None:
            from mmvsd.decoding.speculative import tree_chooser

            chooser = tree_chooser(tiny_target, drafter, prompt, AUTO)
        expected = collect_tokens(autoregressive_generate(tiny_target, prompt, cfg))
        assert collect_tokens(speculative_generate(tiny_target, drafter, prompt, cfg, chooser)) == expected


def test_naming_a_tree_or_a_field_turns_auto_off():
    assert cli.parse(BenchConfig, []).tree == AUTO
    assert cli.parse(BenchConfig, ["tree=short"]).tree == TreeConfig(6, 2, 10)
    assert cli.parse(BenchConfig, ["tree.depth=4"]).tree == TreeConfig(4, 2, 16)  # the other fields: narrow's
    assert cli.parse(BenchConfig, ["tree=auto", "tree.depth=6"]).tree == TreeConfig(6, 2, 64, auto=True)  # caps
    assert DecodeConfig().tree.auto is False  # the Python API keeps its fixed default
