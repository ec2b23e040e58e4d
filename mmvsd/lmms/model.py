"""`--model mmvsd` for lmms-eval: a LLaVA-1.5 target alone or with a drafter, through mmvsd's one
speculative decoding loop.

    python -m lmms_eval --model mmvsd --model_args target=toy-m,drafter=runs/toy_msd/drafter,tree=narrow \\
        --tasks mmvsd_vqav2,mmvsd_chartqa,mmvsd_pope --include_path "$(python -m mmvsd.zoo tasks)" --batch_size 1

model_args are the bench's key=value settings, comma-separated (`mmvsd.config.LmmsConfig`: target,
drafter (absent = the target alone), tree (default auto: one chooser for the whole run) /
tree.depth / tree.top_k / tree.total_tokens,
temperature, top_p and top_k (overridden by a task's generation_kwargs), seed, dtype, device, threads),
parsed and checked like any mmvsd command line before the target loads. Each request's tau,
acceptance by depth and timings go to lmms-eval's throughput metrics (`avg_tau`,
`avg_acceptance_depth_1`, ... in the results JSON). A request that fails raises: lmms-eval would
otherwise score a silent empty answer as wrong.
"""

from __future__ import annotations

import time

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.protocol import ChatMessages

from mmvsd import cli, metrics
from mmvsd.checks import check_device
from mmvsd.config import DecodeConfig, LmmsConfig
from mmvsd.decoding.speculative import autoregressive_generate, collect_tokens, speculative_generate, tree_chooser
from mmvsd.drafters import load_drafter
from mmvsd.errors import UserError
from mmvsd.models import load_target
from mmvsd.threads import configure_threads


def manifests() -> ModelManifest:
    return ModelManifest(model_id="mmvsd", chat_class_path="mmvsd.lmms.model.Mmvsd")


class Mmvsd(lmms):
    is_simple = False

    def __init__(self, batch_size: int | str = 1, max_batch_size: int | None = None, **model_args) -> None:
        super().__init__()
        if str(batch_size) != "1":
            raise UserError(f"mmvsd decodes one request at a time: use --batch_size 1, not {batch_size}")
        # model_args are the bench's key=value settings (lmms-eval has already typed them: back to text)
        self.cfg = cli.parse(LmmsConfig, [f"{key}={value}" for key, value in model_args.items()])
        check_device(self.cfg.device)  # every setting checked before the target is loaded
        configure_threads(self.cfg.threads)
        self.target = load_target(self.cfg.target, self.cfg.dtype, self.cfg.device, self.cfg.download,
                                  self.cfg.target_layers, self.cfg.vision_layers)
        self.drafter = load_drafter(self.cfg.drafter, self.target, self.cfg.seed) if self.cfg.drafter else None
        self.chooser = None  # tree=auto's, made at the first request (calibrated once per machine and drafter)

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
                           temperature=float(gen_kwargs.get("temperature", self.cfg.temperature) or 0.0),
                           top_p=float(gen_kwargs.get("top_p") or self.cfg.top_p), seed=self.cfg.seed, tree=self.cfg.tree,
                           top_k=int(gen_kwargs.get("top_k") or self.cfg.top_k))
        prompt = self.target.encode(image, text, cfg.max_new_tokens)
        if self.drafter and cfg.tree.auto and self.chooser is None:
            self.chooser = tree_chooser(self.target, self.drafter, prompt, cfg.tree)
        start = time.perf_counter()
        steps = list(speculative_generate(self.target, self.drafter, prompt, cfg, self.chooser) if self.drafter
                     else autoregressive_generate(self.target, prompt, cfg))
        seconds = time.perf_counter() - start
        tokens = collect_tokens(steps)
        answer = self.target.decode(tokens)
        for stop in gen_kwargs.get("until") or []:
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        extra = {}
        if self.drafter:  # averaged over requests by lmms-eval: avg_tau, avg_acceptance_depth_1, ...
            by_depth = metrics.acceptance_by_depth(steps, self.cfg.tree.depth)
            extra = {"tau": metrics.tau(steps), **{f"acceptance_depth_{d + 1}": a for d, a in enumerate(by_depth)}}
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=len(tokens),
                    avg_speed=len(tokens) / seconds if seconds else 0.0, additional_metrics=extra)
        return GenerationResult(text=answer.strip(), token_counts=TokenCounts(output_tokens=len(tokens)))

    def loglikelihood(self, requests):
        raise NotImplementedError("mmvsd generates; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mmvsd answers single-turn requests")
