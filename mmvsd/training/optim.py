"""AdamW with linear warmup and cosine decay: the optimiser every mmvsd training run uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not on norms and biases)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, start: int = 0,
                   floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' cosine schedule: linear warmup to the peak lr, cosine decay to `floor` x peak
    at `total` steps. `start`: the step a resumed run continues at (its lr is set now)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    for group in optimizer.param_groups:  # a scheduler that starts past step 0 needs to know the peak
        group.setdefault("initial_lr", group["lr"])
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=floor, last_epoch=start - 1)
