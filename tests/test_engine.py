"""The engine measured apart from any drafter: the oracle drafter, the per-step breakdown, and
commits of a whole accepted chain checked against a fresh prefill."""

import pytest
import torch

from mmvsd import bench
from mmvsd.config import BenchConfig, DecodeConfig, OracleConfig, TreeConfig
from mmvsd.decoding import autoregressive_generate, collect_tokens, speculative_generate
from mmvsd.decoding.speculative import PHASES
from mmvsd.drafters.oracle import OracleDrafter
from mmvsd.models.llava import Prompt

from conftest import random_image, random_prompt


def test_the_oracle_proposes_the_targets_own_chain_and_all_of_it_is_committed(tiny_target, rng):
    """Every drafted token plus the bonus is accepted, and the cache then holds exactly what a
    fresh prefill of prompt + answer would hold."""
    target = tiny_target
    prompt = target.encode(random_image(rng), random_prompt(rng))
    cfg = DecodeConfig(max_new_tokens=14, tree=TreeConfig(depth=6, top_k=1, total_tokens=6))
    reference = collect_tokens(autoregressive_generate(target, prompt, cfg))
    oracle = OracleDrafter(target.vocab_size)
    oracle.expect(reference)
    steps = list(speculative_generate(target, oracle, prompt, cfg))
    assert collect_tokens(steps) == reference
    assert [s.accepted for s in steps[1:]] == [6, 6]  # 1 (prefill) + 7 + 6 tokens (cut by the budget)
    # the last step's bonus token was cut by the budget, so the cache holds the whole answer
    committed = [(layer.keys[:, :, :layer.length].clone(), layer.values[:, :, :layer.length].clone())
                 for layer in target.cache.layers]
    fresh = Prompt(torch.cat([prompt.input_ids, torch.tensor(reference)]), prompt.pixel_values, "")
    target.prefill(fresh)
    for (keys, values), layer in zip(committed, target.cache.layers):
        assert keys.shape[2] == layer.length == len(fresh.input_ids)
        assert torch.allclose(keys, layer.keys[:, :, :layer.length], atol=1e-5)
        assert torch.allclose(values, layer.values[:, :, :layer.length], atol=1e-5)


@pytest.mark.parametrize("accept", [1.0, 0.5])
def test_the_oracle_sets_tau_and_the_bench_breaks_each_step_down(accept):
    report = bench.run_bench(BenchConfig(drafter="oracle", oracle=OracleConfig(accept),
                                         n=4, max_new_tokens=40, tree=TreeConfig(depth=4, top_k=1, total_tokens=4)))
    assert report["identical_outputs"] is True
    expected = sum(accept ** k for k in range(5))  # 1 + p + ... + p^4 (the last steps of an answer run short)
    assert abs(report["tau"] - expected) < (0.6 if accept == 1 else 0.5), report["tau"]
    assert set(report["step_ms"]) == set(PHASES) and all(v >= 0 for v in report["step_ms"].values())
    assert report["step_ms"]["verify"] > 0 and report["prefill_ms"] > 0
    assert report["speedup_limit"] > 1 and 0 < report["engine_efficiency"]
    assert report["engine_efficiency"] == pytest.approx(report["decode_speedup"] / report["speedup_limit"])
