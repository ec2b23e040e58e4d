"""Training batches for drafters: toy-world conversations, and the target's features on them.

Features are computed online, one no-grad target pass per batch: the drafter learns the target's
own next-token distribution at every answer position, whatever text the answer holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mmvsd.data.conversations import IGNORE, encode_conversation, pad_batch


@dataclass
class DraftBatch:
    """Pairs (h_{t-1}, x_t) for t = 1 .. T-1 and what the drafter should predict at each."""

    features: torch.Tensor  # [B, n, H] target hidden states h_0 .. h_{n-1}
    tokens: torch.Tensor  # [B, n] x_1 .. x_n
    image_pairs: torch.Tensor  # [B, n] bool: the pair's token is an image token
    image_embeds: torch.Tensor  # [B, n_img, H] the target's projected image embeddings
    next_features: torch.Tensor  # [B, n] -> [B, n, H] h_1 .. h_n, the regression targets
    next_logits: torch.Tensor  # [B, n, V] the target's logits at h_1 .. h_n
    loss_mask: torch.Tensor  # [B, n] bool: h_t predicts an answer token


def toy_conversations(target, seed: int, step: int, batch_size: int, describe_share: float,
                      image_size: int = 128, text_share: float = 0.0) -> dict[str, torch.Tensor]:
    """A batch of fresh toy-world images with conversations about them, tokenized for `target`;
    a `text_share` of them without their image (text-only, as in MSD's first stage). The images
    come from a stream of their own, apart from those the toy targets were trained on."""
    from mmvsd.toyworld.build import pixel_values
    from mmvsd.toyworld.data import random_sample, training_conversation

    rng = random.Random(f"drafter-{seed}-{step}")
    samples = [random_sample(rng, image_size) for _ in range(batch_size)]
    has_image = [rng.random() >= text_share for _ in samples]
    encoded = [encode_conversation(target.tokenizer, training_conversation(x, rng, describe_share, 4),
                                   target.image_token_id, target.num_image_tokens, image=seen)
               for x, seen in zip(samples, has_image)]
    batch = {**pad_batch(encoded, target.tokenizer.pad_token_id or 0), "has_image": torch.tensor(has_image)}
    if any(has_image):
        images = [x.image for x, seen in zip(samples, has_image) if seen]
        batch["pixel_values"] = pixel_values(images, target.processor.image_processor)
    return batch


def text_only_share(step: int, text_first_steps: int, text_ramp_steps: int) -> float:
    """MSD's curriculum (Lin et al. 2025, arXiv 2505.14260): text-only conversations first, then a
    linear ramp to fully multimodal ones."""
    if step < text_first_steps:
        return 1.0
    return max(0.0, 1.0 - (step - text_first_steps + 1) / max(1, text_ramp_steps)) if text_ramp_steps else 0.0


def file_conversations(target, loaded, seed: int, step: int, batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """A batch of records from a data file (`mmvsd.data.loaders`), in a seeded order that is a
    function of the step (so a resumed run sees the same data). A record whose image cannot be
    read is skipped, counted in `loaded.skipped`, and replaced by the next one."""
    from mmvsd.errors import UserError
    from mmvsd.images import load_image

    order = list(range(len(loaded.records)))
    random.Random(f"data-{seed}").shuffle(order)
    encoded, images, has_image = [], [], []
    position = step * batch_size
    while len(encoded) < batch_size:
        if position >= (step + 1) * batch_size + len(order):
            raise UserError("no record of the data file could be used (every image failed to load)")
        record = loaded.records[order[position % len(order)]]
        position += 1
        if record.image is not None:
            try:
                image = load_image(record.image)
            except UserError:
                loaded.skipped["unreadable image"] += 1
                continue
            images.append(image)
        has_image.append(record.image is not None)
        encoded.append(encode_conversation(target.tokenizer, record.turns, target.image_token_id,
                                           target.num_image_tokens, image=record.image is not None))
    batch = {**pad_batch(encoded, target.tokenizer.pad_token_id or 0, max_length), "has_image": torch.tensor(has_image)}
    if images:
        batch["pixel_values"] = target.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return batch


@torch.no_grad()
def target_features(target, batch: dict[str, torch.Tensor]) -> DraftBatch:
    """One target pass over a batch of conversations -> the drafter's inputs and targets."""
    device, dtype = target.device, target.dtype
    ids = batch["input_ids"].to(device)
    pixels = batch.get("pixel_values")
    out = target.model.model(input_ids=ids, pixel_values=None if pixels is None else pixels.to(device, dtype),
                             attention_mask=batch["attention_mask"].to(device))
    hidden = out.last_hidden_state  # [B, T, H], after the final norm: what the LM head reads
    b, h = hidden.shape[0], hidden.shape[-1]
    image_embeds = hidden.new_zeros(b, target.num_image_tokens, h)  # zeros for text-only conversations
    if pixels is not None:
        image_embeds[batch["has_image"].to(device)] = out.image_hidden_states.reshape(-1, target.num_image_tokens, h)
    labels = batch["labels"].to(device)
    # h_t predicts token t+1: pair j (predicting h_{j+1}) counts when token j+2 is an answer token.
    predicts_answer = torch.zeros_like(labels[:, 1:], dtype=torch.bool)
    predicts_answer[:, :-1] = labels[:, 2:] != IGNORE
    return DraftBatch(features=hidden[:, :-1], tokens=ids[:, 1:], image_pairs=ids[:, 1:] == target.image_token_id,
                      image_embeds=image_embeds,
                      next_features=hidden[:, 1:], next_logits=target.lm_head(hidden[:, 1:]).float(),
                      loss_mask=predicts_answer)
