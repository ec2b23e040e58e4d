"""VSD training: the E-step's acceptance and weights on hand-computed cases, each loss term against
a naive loop, the target's path scoring against plain forward passes, and lossless decoding
after VSD training."""

import json
import math

import pytest
import torch

from mmvsd.training.vsd import acceptance, arw_weights, car_loss, ess, plain_weights, weighted_path_nll

V = 9


def logits_with(probs: dict[int, float]) -> torch.Tensor:
    """Logits whose softmax puts `probs` on the given tokens and spreads the rest evenly."""
    rest = (1 - sum(probs.values())) / (V - len(probs))
    return torch.tensor([math.log(probs.get(v, rest)) for v in range(V)])


@pytest.fixture
def hand_case():
    """One context, S = 3 paths of L = 2 under the greedy oracle (the target's argmax is 5 then 7):
    s0 = [5, 7] fully accepted, s1 = [5, 2] rejected at token 2, s2 = [3, 7] rejected at token 1."""
    paths = torch.tensor([[[5, 7], [5, 2], [3, 7]]])
    draft = torch.stack([torch.stack([logits_with({5: 0.5}), logits_with({7: 0.25})]),
                         torch.stack([logits_with({5: 0.5}), logits_with({2: 0.6})]),
                         torch.stack([logits_with({3: 0.8}), logits_with({7: 0.1})])])[None]  # [1, 3, 2, V]
    target = torch.stack([logits_with({5: 0.9}), logits_with({7: 0.9})])[None, None].expand(1, 3, 2, V)
    return paths, draft, target


def test_greedy_acceptance_survival_and_ratio_by_hand(hand_case):
    paths, draft, target = hand_case
    alpha, log_ratio = acceptance(paths, draft, target, draft_temperature=1.0, target_temperature=0.0)
    assert alpha.tolist() == [[[1, 1], [1, 0], [0, 1]]]
    assert alpha.cumprod(-1).tolist() == [[[1, 1], [1, 0], [0, 0]]]  # survival: U = 2, 1, 0
    expected = [[-math.log(0.5), -math.log(0.25)], [-math.log(0.5), 0.0], [0.0, -math.log(0.1)]]
    assert torch.allclose(log_ratio[0], torch.tensor(expected), atol=1e-5)


def test_stochastic_acceptance_is_min_one_p_over_q():
    paths = torch.tensor([[4, 1]])
    draft = torch.stack([logits_with({4: 0.5}), logits_with({1: 0.2})])[None]
    target = torch.stack([logits_with({4: 0.25}), logits_with({1: 0.6})])[None]
    alpha, log_ratio = acceptance(paths, draft, target, draft_temperature=1.0, target_temperature=1.0)
    assert torch.allclose(alpha, torch.tensor([[0.5, 1.0]]), atol=1e-5)
    assert torch.allclose(log_ratio, torch.tensor([[math.log(0.5), math.log(3.0)]]), atol=1e-5)


def test_plain_and_arw_weights_by_hand(hand_case):
    paths, draft, target = hand_case
    alpha, log_ratio = acceptance(paths, draft, target, 1.0, 0.0)
    survival = alpha.cumprod(-1)
    # plain: only the fully accepted path counts
    assert torch.allclose(plain_weights(survival, log_ratio), torch.tensor([[1.0, 0.0, 0.0]]))
    assert plain_weights(survival[:, 1:], log_ratio[:, 1:]).tolist() == [[0.0, 0.0]]  # none valid: no weight
    # ARW, gamma 1/2: scores (L - U) log gamma + log rho = log 8, log 2 - log 2 = 0, 2 log(1/2) = log 1/4
    raw = torch.tensor([8.0, 1.0, 0.25])
    w, eta = arw_weights(survival, log_ratio, gamma=0.5, ess_floor=0.3)  # ESS of raw/9.25 is 1.315 >= 0.9
    assert eta.tolist() == [1.0] and torch.allclose(w[0], raw / raw.sum(), atol=1e-5)
    w, eta = arw_weights(survival, log_ratio, gamma=0.5, ess_floor=0.5)  # needs ESS >= 1.5: tempered
    assert 0 < eta.item() < 1
    assert torch.allclose(w[0], raw ** eta / (raw ** eta).sum(), atol=1e-5)
    assert ess(w).item() == pytest.approx(1.5, abs=1e-3)  # the largest eta that keeps the floor


def test_weighted_path_nll_matches_a_naive_loop():
    torch.manual_seed(0)
    c, s, length = 2, 3, 4
    log_q = torch.log_softmax(torch.randn(c, s, length, V), -1)[..., 0]
    survival = (torch.rand(c, s, length) > 0.3).float().cumprod(-1)
    w = torch.softmax(torch.randn(c, s), -1)
    total = 0.0
    for i in range(c):
        for j in range(s):
            for k in range(length):
                total -= w[i, j] * survival[i, j, k] * log_q[i, j, k]
    assert torch.allclose(weighted_path_nll(log_q, survival, w), total / c, atol=1e-6)


def test_car_penalises_the_first_rejected_token_by_its_confidence():
    torch.manual_seed(1)
    c, s, length = 2, 3, 4
    logits = torch.randn(c, s, length, V, requires_grad=True)
    log_q = torch.log_softmax(logits, -1)[..., 0]
    alpha = (torch.rand(c, s, length) > 0.4).float()
    survival = alpha.cumprod(-1)
    loss = car_loss(log_q, alpha, survival)
    naive = 0.0
    for i in range(c):
        for j in range(s):
            first = next((k for k in range(length) if alpha[i, j, k] == 0), None)
            if first is not None:
                q = log_q[i, j, first].exp()
                naive = naive + q.detach() * -torch.log(1 - q)
    assert torch.allclose(loss, naive / (c * s), atol=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0  # it trains the drafter


def test_path_logits_equal_plain_forward_passes(tiny_target):
    """The oracle's one pass over many continuations gives, at every node, what running the target
    on prefix + path gives."""
    from types import SimpleNamespace

    from transformers import DynamicCache

    from mmvsd.training.features import target_features, training_batch

    cfg = SimpleNamespace(seed=0, batch_size=2, max_length=512, describe_share=0.5, text_first_steps=0,
                          text_ramp_steps=0)
    conversations = training_batch(tiny_target, cfg, index=0, step=0)
    batch = target_features(tiny_target, conversations)
    lengths = conversations["attention_mask"].sum(-1)
    torch.manual_seed(0)
    ends = torch.stack([torch.tensor([int(n) - 1, int(n) - 5, int(n) // 2 + 40]) for n in lengths])  # [B, 3]
    paths = torch.randint(0, tiny_target.vocab_size, (2, 3, 4))
    paths[0, 0, 1] = tiny_target.image_token_id  # a sampled image token is a plain token
    got = tiny_target.path_logits(batch.input_ids, batch.attention_mask, batch.image_embeds, ends, paths)
    pixels = conversations["pixel_values"]
    pixel_row = conversations["has_image"].long().cumsum(0) - 1
    for b in range(2):
        for m in range(3):
            image = pixels[pixel_row[b]][None] if conversations["has_image"][b] else None
            cache = DynamicCache(config=tiny_target.model.config.text_config)
            with torch.no_grad():  # the prefix with its image, then the path decoded as plain tokens
                tiny_target.model.model(input_ids=batch.input_ids[b, : ends[b, m] + 1][None], pixel_values=image,
                                        past_key_values=cache, use_cache=True)
                out = tiny_target.language_model(input_ids=paths[b, m][None], past_key_values=cache, use_cache=True)
            expected = tiny_target.lm_head(out.last_hidden_state[0]).float()
            assert torch.allclose(got[b, m], expected, atol=1e-4), (b, m)


@pytest.mark.parametrize("arw, car, target_temperature", [(True, True, 0.0), (False, False, 1.0)])
def test_vsd_training_runs_logs_its_metrics_and_stays_lossless(tmp_path, arw, car, target_temperature):
    from mmvsd.train import run

    out = tmp_path / "run"
    assert run(["target=tiny-random", "drafter=msd", "describe_share=0", "batch_size=2", "steps=3", "eval_n=2",
                "eval_max_new_tokens=16", "vsd.enabled=true", "vsd.num_proposals=3", "vsd.depth=3",
                f"vsd.arw={arw}", f"vsd.car={car}", f"vsd.target_temperature={target_temperature}",
                f"output_dir={out}"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("vsd_loss", "accepted_len", "ess", "full_accept", "greedy_pruned", "accepted_is_greedy"):
        assert all(key in x and x[key] == x[key] for x in lines), key
    assert all(0 <= x["accepted_len"] <= 3 and 0 <= x["ess"] <= 1 for x in lines)
    assert json.loads((out / "eval.json").read_text())["identical_outputs"] is True
