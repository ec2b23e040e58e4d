"""The drafter's own decoder layer against transformers' Llama layer, and its KV cache."""

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from mmvsd.drafters.layers import DecoderLayer, KVCache


def twin_layers(hidden=64, heads=4, intermediate=96):
    """transformers' Llama layer without its input norm (as EAGLE's layer 0) and ours, same weights."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=intermediate, rms_norm_eps=1e-6, attn_implementation="sdpa")
    theirs = LlamaDecoderLayer(config, layer_idx=0).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.2)
    theirs.input_layernorm = torch.nn.Identity()
    ours = DecoderLayer(hidden, heads, intermediate, rope_theta=10000.0)
    a = theirs.self_attn
    with torch.no_grad():
        ours.post_attention_norm.weight.copy_(theirs.post_attention_layernorm.weight)
        ours.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        ours.out.weight.copy_(a.o_proj.weight)
        ours.gate_up.weight.copy_(torch.cat([theirs.mlp.gate_proj.weight, theirs.mlp.up_proj.weight]))
        ours.down.weight.copy_(theirs.mlp.down_proj.weight)
    return ours, theirs, LlamaRotaryEmbedding(config)


def test_matches_transformers_llama_layer():
    ours, theirs, rope = twin_layers()
    x = torch.randn(2, 9, 64)
    positions = torch.arange(3, 12)[None].expand(2, -1)
    causal = torch.full((9, 9), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        expected = theirs(x, attention_mask=causal, position_ids=positions,
                          position_embeddings=rope(x, positions))
        expected = expected[0] if isinstance(expected, tuple) else expected
        got = ours(x, positions)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_cached_steps_equal_one_causal_pass():
    ours, _, _ = twin_layers()
    x = torch.randn(1, 7, 64)
    positions = torch.arange(1, 8)[None]
    with torch.no_grad():
        whole = ours(x, positions)
        cache = KVCache()
        steps = [ours(x[:, i:i + 1], positions[:, i:i + 1], None if i == 0 else torch.ones(1, 1, 1, i + 1, dtype=torch.bool),
                      cache) for i in range(7)]
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)
    cache.truncate(3)
    assert len(cache) == 3
