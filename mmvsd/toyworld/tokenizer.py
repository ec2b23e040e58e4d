"""The toy world's tokenizer: byte-level BPE trained on the toy corpus with `tokenizers`.

Every byte is in the base alphabet, so any Unicode text encodes and decodes exactly (whole toy
words become single tokens, anything else falls back to bytes).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmvsd.models.tiny import SPECIAL_TOKENS, wrap_tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tok)
