"""The baseline drafter losses (EAGLE, Li et al. 2024, arXiv 2401.15077; used by MSD and ViSpec):
regress the target's next feature, and match the target's next-token distribution through the
frozen LM head."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def drafter_losses(predicted: torch.Tensor, next_features: torch.Tensor, next_logits: torch.Tensor,
                   mask: torch.Tensor, lm_head: torch.nn.Module, regression_weight: float,
                   token_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """predicted, next_features: [B, n, H]; next_logits: [B, n, V]; mask: [B, n] bool.

    loss = regression_weight * SmoothL1(predicted, h) + token_weight * CE(softmax(target), draft),
    both averaged over the masked positions. Also reports top-1 agreement with the target."""
    predicted, next_features, next_logits = predicted[mask], next_features[mask], next_logits[mask]  # [m, ...]
    regression = F.smooth_l1_loss(predicted.float(), next_features.float())
    draft_logp = torch.log_softmax(lm_head(predicted).float(), dim=-1)
    token = -(torch.softmax(next_logits, dim=-1) * draft_logp).sum(-1).mean()
    top1 = (draft_logp.argmax(-1) == next_logits.argmax(-1)).float().mean()
    loss = regression_weight * regression + token_weight * token
    return loss, {"regression": regression.item(), "token_ce": token.item(), "top1": top1.item()}
