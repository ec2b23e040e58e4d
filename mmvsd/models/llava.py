"""The LLaVA-1.5 target adapter: the only code that knows transformers' LLaVA classes.

It wraps a stock `LlavaForConditionalGeneration` (CLIP tower + projector + Llama) so the decoding
loop can prefill an image and prompt, verify a whole draft tree in one forward pass, and keep
only the accepted path in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration
from transformers.cache_utils import Cache

from mmvsd.errors import UserError
from mmvsd.images import to_rgb
from mmvsd.models.chat import IMAGE_PLACEHOLDER, user_turn
from mmvsd.models.kv_cache import keep_positions, preallocated_cache
from mmvsd.models.skinny import linear, use_skinny_matmuls

# Cache positions allocated past the prompt at prefill: answers and trees of usual lengths never
# reallocate (a longer one doubles the storage once).
CACHE_HEADROOM = 512


@dataclass
class Prompt:
    """An encoded request: chat-formatted token ids with the image placeholders expanded."""

    input_ids: torch.Tensor  # [T]
    pixel_values: torch.Tensor | None  # [1, 3, S, S]; None for a later turn of a conversation (encode_turn)
    text: str


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [V] next-token logits after the prompt
    hidden: torch.Tensor  # [T, H] last-layer states (post-norm: what the LM head reads) of every prompt position
    image_embeds: torch.Tensor  # [n_img, H] projected image embeddings, in placeholder order
    image_mask: torch.Tensor  # [T] bool, True at image placeholder positions


class LlavaTarget:
    """A LLaVA-1.5 model, its processor and one sequence's KV cache (batch size 1)."""

    def __init__(self, model: LlavaForConditionalGeneration, processor, name: str):
        self.model = model.eval()
        self.language_model = model.model.language_model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.cache: Cache | None = None
        text_config = model.config.text_config
        self.vocab_size: int = text_config.vocab_size
        self.hidden_size: int = text_config.hidden_size
        self.num_layers: int = text_config.num_hidden_layers
        self.max_context: int = text_config.max_position_embeddings
        self.image_token_id: int = model.config.image_token_id
        self.num_image_tokens: int = _count_image_tokens(processor)
        self.eos_token_ids: set[int] = _eos_ids(model, self.tokenizer)
        use_skinny_matmuls(self.language_model, self.lm_head)  # drafting and verifying feed a few rows
        self.head_fp32: torch.Tensor | None = None  # see use_fp32_head

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def embed_tokens(self) -> torch.nn.Embedding:
        return self.language_model.embed_tokens

    @property
    def lm_head(self) -> torch.nn.Linear:
        return self.model.lm_head

    def use_fp32_head(self) -> None:
        """Compute logits from a float32 copy of the LM head's weights (a bf16/fp16 target's own
        logits are rounded to 8 or 11 bits, so the top two often tie exactly, and which one wins
        then depends on the batch shape of the forward)."""
        self.head_fp32 = self.lm_head.weight.float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] last-layer states -> [..., V] float32 logits."""
        if self.head_fp32 is None:
            return self.lm_head(hidden).float()
        return linear(hidden.float(), self.head_fp32)

    def fingerprint(self) -> dict:
        """What a drafter must agree with to be used on this target."""
        return {"vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "num_image_tokens": self.num_image_tokens}

    # ---------------------------------------------------------------- inputs

    def format_prompt(self, prompt: str) -> str:
        """The LLaVA-1.5 chat format: the processor's chat template, or the llava-hf default."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return user_turn(prompt, image=True)

    def encode(self, image: Image.Image, prompt: str, max_new_tokens: int = 1) -> Prompt:
        """Chat-format and tokenize a request; refuse what cannot be answered, naming the limit."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty; give a question or an instruction about the image")
        if IMAGE_PLACEHOLDER in prompt:
            raise UserError(f"the prompt contains {IMAGE_PLACEHOLDER!r}, which is reserved: the image is placed "
                            "automatically, remove it from the text")
        text = self.format_prompt(prompt.strip())
        batch = self.processor(images=to_rgb(image), text=text, return_tensors="pt")
        input_ids = batch["input_ids"][0]
        budget = self.max_context - max_new_tokens
        if len(input_ids) > budget:
            text_tokens = len(input_ids) - self.num_image_tokens
            raise UserError(
                f"the prompt is too long: {text_tokens} text tokens + {self.num_image_tokens} image tokens + "
                f"max_new_tokens={max_new_tokens} exceed the target's context of {self.max_context} tokens; "
                "shorten the prompt or lower max_new_tokens"
            )
        return Prompt(input_ids.to(self.device), batch["pixel_values"].to(self.device, self.dtype), text)

    def encode_turn(self, question: str, max_new_tokens: int = 1) -> Prompt:
        """A later turn of the conversation in the cache, about the same image: `USER: {question}
        ASSISTANT:` tokenized as training tokenizes it (`mmvsd.data.conversations`); refused when it
        and its answer would not fit in the target's context after the conversation so far."""
        if not isinstance(question, str) or not question.strip():
            raise UserError("the turn is empty; give a question or an instruction about the image")
        text = user_turn(question.strip(), image=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        context = self.cache.get_seq_length() + 2  # the answer's last token and a closing EOS come first
        if context + len(ids) + max_new_tokens > self.max_context:
            raise UserError(f"the conversation is too long: {context} positions so far + {len(ids)} for this turn + "
                            f"max_new_tokens={max_new_tokens} exceed the target's context of {self.max_context} "
                            "tokens; ask fewer turns or lower max_new_tokens")
        return Prompt(torch.tensor(ids, device=self.device), None, text)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # ---------------------------------------------------------------- forward passes

    @torch.inference_mode()
    def prefill(self, prompt: Prompt) -> PrefillOutput:
        """Run image + prompt through the model, starting a fresh KV cache."""
        self.cache = preallocated_cache(self.num_layers, len(prompt.input_ids) + CACHE_HEADROOM)
        out = self.model.model(input_ids=prompt.input_ids[None], pixel_values=prompt.pixel_values,
                               past_key_values=self.cache, use_cache=True)
        hidden = out.last_hidden_state[0]  # [T, H]
        return PrefillOutput(logits=self.logits(hidden[-1]), hidden=hidden,
                             image_embeds=out.image_hidden_states.reshape(-1, self.hidden_size),
                             image_mask=prompt.input_ids == self.image_token_id)

    def forward(self, tokens: torch.Tensor, depths: torch.Tensor,
                ancestors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `tokens` [N] after the cached prefix; return their logits [N, V] and hidden states
        [N, H]. `depths` and `ancestors`: as in `tree_inputs`."""
        return self.verify(tokens, *self.tree_inputs(depths, ancestors))

    def tree_inputs(self, depths: torch.Tensor, ancestors: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions [1, N] and attention mask of N new nodes at `depths` below the cached prefix.

        `ancestors[i, j]` says node j is node i or one of its ancestors: the tree attention pattern
        (None = a causal chain). Positions are prefix length + depth, so every node sits exactly
        where it would in plain decoding of its own path.
        """
        prefix = self.cache.get_seq_length()
        positions = (prefix + depths.to(self.device))[None]
        return positions, None if ancestors is None else self._tree_mask(ancestors, prefix)

    @torch.inference_mode()
    def verify(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The target forward over new tokens [N] at `positions` (see `tree_inputs`), appending
        them to the KV cache: logits [N, V] (fp32) and last-layer hidden states [N, H]."""
        out = self.language_model(input_ids=tokens.to(self.device)[None], attention_mask=mask, position_ids=positions,
                                  past_key_values=self.cache, use_cache=True)
        hidden = out.last_hidden_state[0]  # [N, H]
        return self.logits(hidden), hidden

    @torch.inference_mode()
    def verify_rows(self, cache: Cache, tokens: torch.Tensor, positions: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`verify` for a batch of sequences in a `rows_cache`: tokens and positions [B, N], additive
        mask [B, 1, N, K] -> logits [B, N, V] (fp32) and hidden states [B, N, H]."""
        out = self.language_model(input_ids=tokens.to(self.device), attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True)
        return self.logits(out.last_hidden_state), out.last_hidden_state

    @torch.no_grad()
    def path_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                    prefix_ends: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """The target's logits after every node of many continuations of a training batch, in one
        pass (the oracle of VSD training; no KV cache involved).

        input_ids, attention_mask: [B, T] right-padded; image_embeds: [B, n_img, H] the projected
        image embeddings of the rows that have an image (zeros elsewhere); paths: [B, M, L] tokens
        continuing each row after its token `prefix_ends` [B, M]. Node j of a path sits at position
        prefix_end + 1 + j and sees the prefix up to prefix_end and its own path up to itself.
        Returns [B, M, L, V]: logits of the token after each node."""
        b, t = input_ids.shape
        m, length = paths.shape[1:]
        device = self.device
        ids = torch.cat([input_ids, paths.flatten(1)], dim=1).to(device)  # [B, T + M L]
        embeds = self.embed_tokens(ids)
        image = torch.zeros_like(ids, dtype=torch.bool)
        image[:, :t] = ids[:, :t] == self.image_token_id  # a path's sampled image token stays a token
        embeds[image] = image_embeds.to(device, embeds.dtype)[image[:, :t].any(-1)].flatten(0, 1)
        node_path = torch.arange(m, device=device).repeat_interleave(length)  # [M L]
        node_depth = torch.arange(length, device=device).repeat(m)
        ends = prefix_ends.to(device).repeat_interleave(length, dim=1)  # [B, M L]
        keys = torch.arange(t, device=device)
        allowed = torch.zeros(b, t + m * length, t + m * length, dtype=torch.bool, device=device)
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        allowed[:, :t, :t] = causal & attention_mask.to(device).bool()[:, None]
        allowed[:, t:, :t] = keys <= ends[..., None]
        allowed[:, t:, t:] = (node_path[:, None] == node_path[None]) & (node_depth[None] <= node_depth[:, None])
        allowed[:, torch.arange(t), torch.arange(t)] = True  # padding rows see themselves (no NaN; never read)
        positions = torch.cat([torch.arange(t, device=device).expand(b, t), ends + 1 + node_depth], dim=1)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)  # additive, as in _tree_mask
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask[:, None],
                                     position_ids=positions).last_hidden_state
        return self.lm_head(hidden[:, t:]).float().view(b, m, length, -1)

    def _tree_mask(self, ancestors: torch.Tensor, prefix: int) -> torch.Tensor:
        # An additive float mask: transformers' eager attention adds the mask to the scores, so a
        # boolean mask there would be silently wrong.
        n = ancestors.shape[0]
        blocked = torch.finfo(self.dtype).min
        mask = torch.zeros(1, 1, n, prefix + n, dtype=self.dtype, device=self.device)
        mask[0, 0, :, prefix:].masked_fill_(~ancestors.to(self.device), blocked)
        return mask

    @torch.inference_mode()
    def commit(self, n_new: int, keep: torch.Tensor) -> None:
        """After `forward` appended `n_new` rows, keep only rows `keep` (indices among them, in order):
        an in-place move of the accepted path's few rows, whatever the context length."""
        prefix = self.cache.get_seq_length() - n_new
        keep_positions(self.cache, prefix, prefix + keep.to(self.device))


def _count_image_tokens(processor) -> int:
    blank = Image.new("RGB", (8, 8))
    ids = processor(images=blank, text=IMAGE_PLACEHOLDER, return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    return int((ids == image_id).sum())


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = tokenizer.eos_token_id
    return set(ids if isinstance(ids, list) else [ids]) - {None}
