"""`--model mmvsd` for lmms-eval: a LLaVA-1.5 target alone or with a drafter, through mmvsd's
decoding loops.

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

`--batch_size N` (N > 1) decodes N requests at once (`mmvsd.decoding.batch`), drafting a fixed tree
(`tree=auto` becomes `batch_tree`'s preset); `--batch_size 1` decodes one at a time, as before.
`generate_until_multi_round` tasks are answered as one conversation per document, one at a time.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import distributed as dist

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import _record_metrics, get_logged_metrics_history, log_metrics
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.protocol import ChatMessages

from mmvsd import cli, metrics
from mmvsd.checks import check_device
from mmvsd.config import DecodeConfig, LmmsConfig
from mmvsd.decoding.batch import batch_generate, batch_tree, check_batch_memory
from mmvsd.decoding.speculative import (Dialogue, Step, autoregressive_generate, collect_tokens, speculative_generate,
                                        tree_chooser)
from mmvsd.drafters import load_drafter
from mmvsd.errors import UserError
from mmvsd.images import load_image
from mmvsd.models import load_target
from mmvsd.models.llava import Prompt
from mmvsd.threads import configure_threads

# With --batch_size N, requests are encoded CHUNK * N at a time: their images wait on the device until
# their turn (pixel values in full precision), and each chunk's last rows decode in a thinning batch.
CHUNK = 16


def manifests() -> ModelManifest:
    return ModelManifest(model_id="mmvsd", chat_class_path="mmvsd.lmms.model.Mmvsd")


@dataclass
class _Request:
    """One generate_until request, read: its image and text, and where it came from (for errors)."""

    image: object  # a PIL image, or a file path
    text: str
    gen_kwargs: dict
    where: str  # "TASK doc ID"


class Mmvsd(lmms):
    is_simple = False

    def __init__(self, batch_size: int | str = 1, max_batch_size: int | None = None, **model_args) -> None:
        super().__init__()
        self.batch_size = parse_batch_size(batch_size)
        # model_args are the bench's key=value settings (lmms-eval has already typed them: back to text)
        self.cfg = cli.parse(LmmsConfig, [f"{key}={value}" for key, value in model_args.items()])
        # Under torchrun / accelerate launch each process answers its share of the documents (lmms-eval
        # splits them by rank) on a device of its own, with its share of the cores (configure_threads)
        self._rank, self._world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        device = process_device(self.cfg.device, int(os.environ.get("LOCAL_RANK", 0)), self._world_size)
        check_device(device)  # every setting checked before the target is loaded
        configure_threads(self.cfg.threads)
        if self._world_size > 1:  # the process group lmms-eval gathers results through (gloo on CPUs)
            self.accelerator = Accelerator(cpu=device == "cpu")
        self.target = load_target(self.cfg.target, self.cfg.dtype, device, self.cfg.download,
                                  self.cfg.target_layers, self.cfg.vision_layers)
        self.drafter = load_drafter(self.cfg.drafter, self.target, self.cfg.seed) if self.cfg.drafter else None
        self.chooser = None  # tree=auto's, made at the first request (calibrated once per machine and drafter)

    @property
    def device(self) -> torch.device:
        return self.target.device

    def generate_until(self, requests) -> list[GenerationResult]:
        # lmms-eval pads the processes' shares to one length with copies whose answers it drops:
        # they are answered empty, unseen by the speed metrics
        real = [request for request in requests if not _padding(request)]
        with combined_metrics(self._world_size):
            answers = iter(self._generate_until(real))
        return [GenerationResult(text="", token_counts=TokenCounts(output_tokens=0)) if _padding(request)
                else next(answers) for request in requests]

    def _generate_until(self, requests) -> list[GenerationResult]:
        if self.batch_size == 1:
            return [self._answer(self._read(request)) for request in requests]
        # requests decode together only with the same settings; results go back in lmms-eval's order
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self._settings(request.args[2]), []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in groups.values():
            for start in range(0, len(indices), CHUNK * self.batch_size):
                chunk = indices[start:start + CHUNK * self.batch_size]  # images read a chunk at a time
                for i, result in zip(chunk, self._answer_batch([self._read(requests[i]) for i in chunk])):
                    results[i] = result
        return results

    def _settings(self, gen_kwargs: dict) -> tuple:
        """What a request's generation settings decide: its answer's decoding and where it is cut."""
        cfg = self._decode_config(gen_kwargs)
        return cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, tuple(gen_kwargs.get("until") or ())

    def _read(self, request) -> _Request:
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        where = f"{task} doc {doc_id}"
        images, text = _content(doc_to_messages(self.task_dict[task][split][doc_id]))
        if len(images) != 1:
            raise UserError(f"{where}: LLaVA-1.5 answers about exactly one image, got {len(images)}")
        return _Request(images[0], text, dict(gen_kwargs), where)

    def _decode_config(self, gen_kwargs: dict) -> DecodeConfig:
        return DecodeConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or 128),
                            temperature=float(gen_kwargs.get("temperature", self.cfg.temperature) or 0.0),
                            top_p=float(gen_kwargs.get("top_p") or self.cfg.top_p),
                            top_k=int(gen_kwargs.get("top_k") or self.cfg.top_k),
                            seed=self.cfg.seed, tree=self.cfg.tree)

    def _encode(self, read: _Request, max_new_tokens: int) -> Prompt:
        try:  # a task may hand an image as a file path: read it with mmvsd's checks
            image = load_image(read.image) if isinstance(read.image, (str, Path)) else read.image
            return self.target.encode(image, read.text, max_new_tokens)
        except (UserError, OSError) as e:  # OSError: Pillow's, for image data it cannot decode
            raise UserError(f"{read.where}: {' '.join(str(e).split())}") from None

    def _answer(self, read: _Request) -> GenerationResult:
        cfg = self._decode_config(read.gen_kwargs)
        steps, seconds = self._generate(self._encode(read, cfg.max_new_tokens), cfg)
        return self._result(steps, seconds, read.gen_kwargs, cfg.tree.depth)

    def _generate(self, prompt: Prompt, cfg: DecodeConfig, dialogue: Dialogue | None = None
                  ) -> tuple[list[Step], float]:
        """One answer at batch size 1 (a turn of `dialogue` when given): its steps and seconds."""
        if self.drafter and cfg.tree.auto and self.chooser is None:  # before any prefill: it may use the target
            self.chooser = tree_chooser(self.target, self.drafter, prompt, cfg.tree)
        start = time.perf_counter()
        steps = list(speculative_generate(self.target, self.drafter, prompt, cfg, self.chooser, dialogue)
                     if self.drafter else autoregressive_generate(self.target, prompt, cfg, dialogue))
        return steps, time.perf_counter() - start

    def _answer_batch(self, reads: list[_Request]) -> list[GenerationResult]:
        """Requests with the same settings, decoded `self.batch_size` at a time. Row b samples with
        seed + b (`batch_generate`), so sampled answers differ from batch size 1's; greedy ones do not."""
        cfg = replace(self._decode_config(reads[0].gen_kwargs), tree=batch_tree(self.cfg.tree))
        prompts = [self._encode(read, cfg.max_new_tokens) for read in reads]  # a refused row stops the run here
        rows = min(self.batch_size, len(prompts))
        check_batch_memory(self.target, prompts, cfg, rows, drafting=self.drafter is not None)
        steps: list[list[Step]] = [[] for _ in prompts]
        seconds = [0.0] * len(prompts)
        for batch_step in batch_generate(self.target, self.drafter, prompts, cfg, rows):
            for index, step in batch_step.rows:
                steps[index].append(step)
                # a request's time is its share of every batch step it was in (the step's time over its rows)
                seconds[index] += batch_step.seconds / len(batch_step.rows)
        return [self._result(s, t, read.gen_kwargs, cfg.tree.depth) for s, t, read in zip(steps, seconds, reads)]

    def _result(self, steps: list[Step], seconds: float, gen_kwargs: dict, depth: int) -> GenerationResult:
        """The answer's text, cut at the task's stop strings, with its metrics logged."""
        tokens = collect_tokens(steps)
        answer = self.target.decode(tokens)
        for stop in gen_kwargs.get("until") or []:
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        extra = {}
        if self.drafter and metrics.verify_steps(steps):  # averaged over requests by lmms-eval: avg_tau, ...
            # (an answer that verified no tree, decoded plainly under tree=auto, has no tau to average in)
            by_depth = metrics.acceptance_by_depth(steps, depth)
            extra = {"tau": metrics.tau(steps), **{f"acceptance_depth_{d + 1}": a for d, a in enumerate(by_depth)}}
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=len(tokens),
                    avg_speed=len(tokens) / seconds if seconds else 0.0, additional_metrics=extra)
        return GenerationResult(text=answer.strip(), token_counts=TokenCounts(output_tokens=len(tokens)))

    def loglikelihood(self, requests):
        raise UserError("mmvsd generates answers; loglikelihood tasks (multiple choice scored by likelihood) are "
                        "not supported: choose a generate_until task")

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Each request's answers, round by round (lmms-eval 0.7.3's chat protocol, as its vllm
        model runs it): round 1 asks `doc_to_messages(doc)`; round k + 1 asks
        `doc_to_messages(doc, round_idx=k, previous_output=[answers so far], previous_round_info=...)`,
        which returns (messages, terminal, previous_output, round_info), and the conversation ends
        at terminal or at anything that is not such a tuple. Unlike lmms-eval's own models, which ask
        each round afresh, mmvsd asks it within the conversation: the image and every earlier
        question and answer stay in the target's cache (`Dialogue`), so a round is a new user turn.
        Conversations go one at a time, whatever --batch_size."""
        with combined_metrics(self._world_size):
            return [[] if _padding(request) else self._conversation(request) for request in requests]

    def _conversation(self, request) -> list[str]:
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        read = self._read(request)
        cfg = self._decode_config(read.gen_kwargs)
        prompt, dialogue, answers, info = self._encode(read, cfg.max_new_tokens), Dialogue(), [], None
        while True:
            steps, seconds = self._generate(prompt, cfg, dialogue)  # the cache keeps the answer past a stop string
            answers.append(self._result(steps, seconds, read.gen_kwargs, cfg.tree.depth).text)
            payload = doc_to_messages(doc, round_idx=len(answers), previous_output=list(answers),
                                      previous_round_info=info)
            if not (isinstance(payload, tuple) and len(payload) == 4) or payload[1]:
                return answers
            messages, _, _, info = payload
            where = f"{read.where} round {len(answers) + 1}"
            images, text = _content(messages)
            if any(image != read.image for image in images):  # a task may hand the same image every round
                raise UserError(f"{where}: brings another image; mmvsd keeps the first round's one image for the "
                                "whole conversation")
            try:
                prompt = self.target.encode_turn(text, cfg.max_new_tokens)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None


def _padding(request) -> bool:
    return bool((getattr(request, "metadata", None) or {}).get("__padding_only__"))


def process_device(device: str, local_rank: int, world_size: int) -> str:
    """This process's device: `cuda` becomes `cuda:<local rank>` when processes share a machine's
    GPUs; a CPU stays the CPU."""
    return f"cuda:{local_rank}" if world_size > 1 and device == "cuda" else device


@contextmanager
def combined_metrics(world_size: int):
    """Each process logs its own requests' speed metrics; lmms-eval reports the first process's
    log alone. On leaving, every process's new entries are gathered into the first's, so the
    report's totals and averages cover every request (tokens over time: weighted by tokens)."""
    before = len(get_logged_metrics_history())
    yield
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        mine = get_logged_metrics_history()[before:]
        everyone = [None] * world_size
        dist.all_gather_object(everyone, mine)
        if dist.get_rank() == 0:  # recorded, not logged again (lmms-eval 0.7.3's recorder, pinned)
            for entry in (entry for entries in everyone[1:] for entry in entries):
                speed = {key: entry.pop(key) for key in ("total_elapsed_time", "total_gen_tokens", "avg_speed")}
                _record_metrics(**speed, additional_metrics=entry)


def parse_batch_size(value: int | str) -> int:
    """lmms-eval's --batch_size: a whole number >= 1 (mmvsd does not size batches itself: no `auto`)."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--batch_size {value}: mmvsd takes a whole number of requests decoded at once, >= 1 "
                        "(no auto); e.g. --batch_size 8")
    return int(text)


def _content(messages: list) -> tuple[list, str]:
    """The images of lmms-eval chat messages, and their text parts joined by newlines."""
    chat = ChatMessages(messages=messages)
    images, _, _ = chat.extract_media()
    return images, "\n".join(part.text for message in chat.messages for part in message.content if part.type == "text")
