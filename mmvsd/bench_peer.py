"""`mmvsd bench assistant=NAME`: transformers' own assisted generation as a peer, timed on the
bench's inputs (plain `generate` and `generate(assistant_model=...)`), next to mmvsd's target alone."""

from __future__ import annotations

import time

import torch

from mmvsd.config import BenchConfig, is_greedy
from mmvsd.errors import UserError


def load_assistant(cfg: BenchConfig, target):
    """The small LLaVA for transformers' assisted generation; it must share the target's vocabulary."""
    from mmvsd.models import load_target

    try:
        assistant = load_target(cfg.assistant, cfg.dtype, cfg.device, cfg.download)
    except UserError as e:
        raise UserError(f"assistant: {e}") from None
    if assistant.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise UserError(f"assistant {cfg.assistant} has another tokenizer than target {cfg.target}; "
                        "assisted generation needs the same vocabulary")
    return assistant


def assisted_peer(cfg: BenchConfig, target, assistant, prompts: list, results: list) -> dict:
    """transformers' own assisted generation (`generate(assistant_model=...)`) on the same inputs:
    plain `generate` and assisted `generate`, both timed here, and assisted vs our target alone."""
    greedy = is_greedy(cfg.temperature)
    sample = {"do_sample": not greedy, **({} if greedy else {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                                             "top_k": cfg.top_k})}

    def generate(prompt, **kwargs) -> tuple[list[int], float]:
        ids = prompt.input_ids[None]
        start = time.perf_counter()
        out = target.model.generate(input_ids=ids, pixel_values=prompt.pixel_values, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=cfg.max_new_tokens, **sample, **kwargs)
        return out[0, ids.shape[1]:].tolist(), time.perf_counter() - start

    generate(prompts[0], assistant_model=assistant.model)  # warm-up
    plain_tokens = plain_s = assisted_tokens = assisted_s = 0
    identical = []
    for prompt in prompts:
        tokens, seconds = generate(prompt)
        plain_tokens, plain_s = plain_tokens + len(tokens), plain_s + seconds
        assisted, seconds = generate(prompt, assistant_model=assistant.model)
        assisted_tokens, assisted_s = assisted_tokens + len(assisted), assisted_s + seconds
        identical.append(assisted == tokens)
    base_tps = sum(r.n_base_tokens for r in results) / sum(r.baseline_s for r in results)
    assisted_tps = assisted_tokens / assisted_s
    return {"assistant": cfg.assistant, "generate_tokens_per_s": plain_tokens / plain_s,
            "assisted_tokens_per_s": assisted_tps, "speedup_vs_generate": assisted_tps / (plain_tokens / plain_s),
            "speedup_vs_target_alone": assisted_tps / base_tps,
            "identical_outputs": all(identical) if greedy else None}
