"""Faster CPU matmuls for the few-token forwards of decoding (a decode step, a draft tree).

On CPU, `F.linear(x, W)` with a handful of rows in x runs a GEMM kernel that reads the weights
several times slower than memory allows: at LLaVA-1.5-7B widths, 16 rows cost 3.5x one row. The
same product computed as (W @ x^T)^T streams the weights once (16 rows cost 2x one row), which is
what speculative decoding needs: verifying N tokens should cost about what decoding one does.
Measured with `python -m mmvsd.bench` (README, "The engine at LLaVA-1.5-7B shapes").
"""

from __future__ import annotations

import types

import torch
from torch import nn

SKINNY_ROWS = 16  # above this, F.linear is as fast (measured at 4096 x 11008, fp32, 2 cores)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the transposed product for a few rows on CPU."""
    rows = x.numel() // x.shape[-1]
    if rows > SKINNY_ROWS or x.device.type != "cpu":
        return nn.functional.linear(x, weight, bias)
    # 5-7 rows run slower than 8 (and 9-15 than 16): pad with zero rows to the faster count
    padded = rows if rows <= 4 else -(-rows // 8) * 8
    flat = nn.functional.pad(x.reshape(rows, -1), (0, 0, 0, padded - rows))
    out = (weight @ flat.T).T[:rows].reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def use_skinny_matmuls(*modules: nn.Module) -> None:
    """Give every nn.Linear inside `modules` the few-rows CPU path (other inputs are unchanged)."""
    for module in modules:
        for layer in module.modules():
            if type(layer) is nn.Linear:
                layer.forward = types.MethodType(_forward, layer)
