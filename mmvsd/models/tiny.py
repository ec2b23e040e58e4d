"""`tiny-random`: a seeded, untrained LLaVA-1.5 built from a config in code, for tests and quick checks.

Same classes as the real checkpoints (CLIP vision tower, projector, Llama, LlavaProcessor), only
tiny: 64x64 images in 8x8 patches give 64 image tokens; a byte-level tokenizer encodes any text.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

from mmvsd.models.chat import CHAT_TEMPLATE, IMAGE_PLACEHOLDER

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]


def byte_tokenizer(alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens + LLaVA's special tokens.

    `alphabet` restricts the vocabulary to those characters (others become <unk>): a tiny
    vocabulary lets tests enumerate a model's exact output distribution.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for char in alphabet if alphabet is not None else sorted(pre_tokenizers.ByteLevel.alphabet()):  # a set: fix its order
        vocab.setdefault(char, len(vocab))
    return wrap_tokenizer(Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")))


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Byte-level pre-tokenizer and decoder, LLaVA's special tokens, BOS added: a transformers tokenizer."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=1024)


def image_processor(size: int) -> CLIPImageProcessorPil:
    """CLIP preprocessing (shortest-edge resize, centre crop, CLIP mean/std) at `size` pixels."""
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def llava_processor(tokenizer: PreTrainedTokenizerFast, size: int, patch: int) -> LlavaProcessor:
    return LlavaProcessor(image_processor=image_processor(size), tokenizer=tokenizer, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_tiny_random(seed: int = 0, image_size: int = 64, patch_size: int = 8, hidden_size: int = 64,
                      num_layers: int = 2, alphabet: str | None = None
                      ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The seeded tiny LLaVA: same seed, same weights."""
    tokenizer = byte_tokenizer(alphabet)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       initializer_range=0.1, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), llava_processor(tokenizer, image_size, patch_size)
