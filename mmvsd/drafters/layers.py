"""The one Llama-style decoder layer every drafter uses, with a KV cache that can roll back.

Written out (RMSNorm, rotary attention, SwiGLU MLP) instead of borrowing transformers' layer so the
drafter's per-call overhead stays small: at toy sizes a drafter step must cost a few percent of a
target step, and the wrapper overhead would be most of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op instead of six: a draft level calls this once per node batch
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype  # bf16 / fp16: Llama's order (normalise in fp32, round, then scale)
        x = x.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype) * self.weight


class RotaryTables:
    """cos and sin of Llama's rotate-half RoPE, computed once for positions 0 .. L-1 (L doubles as
    needed) and looked up per call: one gather instead of eight small ops in every drafter step."""

    def __init__(self, head_dim: int, theta: float):
        self.half, self.theta = head_dim // 2, theta
        self.cos = self.sin = torch.empty(0, self.half)

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin, each [B, 1, T, head_dim / 2]."""
        if int(positions.max()) >= len(self.cos) or self.cos.device != positions.device or self.cos.dtype != dtype:
            length = max(2 * int(positions.max()) + 2, 256)
            freqs = 1.0 / self.theta ** (torch.arange(self.half, device=positions.device, dtype=torch.float32) / self.half)
            angles = torch.arange(length, device=positions.device, dtype=torch.float32)[:, None] * freqs
            self.cos, self.sin = torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)
        return self.cos[positions][:, None], self.sin[positions][:, None]


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, T, head_dim] by the tables of `rotary_tables`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class KVCache:
    """Keys and values of one layer for one sequence; `truncate` rolls back speculative rows.

    Without autograd (decoding) rows are written into a buffer that doubles when full, so a draft
    level costs no copy of the whole cache; with autograd on (training) they are concatenated, since
    writing in place would overwrite tensors that backward saved."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # [1, heads, capacity, hd]; rows past `length` are scratch
        self.values: torch.Tensor | None = None
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add rows [1, heads, n, hd] after the first `length`; return all rows up to them."""
        end = self.length + keys.shape[2]
        if torch.is_grad_enabled() or self.keys is None:
            self.keys = keys if self.length == 0 else torch.cat([self.keys[:, :, :self.length], keys], dim=2)
            self.values = values if self.length == 0 else torch.cat([self.values[:, :, :self.length], values], dim=2)
        else:
            if end > self.keys.shape[2]:
                self.keys, self.values = (_grown(t, self.length, max(2 * end, 256)) for t in (self.keys, self.values))
            self.keys[:, :, self.length:end] = keys
            self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)


def _grown(buffer: torch.Tensor, rows: int, capacity: int) -> torch.Tensor:
    """A buffer of `capacity` rows holding the first `rows` of `buffer`."""
    grown = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    grown[:, :, :rows] = buffer[:, :, :rows]
    return grown


class DecoderLayer(nn.Module):
    """EAGLE's drafter layer: a Llama block without the input norm (the authors' layer 0, their
    only one, has none: fc's output enters attention as it is), x + attn(x), then + mlp(norm(x)).
    q/k/v and gate/up are fused here (one matmul each per draft step); `drafters.layouts` splits
    them into the authors' separate projections and joins them back."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, rope_theta: float = 10000.0,
                 eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.rotary_tables = RotaryTables(self.head_dim, rope_theta)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.post_attention_norm = RMSNorm(hidden_size, eps)
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """x: [B, T, H]; positions: [B, T]; allowed: [B or 1, 1, T, S] bool (True = may attend),
        None = causal over x alone; cache: keys/values of earlier rows, extended in place."""
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = self.rotary_tables(positions, q.dtype)  # once for q and k
        q, k = rotary(torch.cat([q, k], dim=1), cos, sin).split(self.num_heads, dim=1)
        if cache is not None:
            k, v = cache.append(k, v)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=allowed is None)
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, h))
        gate, up = self.gate_up(self.post_attention_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)
