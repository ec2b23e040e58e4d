"""`--model mmvsd` for lmms-eval: a LLaVA-1.5 target alone or with a drafter, through mmvsd's one
speculative decoding loop.

    python -m lmms_eval --model mmvsd --model_args target=toy-m,drafter=runs/toy_msd/drafter \\
        --tasks mmvsd_vqav2,mmvsd_chartqa,mmvsd_pope --include_path "$(python -m mmvsd.zoo tasks)" --batch_size 1

model_args: target (an id as everywhere in mmvsd), drafter (a folder or a kind; absent = target
alone), depth / top_k / total_tokens (the draft tree), temperature and top_p (overridden by a
task's generation_kwargs), seed, dtype, device, threads (CPU threads; 0 = automatic), all checked
before the target loads. Each request's tau, acceptance by depth and timings go to lmms-eval's
throughput metrics (`avg_tau`, `avg_acceptance_depth_1`, ... in the results JSON). A request that fails raises: lmms-eval would otherwise score a silent empty
answer as wrong.
"""

from __future__ import annotations

import time

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.protocol import ChatMessages

from mmvsd import metrics
from mmvsd.checks import check_device
from mmvsd.threads import configure_threads
from mmvsd.config import DecodeConfig, TreeConfig
from mmvsd.decoding.speculative import autoregressive_generate, speculative_generate
from mmvsd.drafters import load_drafter
from mmvsd.errors import UserError
from mmvsd.models import DTYPES, load_target


def manifests() -> ModelManifest:
    return ModelManifest(model_id="mmvsd", chat_class_path="mmvsd.lmms.model.Mmvsd")


class Mmvsd(lmms):
    is_simple = False

    def __init__(self, target: str = "toy-m", drafter: str | None = None, depth: int = 10, top_k: int = 2,
                 total_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 dtype: str = "float32", device: str = "cpu", threads: int = 0, batch_size: int | str = 1,
                 **unused) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise UserError(f"mmvsd decodes one request at a time: use --batch_size 1, not {batch_size}")
        if unused:
            raise UserError(f"unknown model_args for mmvsd: {', '.join(sorted(unused))} (see mmvsd.lmms.model)")
        try:  # every setting checked before the target is loaded
            self.tree = TreeConfig(int(depth), int(top_k), int(total_tokens))
            self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        except ValueError as e:
            raise UserError(f"mmvsd model_args: {e}") from None
        DecodeConfig(1, self.temperature, self.top_p, self.seed, self.tree)
        if dtype not in DTYPES:
            raise UserError(f"mmvsd model_args: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        check_device(device)
        configure_threads(int(threads))
        self.target = load_target(target, dtype, device)
        self.drafter = load_drafter(drafter, self.target, seed) if drafter else None

    def generate_until(self, requests) -> list[GenerationResult]:
        results = []
        for request in requests:
            ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
            images, _, _ = messages.extract_media()
            text = "\n".join(part.text for message in messages.messages for part in message.content
                             if part.type == "text")
            if len(images) != 1:
                raise UserError(f"{task} doc {doc_id}: LLaVA-1.5 answers about exactly one image, got {len(images)}")
            results.append(self._answer(images[0], text, dict(gen_kwargs)))
        return results

    def _answer(self, image, text: str, gen_kwargs: dict) -> GenerationResult:
        cfg = DecodeConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or 128),
                           temperature=float(gen_kwargs.get("temperature", self.temperature) or 0.0),
                           top_p=float(gen_kwargs.get("top_p") or self.top_p), seed=self.seed, tree=self.tree)
        prompt = self.target.encode(image, text, cfg.max_new_tokens)
        start = time.perf_counter()
        steps = list(speculative_generate(self.target, self.drafter, prompt, cfg) if self.drafter
                     else autoregressive_generate(self.target, prompt, cfg))
        seconds = time.perf_counter() - start
        tokens = [t for step in steps for t in step.tokens]
        answer = self.target.decode(tokens)
        for stop in gen_kwargs.get("until") or []:
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        extra = {}
        if self.drafter:  # averaged over requests by lmms-eval: avg_tau, avg_acceptance_depth_1, ...
            by_depth = metrics.acceptance_by_depth(steps, self.tree.depth)
            extra = {"tau": metrics.tau(steps), **{f"acceptance_depth_{d + 1}": a for d, a in enumerate(by_depth)}}
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=len(tokens),
                    avg_speed=len(tokens) / seconds if seconds else 0.0, additional_metrics=extra)
        return GenerationResult(text=answer.strip(), token_counts=TokenCounts(output_tokens=len(tokens)))

    def loglikelihood(self, requests):
        raise NotImplementedError("mmvsd generates; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mmvsd answers single-turn requests")
