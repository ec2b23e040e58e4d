"""The baseline drafter losses (EAGLE, Li et al. 2024, arXiv 2401.15077; used by MSD and ViSpec):
regress the target's next feature, and match the target's next-token distribution through the
frozen LM head."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def drafter_losses(predicted: torch.Tensor, next_features: torch.Tensor, next_logits: torch.Tensor,
                   mask: torch.Tensor, lm_head: torch.nn.Module, regression_weight: float,
                   token_weight: float, positions: torch.Tensor | float | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """predicted, next_features: [B, n, H]; next_logits: [B, n, V]; mask: [B, n] bool.

    loss = regression_weight * SmoothL1(predicted, h) + token_weight * CE(softmax(target), draft),
    both averaged over the masked positions. `positions` is what the sums are divided by
    (default: this batch's masked positions); data-parallel training passes the mean over
    processes, so that the averaged gradients are those of one process holding all the batches
    (each reported value is then this process's part: their mean over processes is the whole).
    Also reports top-1 agreement with the target."""
    predicted, next_features, next_logits = predicted[mask], next_features[mask], next_logits[mask]  # [m, ...]
    positions = predicted.shape[0] if positions is None else positions
    regression = F.smooth_l1_loss(predicted.float(), next_features.float(), reduction="sum")
    regression = regression / (positions * predicted.shape[-1])  # the mean over positions and features
    draft_logp = torch.log_softmax(lm_head(predicted).float(), dim=-1)
    token = -(torch.softmax(next_logits, dim=-1) * draft_logp).sum() / positions
    top1 = (draft_logp.argmax(-1) == next_logits.argmax(-1)).float().sum() / positions
    loss = regression_weight * regression + token_weight * token
    return loss, {"regression": regression.item(), "token_ce": token.item(), "top1": top1.item()}
