"""Training batches for drafters: conversations (data files, or fresh images from a plugin, with
or without their image), and the target's features on them.

Features are computed online, one no-grad target pass per batch: the drafter learns the target's
own next-token distribution at every answer position, whatever text the answer holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mmvsd.data.conversations import IGNORE, Encoded, encode_conversation, pad_batch
from mmvsd.decoding.drafting import make_pairs
from mmvsd.drafters.base import pair_position


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
    input_ids: torch.Tensor  # [B, n + 1] the conversations (right-padded), for passes over continuations
    attention_mask: torch.Tensor  # [B, n + 1]


def text_only_share(step: int, text_first_steps: int, text_ramp_steps: int) -> float:
    """MSD's curriculum (Lin et al. 2025, arXiv 2505.14260): text-only conversations first, then a
    linear ramp to fully multimodal ones. With no ramp it is ViSpec's two stages (Kang et al. 2025,
    arXiv 2509.15235): text-only, then multimodal."""
    if step < text_first_steps:
        return 1.0
    return max(0.0, 1.0 - (step - text_first_steps + 1) / max(1, text_ramp_steps)) if text_ramp_steps else 0.0


def training_batch(target, cfg, index: int, step: int, loaded=None, text_loaded=None,
                   rank: int = 0, processes: int = 1) -> dict[str, torch.Tensor]:
    """This process's share of micro-batch `index` (of optimizer step `step`, which sets the
    curriculum's text-only share).

    The micro-batch has `cfg.batch_size * processes` slots, and slot k is a function of the
    seed, the index and k only: `processes` processes with batch_size b draw exactly the
    conversations of one process with batch_size `processes * b`, in the same order (process r
    takes slots r*b .. r*b + b - 1), and a resumed run sees the same data.

    A slot is text-only with probability `text_only_share`: a conversation from `text_loaded`
    (e.g. ShareGPT) when given, else the main source's conversation without its image. The main
    source is `loaded` (a data file) or fresh images (`mmvsd.plugins.default_inputs`)."""
    share = text_only_share(step, cfg.text_first_steps, cfg.text_ramp_steps)
    stride = cfg.batch_size * processes
    items = []
    for slot in range(rank * cfg.batch_size, (rank + 1) * cfg.batch_size):
        keep_image = random.Random(f"mix-{cfg.seed}-{index}-{slot}").random() >= share
        if not keep_image and text_loaded is not None:
            items.append(_file_item(target, text_loaded, f"text-{cfg.seed}", index * stride + slot, False))
        elif loaded is not None:
            items.append(_file_item(target, loaded, f"data-{cfg.seed}", index * stride + slot, keep_image))
        else:
            items.append(_fresh_item(target, cfg, f"drafter-{cfg.seed}-{index}-{slot}", keep_image))
    encoded, images = zip(*items)
    has_image = [image is not None for image in images]
    batch = {**pad_batch(list(encoded), target.tokenizer.pad_token_id or 0, cfg.max_length),
             "has_image": torch.tensor(has_image)}
    if any(has_image):
        batch["pixel_values"] = target.processor.image_processor(
            [image for image in images if image is not None], return_tensors="pt")["pixel_values"]
    return batch


def _fresh_item(target, cfg, stream: str, keep_image: bool) -> tuple[Encoded, object]:
    """A fresh image with a conversation about it (from the plugin that provides default inputs:
    the toy world), from a stream of its own, apart from the images the toy targets were trained on."""
    from mmvsd.plugins import default_inputs

    side = target.processor.image_processor.crop_size["height"]
    image, turns = default_inputs().conversation(random.Random(stream), side, cfg.describe_share)
    return (encode_conversation(target.tokenizer, turns, target.image_token_id, target.num_image_tokens,
                                image=keep_image), image if keep_image else None)


def _file_item(target, loaded, stream: str, position: int, keep_image: bool) -> tuple[Encoded, object]:
    """Record `position` of a data file in a seeded order (wrapping around). A record whose image
    cannot be read is counted in `loaded.skipped` and replaced by one drawn from the slot's own
    stream, so every slot stays independent of the others; `keep_image` False drops a record's
    image (a text-only turn)."""
    from mmvsd.errors import UserError
    from mmvsd.images import load_image

    order = loaded.order(stream)
    fallback = random.Random(f"{stream}-{position}")
    for attempt in range(len(order)):
        record = loaded.records[order[position % len(order)] if attempt == 0 else fallback.randrange(len(order))]
        image = None
        if record.image is not None and keep_image:
            try:
                image = load_image(record.image)
            except UserError:
                loaded.skipped["unreadable image"] += 1
                continue
        return (encode_conversation(target.tokenizer, record.turns, target.image_token_id, target.num_image_tokens,
                                    image=image is not None), image)
    raise UserError("no record of the data file could be used (every image failed to load)")


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
    # A pair predicts the feature at its token, which predicts the token after it: the pair counts
    # when that next token is an answer token (the last pair's next token is not in the batch).
    _, answer_tokens = make_pairs(hidden, batch["labels"].to(device) != IGNORE)
    predicts_answer = torch.zeros_like(answer_tokens)
    predicts_answer[:, :-1] = answer_tokens[:, 1:]
    return draft_batch(target, hidden, ids, batch["attention_mask"].to(device), image_embeds, predicts_answer)


def draft_batch(target, hidden: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor,
                image_embeds: torch.Tensor, loss_mask: torch.Tensor) -> DraftBatch:
    """The pairs of a sequence's hidden states [B, T, H] and ids [B, T]; the target's logits come
    from its LM head here (cheap next to the target pass, and too big to cache)."""
    features, tokens = make_pairs(hidden, ids)
    next_features = hidden[:, pair_position(0):]  # what each pair predicts: the feature at its token
    return DraftBatch(features=features, tokens=tokens, image_pairs=tokens == target.image_token_id,
                      image_embeds=image_embeds, next_features=next_features,
                      next_logits=target.lm_head(next_features).float(), loss_mask=loss_mask,
                      input_ids=ids, attention_mask=attention_mask)
