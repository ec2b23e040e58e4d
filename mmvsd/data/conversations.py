"""LLaVA-1.5 conversations (the format of `mmvsd.models.chat`) as token ids with a loss mask on
the assistant's words.

Token weights let a short answer count for more than its one or two tokens: a turn of n answer
tokens weighs sqrt(n) in total, so a 90-token description no longer drowns the short answers
that teach a model to look things up in the image.

Each piece is tokenized on its own, split where the tokenizer would split the whole text anyway
(at special tokens, and before the space that starts an answer), so the ids equal what the
processor produces for the same text at inference; a test checks that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmvsd.models.chat import IMAGE_PLACEHOLDER, user_turn

IGNORE = -100  # label of a position that carries no loss


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on answer tokens and each answer's closing EOS
    weights: list[float]  # per token: 1/sqrt(answer length) on answers, 0 elsewhere (see below)


def pad_batch(encoded: list[Encoded], pad_id: int, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad conversations (cut to `max_length` first) into input_ids, labels, weights and
    attention_mask tensors [B, T]."""
    cut = [Encoded(e.input_ids[:max_length], e.labels[:max_length], e.weights[:max_length]) for e in encoded]
    length = max(len(e.input_ids) for e in cut)

    def pad(rows: list[list], value) -> torch.Tensor:
        return torch.tensor([row + [value] * (length - len(row)) for row in rows])

    return {"input_ids": pad([e.input_ids for e in cut], pad_id), "labels": pad([e.labels for e in cut], IGNORE),
            "weights": pad([e.weights for e in cut], 0.0),
            "attention_mask": pad([[1] * len(e.input_ids) for e in cut], 0)}


def encode_conversation(tokenizer, turns: list[tuple[str, str]], image_token_id: int,
                        num_image_tokens: int, image: bool = True) -> Encoded:
    """Token ids and labels of a conversation about one image (the image goes in the first turn),
    or of a text-only conversation when `image` is False."""
    def piece(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, labels, weights = [tokenizer.bos_token_id], [IGNORE], [0.0]
    for i, (question, answer) in enumerate(turns):
        before, placeholder, after = user_turn(question, image=i == 0 and image).partition(IMAGE_PLACEHOLDER)
        user = piece(before) + ([image_token_id] * num_image_tokens + piece(after) if placeholder else [])
        reply = piece(f" {answer}") + [tokenizer.eos_token_id]
        ids += user + reply
        labels += [IGNORE] * len(user) + reply
        weights += [0.0] * len(user) + [len(reply) ** -0.5] * len(reply)
    return Encoded(ids, labels, weights)
