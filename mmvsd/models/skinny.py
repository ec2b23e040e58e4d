"""Faster CPU matmuls for the few-token forwards of decoding (a draft tree, its verification).

On CPU, `F.linear(x, W)` with a handful of rows in x runs a GEMM kernel that reads a large weight
several times slower than memory allows: at LLaVA-1.5-7B widths (11008 x 4096), 4 rows cost 2.9x
one row. The same product computed as (W @ x^T)^T streams the weight once (4 rows: 1.5x one row),
which is what speculative decoding needs: verifying N tokens should cost about what decoding one
does. Measured on 2 cores, fp32, median microseconds F.linear / this, rows 1, 2, 4, 8, 16:

    11008 x 4096:  8432/8537  17825/8587  24809/13209  23323/17924  27503/19027
     4096 x 4096:  3357/3392   6885/3219   7469/5245    6472/7294    7749/6104
     1536 x  384:    55/67      108/73      118/88       119/158      166/146

Small weights gain nothing (per-call overhead dominates), so only weights of 4M entries or more
take this path; one row and more than 16 keep F.linear, and GPUs are untouched.
"""

from __future__ import annotations

import types

import torch
from torch import nn

SKINNY_ROWS = 16
SKINNY_MIN_WEIGHTS = 1 << 22


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the transposed product for 2-16 rows and a large weight on CPU."""
    rows = x.numel() // x.shape[-1]
    if not 2 <= rows <= SKINNY_ROWS or x.device.type != "cpu" or weight.numel() < SKINNY_MIN_WEIGHTS:
        return nn.functional.linear(x, weight, bias)
    # 5-7 rows run slower than 8 (and 9-15 than 16): pad with zero rows to the faster count
    padded = rows if rows <= 4 else -(-rows // 8) * 8
    flat = nn.functional.pad(x.reshape(rows, -1), (0, 0, 0, padded - rows))
    out = (weight @ flat.T).T[:rows].reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def use_skinny_matmuls(*modules: nn.Module) -> None:
    """Give every large nn.Linear inside `modules` the few-rows CPU path (other inputs are unchanged)."""
    for module in modules:
        for layer in module.modules():
            if type(layer) is nn.Linear and layer.weight.numel() >= SKINNY_MIN_WEIGHTS:
                layer.forward = types.MethodType(_forward, layer)
