"""`random:llava-1.5-7b` and `random:llava-1.5-13b`: LLaVA-1.5's real configurations (those of
llava-hf/llava-1.5-7b-hf and -13b-hf: CLIP ViT-L/14 at 336 px, 576 image tokens read at layer -2,
a Llama-2 language model, vocabulary 32064) with seeded random weights, built in code.

An instrument for engine and training costs at the real shapes, not a model: its answers are
noise. `layers` / `vision_layers` keep only the first N decoder layers of the language model /
vision tower, so that the rest fits a CPU.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from mmvsd.errors import UserError
from mmvsd.models.tiny import llava_processor, wrap_tokenizer

VOCAB, IMAGE_TOKEN, PAD_TOKEN = 32064, 32000, 32001  # as llava-1.5-hf: Llama's 32000 + <image>, <pad>, padding
LANGUAGE = {"llava-1.5-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
            "llava-1.5-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)}
REAL_SHAPES = tuple(f"random:{name}" for name in LANGUAGE)


def real_config(name: str, layers: int = 0, vision_layers: int = 0) -> LlavaConfig:
    """The LlavaConfig of llava-hf/`name`-hf, keeping the first `layers` / `vision_layers` layers (0 = all)."""
    if name not in LANGUAGE:
        raise UserError(f"target random:{name}: unknown; known: {', '.join(REAL_SHAPES)}")
    language = LANGUAGE[name]
    for key, value, most in (("target_layers", layers, language["num_hidden_layers"]), ("vision_layers", vision_layers, 24)):
        if not 0 <= value <= most:
            raise UserError(f"{key}={value}: {name} has {most} such layers; give 1..{most}, or 0 for all")
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers or 24,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=VOCAB, **{**language, "num_hidden_layers": layers or language["num_hidden_layers"]},
                       num_key_value_heads=language["num_attention_heads"], max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False)


def real_shape_tokenizer():
    """A byte-level tokenizer with Llama-2's special ids and LLaVA-1.5's vocabulary size: the bytes
    after <unk>, <s>, </s>; unused fillers up to 32000; <image> = 32000, <pad> = 32001."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), IMAGE_TOKEN)})
    vocab.update({"<image>": IMAGE_TOKEN, "<pad>": PAD_TOKEN})
    vocab.update({f"<unused{i}>": i for i in range(PAD_TOKEN + 1, VOCAB)})
    tokenizer = wrap_tokenizer(Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")))
    tokenizer.model_max_length = 4096  # Llama-2's context (the target refuses longer prompts itself)
    return tokenizer


def build_real_shape(target: str, layers: int = 0, vision_layers: int = 0, seed: int = 0,
                     dtype: torch.dtype = torch.float32, device: str = "cpu"
                     ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """`random:llava-1.5-7b` (or -13b) with seeded random weights, made directly in `dtype` on `device`."""
    config = real_config(target.removeprefix("random:"), layers, vision_layers)
    tokenizer = real_shape_tokenizer()
    assert len(tokenizer) == VOCAB and tokenizer.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = PAD_TOKEN
    return model.eval(), llava_processor(tokenizer, 336, 14)
