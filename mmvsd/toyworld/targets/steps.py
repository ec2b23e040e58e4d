"""What the toy build's stages share: LLaVA's forward from given image features, the answers'
loss and exact match, pixels without the processor's per-image cost, and the resumable loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmvsd.data.conversations import IGNORE
from mmvsd.training.checkpoint import atomic_torch_save, load_checkpoint
from mmvsd.training.optim import build_optimizer, build_schedule


def answer_logits(model, batch: dict[str, torch.Tensor], image_features: torch.Tensor) -> torch.Tensor:
    """LLaVA's forward with the image features given ([B, P, D], the tower's output space): the
    projector maps them into the language model's image-token positions. Logits [B, T, V]."""
    ids = batch["input_ids"]
    embeds = model.model.language_model.embed_tokens(ids)
    projected = model.model.multi_modal_projector(image_features)  # [B, P, H]
    embeds = embeds.masked_scatter((ids == model.config.image_token_id)[..., None], projected.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    return model.lm_head(hidden)


def weighted_loss(model, batch: dict[str, torch.Tensor], image_features: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answers, each token weighted as `encode_conversation` says."""
    logits = answer_logits(model, batch, image_features)[:, :-1]  # [B, T-1, V]
    labels, weights = batch["labels"][:, 1:], batch["weights"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (token_loss * weights).sum() / weights.sum()


def answers_right(model, batch: dict[str, torch.Tensor], image_features: torch.Tensor) -> torch.Tensor:
    """Per conversation: is every answer token the argmax (teacher forcing)? For one short answer
    this is greedy exact match, at the cost of one forward pass. [B] bool."""
    logits = answer_logits(model, batch, image_features)  # [B, T, V]
    gold = batch["labels"][:, 1:]
    return ((logits[:, :-1].argmax(-1) == gold) | (gold == IGNORE)).all(-1)


def pixel_values(images, image_processor) -> torch.Tensor:
    """What the CLIP processor returns for images already at its crop size, computed directly:
    the processor's per-image resize, crop and normalise cost more than a training step's data."""
    size = image_processor.crop_size["height"], image_processor.crop_size["width"]
    if any(im.size != size[::-1] or im.mode != "RGB" for im in images):
        return image_processor(images, return_tensors="pt")["pixel_values"]
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).float() / 255  # [B, H, W, 3]
    mean, std = torch.tensor(image_processor.image_mean), torch.tensor(image_processor.image_std)
    return ((pixels - mean) / std).permute(0, 3, 1, 2).contiguous()


def train_loop(name: str, module: torch.nn.Module, steps: int, make_batch, loss_fn, lr: float, checkpoint: Path,
               control=None, control_every: int = 0, checkpoint_every: int = 50) -> None:
    """A resumable loop: batches are a function of the step, so a restart sees the same data.

    It shares mmvsd.train's optimizer, schedule and atomic checkpoints but not its `Run`: this
    trains a target (its own modules and stage losses, one process), not a drafter under accelerate,
    and the shipped weights are this loop's exact output."""
    optimizer = build_optimizer(module.parameters(), lr, weight_decay=0.01)
    start = 0
    state = load_checkpoint(checkpoint)
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    schedule = build_schedule(optimizer, max(1, steps // 20), steps, start)
    module.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=name, unit="step", dynamic_ncols=True)
    postfix = {}
    for step in bar:
        loss, stats = loss_fn(make_batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        postfix.update(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in stats.items()})
        if control and ((step + 1) % control_every == 0 or step + 1 == steps):
            postfix.update({k: f"{v:.3f}" for k, v in control(step + 1).items()})
        bar.set_postfix(postfix, refresh=False)
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            atomic_torch_save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1},
                              checkpoint)
    atomic_torch_save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": steps}, checkpoint)
    module.eval()
