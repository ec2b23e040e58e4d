"""`python -m mmvsd.train recipe=NAME [key=value ...]`: train a drafter against a target.

    python -m mmvsd.train recipe=toy_msd                 # MSD drafter for toy-m, a few minutes on a CPU
    python -m mmvsd.train recipe=toy_vispec steps=600    # any recipe key can be overridden
    python -m mmvsd.train recipe=toy_msd resume=true     # continue a killed run exactly
    python -m mmvsd.train recipe=toy_msd dry_run=true    # print the resolved config

The target's features are computed online (one no-grad pass per batch; `feature_cache=DIR`
keeps them for later runs) on toy-world conversations or a data file; the drafter learns to
regress the target's next feature and to match its next-token distribution
(`mmvsd.training.losses`), and with `vsd.enabled=true` also VSD's objective over its own
sampled draft paths (`mmvsd.training.vsd`). The run folder gets config.yaml,
metrics.jsonl (one line per step), checkpoint.pt (atomic, every checkpoint_every steps),
drafter/ (config.json + model.safetensors) and eval.json (tau and speed-up of the trained
drafter against the target alone on held-out toy images, from the bench). Runs under
`accelerate launch` unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmvsd import cli
from mmvsd.config import BenchConfig, TrainConfig
from mmvsd.errors import UserError


@dataclass
class Run:
    """A training run once set up: what every step reads and updates (torchtune's recipe shape:
    `setup`, then `train_step` per step and `save_checkpoint`, then `finish` and `evaluate`)."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    target: Any
    drafter: Any  # the bare drafter; `model` is the same one as accelerate wrapped it
    model: Any
    optimizer: Any
    schedule: Any
    fingerprint: dict
    start: int  # the first step this process runs (after a resume: the checkpoint's)
    loaded: Any = None  # records of `data` (or of the target's answers)
    text_loaded: Any = None
    cache: Any = None
    tokens: int = 0  # conversation tokens trained on by all processes, for the throughput line
    began: float = field(default_factory=time.perf_counter)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"


def main(cfg: TrainConfig) -> None:
    from tqdm import tqdm

    run = setup(cfg)
    bar = tqdm(range(run.start, cfg.steps), initial=run.start, total=cfg.steps, desc=f"train {run.drafter.kind}",
               unit="step", dynamic_ncols=True, disable=not run.accelerator.is_main_process)
    for step in bar:
        record = train_step(run, step)
        shown = {"loss": f"{record['loss']:.3f}", "top1": f"{record['top1']:.2f}"}
        if cfg.vsd.enabled:
            shown.update(acc_len=f"{record['accepted_len']:.2f}", ess=f"{record['ess']:.2f}")
        bar.set_postfix(shown, refresh=False)
        run.accelerator.log(record, step=step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(run, step + 1)
    folder = finish(run)
    if folder is not None and cfg.eval_n:
        evaluate(run, folder)
    if folder is not None:
        print(run.out)


def setup(cfg: TrainConfig) -> Run:
    """Check everything that can be checked before a model loads, then load the data, start
    accelerate, load the target and the drafter (resumed from a checkpoint when asked)."""
    from mmvsd.checks import check_device, check_output_dir
    from mmvsd.data.loaders import load_records
    from mmvsd.drafters import build_drafter, drafter_kind, load_drafter
    from mmvsd.models import load_target
    from mmvsd.training.cache import FeatureCache
    from mmvsd.training.fingerprint import flatten, run_fingerprint
    from mmvsd.training.optim import build_optimizer, build_schedule
    from mmvsd.training.tracking import keep_until

    check_device(cfg.device)
    out = check_output_dir(cfg.output_dir or "runs/train", "output_dir")
    checkpoint = out / "checkpoint.pt"
    if cfg.resume and not checkpoint.is_file():
        raise UserError(f"resume=true but {checkpoint} does not exist; start the run without resume=true")
    if not cfg.resume and checkpoint.is_file():
        raise UserError(f"{out} already holds a run; pass resume=true to continue it, or another output_dir")
    kind = drafter_kind(cfg.drafter)  # like the data files below: checked before any model is loaded
    if cfg.draft_vocab and kind != cfg.drafter:
        raise UserError(f"draft_vocab sets up a new drafter: give a kind (drafter={kind}), not the trained drafter "
                        f"{cfg.drafter}, which keeps its own draft vocabulary")
    loaded = load_records(cfg.data, cfg.image_folder) if cfg.data else None
    text_loaded = load_records(cfg.text_data) if cfg.text_data else None
    for key, source in (("data", loaded), ("text_data", text_loaded)):
        if source is not None:
            print(f"{key} {getattr(cfg, key)}: {source.summary()}", file=sys.stderr)
    accelerator = start_accelerator(cfg, out, find_unused_parameters=kind == "vispec")
    processes = accelerator.num_processes
    for source in (loaded, text_loaded):
        if source is not None and len(source.records) < cfg.batch_size * processes:
            raise UserError(f"the data has {len(source.records)} usable records, fewer than one global batch "
                            f"({batch_arithmetic(cfg, processes)}); lower batch_size or launch fewer processes")
    target = load_target(cfg.target, cfg.dtype, str(accelerator.device), layers=cfg.target_layers,
                         vision_layers=cfg.vision_layers)
    target.model.requires_grad_(False)
    cache = FeatureCache(cfg.feature_cache, target, cfg, accelerator.process_index, processes) if cfg.feature_cache \
        else None
    drafter = None if cfg.draft_vocab else load_drafter(cfg.drafter, target, seed=cfg.seed)  # else: built below
    if cfg.target_answers:  # after the drafter/target check: this is minutes of generation
        loaded = load_records(write_target_answers(cfg, accelerator, out / "answers"))
    if cfg.draft_vocab:  # from the data, now that it is all there
        drafter = build_drafter(kind, target, cfg.seed, draft_vocabulary(cfg, target, loaded, text_loaded))
    optimizer = build_optimizer(drafter.parameters(), cfg.lr, cfg.weight_decay)
    fingerprint = run_fingerprint(cfg, target, drafter, processes)
    start = resume(checkpoint, fingerprint, drafter, optimizer) if cfg.resume else 0
    drafter.train()
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.steps, start)  # on the bare optimizer: stepped once a step
    model, optimizer = accelerator.prepare(drafter, optimizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cli.to_yaml(cfg))
        keep_until(out / "metrics.jsonl", start)
        print(batch_arithmetic(cfg, processes), file=sys.stderr)
    accelerator.init_trackers("mmvsd", config={k: str(v) if v is None else v for k, v in flatten(asdict(cfg)).items()})
    return Run(cfg, out, accelerator, target, drafter, model, optimizer, schedule, fingerprint, start, loaded,
               text_loaded, cache)


def draft_vocabulary(cfg: TrainConfig, target, loaded, text_loaded, conversations: int = 1024) -> list[int]:
    """The `cfg.draft_vocab` most frequent answer tokens of the run's first `conversations`, EOS
    included (EAGLE-3's reduced vocabulary; see mmvsd.drafters.vocab)."""
    from mmvsd.drafters.vocab import frequent_tokens
    from mmvsd.training.features import training_batch

    count = min(-(-conversations // cfg.batch_size), cfg.steps * cfg.grad_accum)
    labels = (training_batch(target, cfg, i, i // cfg.grad_accum, loaded, text_loaded)["labels"] for i in range(count))
    return frequent_tokens(labels, cfg.draft_vocab, target.vocab_size, target.eos_token_ids)


def start_accelerator(cfg: TrainConfig, out: Path, find_unused_parameters: bool):
    """accelerate's Accelerator for this launch (ViSpec's adaptor gets no gradient from a text-only
    batch: DDP must then not wait for it), or one line saying why it cannot start."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from mmvsd.training.tracking import trackers

    try:
        return Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision,
                           gradient_accumulation_steps=cfg.grad_accum, project_dir=out,
                           log_with=trackers(cfg.log_with, out / "metrics.jsonl"),
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
    except (RuntimeError, ImportError) as e:  # e.g. FSDP launched on a machine without GPUs
        raise UserError(f"accelerate could not start this launch ({' '.join(str(e).split())}); FSDP and DeepSpeed "
                        "need GPUs: on CPUs launch data-parallel with torchrun --nproc_per_node N -m mmvsd.train") from None


def resume(checkpoint: Path, fingerprint: dict, drafter, optimizer) -> int:
    """Load a killed run's drafter and optimizer, refusing a changed run; return its step."""
    from mmvsd.training.checkpoint import load_checkpoint
    from mmvsd.training.fingerprint import check_resume

    state = load_checkpoint(checkpoint)
    check_resume(state.get("fingerprint"), fingerprint, checkpoint.parent)
    drafter.load_state_dict(state["drafter"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


def write_target_answers(cfg: TrainConfig, accelerator, folder: Path) -> Path:
    """ViSpec-style data: the main process has the target describe fresh images (resumable)."""
    from mmvsd.data.answers import AnswersConfig
    from mmvsd.data.answers import main as write_answers

    if accelerator.is_main_process:
        write_answers(AnswersConfig(target=cfg.target, target_layers=cfg.target_layers,
                                    vision_layers=cfg.vision_layers, out=str(folder), n=cfg.target_answers,
                                    max_new_tokens=cfg.eval_max_new_tokens * 2, seed=cfg.seed, dtype=cfg.dtype,
                                    device=str(accelerator.device)))
    accelerator.wait_for_everyone()
    return folder / "answers.jsonl"


def train_step(run: Run, step: int) -> dict:
    """One optimizer step over `grad_accum` micro-batches, this process's share of each; returns
    the step's metrics, averaged over processes."""
    import torch

    from mmvsd.training.features import target_features, text_only_share, training_batch
    from mmvsd.training.vsd import vsd_step

    cfg, accelerator, target = run.cfg, run.accelerator, run.target
    rank, processes = accelerator.process_index, accelerator.num_processes
    lr = run.schedule.get_last_lr()[0]
    for micro in range(cfg.grad_accum):
        with accelerator.accumulate(run.model):
            index = step * cfg.grad_accum + micro

            def features(index=index):  # this process's share of the micro-batch only
                return target_features(target, training_batch(target, cfg, index, step, run.loaded, run.text_loaded,
                                                              rank, processes))

            batch = run.cache.get(index, features) if run.cache else features()
            run.tokens += int(batch.attention_mask.sum()) * processes  # the processes' shares are the same size
            # Divide by the mean count over processes: averaged gradients then equal one big batch's.
            positions = accelerator.reduce(batch.loss_mask.sum().float(), "mean") if processes > 1 else None
            predicted, vsd_loss, vsd_stats = None, 0.0, {}
            if cfg.vsd.enabled:  # each process samples its own sequences' paths
                generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + index) * 1009 + rank)
                predicted, vsd_loss, vsd_stats = vsd_step(run.model, target, batch, cfg.vsd, generator)
            loss, stats = self_fed_losses(run.model, batch, run.drafter.lm_head, cfg, predicted, positions)
            loss, stats = loss + vsd_loss, {**stats, **vsd_stats}
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(run.model.parameters(), 1.0)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    run.schedule.step()
    stats = {"loss": loss.item(), **stats}
    if processes > 1:  # what is logged is the mean over processes
        stats = dict(zip(stats, accelerator.reduce(torch.tensor(list(stats.values())), "mean").tolist()))
    record = {"lr": lr, **{k: round(v, 5) for k, v in stats.items()}}
    if cfg.text_first_steps or cfg.text_ramp_steps:
        record["text_only_share"] = round(text_only_share(step, cfg.text_first_steps, cfg.text_ramp_steps), 4)
    return record


def save_checkpoint(run: Run, steps_done: int) -> None:
    """The main process writes drafter, optimizer, step and fingerprint, atomically."""
    from mmvsd.training.checkpoint import atomic_torch_save

    if run.accelerator.is_main_process:
        atomic_torch_save({"drafter": run.accelerator.unwrap_model(run.model).state_dict(),
                           "optimizer": run.optimizer.state_dict(), "step": steps_done,
                           "fingerprint": run.fingerprint}, run.checkpoint)


def finish(run: Run) -> Path | None:
    """The processes part here, together (end_training also ends the process group); the main one
    then reports throughput, plots the curve and writes the drafter, whose folder it returns."""
    import torch

    from mmvsd.drafters import save_drafter
    from mmvsd.training.tracking import plot_curve

    cfg, accelerator = run.cfg, run.accelerator
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not accelerator.is_main_process:
        return None
    seconds, steps = time.perf_counter() - run.began, max(1, cfg.steps - run.start)
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GB" if torch.cuda.is_available() else ""
    print(f"trained {cfg.steps - run.start} steps in {seconds:.0f} s: {seconds / steps:.2f} s/step, "
          f"{run.tokens / seconds:.0f} tokens/s over all processes{peak}", file=sys.stderr)
    plot_curve(run.out / "metrics.jsonl", run.out / "training_curve.png")
    if run.loaded is not None and run.loaded.skipped:
        print(f"data {cfg.data or run.out / 'answers' / 'answers.jsonl'}: {run.loaded.summary()}", file=sys.stderr)
    folder = save_drafter(accelerator.unwrap_model(run.model).eval(), run.out / "drafter")
    print(f"drafter written to {folder}", file=sys.stderr)
    return folder


def evaluate(run: Run, folder: Path) -> dict:
    """eval.json: tau and speed-up of the trained drafter against the target alone, from the bench."""
    from mmvsd.bench import run_bench

    cfg = run.cfg
    report = run_bench(BenchConfig(target=cfg.target, target_layers=cfg.target_layers, vision_layers=cfg.vision_layers,
                                   drafter=str(folder), n=cfg.eval_n, max_new_tokens=cfg.eval_max_new_tokens,
                                   tree=cfg.tree, dtype=cfg.dtype, device=str(run.accelerator.device), seed=cfg.seed))
    summary = {k: report[k] for k in ("tau", "speedup", "identical_outputs", "n_prompts", "acceptance_by_depth",
                                      "baseline_tokens_per_s", "speculative_tokens_per_s") if k in report}
    (run.out / "eval.json").write_text(json.dumps(summary, indent=2))
    print(f"eval: tau {summary['tau']:.2f}, speed-up {summary['speedup']:.2f}x on {summary['n_prompts']} "
          "held-out toy images", file=sys.stderr)
    return summary


def batch_arithmetic(cfg: TrainConfig, processes: int) -> str:
    """How many conversations one optimizer step sees, and how they are split."""
    return (f"batch: {cfg.batch_size} per process x {processes} process{'es' if processes > 1 else ''} x "
            f"{cfg.grad_accum} accumulated = {cfg.batch_size * processes * cfg.grad_accum} conversations per step")


def self_fed_losses(model, batch, lm_head, cfg: TrainConfig, predicted=None, positions=None):
    """The baseline losses of the teacher-forced pass, plus those of `cfg.self_feed_passes` more
    passes in which the drafter reads its own predicted features (shifted by one) instead of the
    target's, with the same targets: ViSpec's "MTP" pass (Kang et al. 2025, arXiv 2509.15235),
    which stops the drafter leaning on target features it will not have beyond depth 1.
    `predicted`: the first pass's output when it was already computed; `positions`: see
    `drafter_losses`."""
    import torch

    from mmvsd.training.losses import drafter_losses

    features, total = batch.features, 0.0
    for n in range(1 + cfg.self_feed_passes):
        if n or predicted is None:  # the first pass may have been run already (with VSD's rollouts)
            predicted = model(features, batch.tokens, batch.image_pairs, batch.image_embeds)  # [B, n, H]
        loss, stats = drafter_losses(predicted, batch.next_features, batch.next_logits, batch.loss_mask, lm_head,
                                     cfg.regression_weight, cfg.token_weight, positions)
        total = total + loss
        if n == 0:
            first = stats
        features = torch.cat([features[:, :1], predicted[:, :-1]], dim=1)  # pair j reads the prediction of h_j
    if cfg.self_feed_passes:
        first["top1_self_fed"] = stats["top1"]
    return total, first


def train_once(args: list[str], out: Path) -> Path:
    """Run `python -m mmvsd.train ARGS output_dir=OUT` in a process of its own, once: a finished
    run (drafter/ is written at its end) is reused, a killed one resumed. Returns OUT/drafter."""
    import subprocess

    if (out / "drafter" / "model.safetensors").is_file():
        return out / "drafter"
    resume = ["resume=true"] if (out / "checkpoint.pt").is_file() else []
    command = [sys.executable, "-m", "mmvsd.train", *args, f"output_dir={out}", "eval_n=0", *resume]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"training failed; run {' '.join(command[1:])} to see why")
    return out / "drafter"


def explain(cfg: TrainConfig) -> str:
    """What dry_run=true adds to the config: the batch arithmetic of this launch (or of the one
    `launch_config` describes), its memory, and what this machine lacks to start that launch."""
    from mmvsd.training.memory import estimate, read_launch_config

    launch, notes = read_launch_config(cfg.launch_config) if cfg.launch_config else (None, [])
    processes = launch["num_processes"] if launch else int(os.environ.get("WORLD_SIZE", "1"))  # torchrun, accelerate
    lines = [batch_arithmetic(cfg, processes), estimate(cfg, processes, launch)]
    return "\n".join(lines + [f"launch_config {cfg.launch_config}: {note}" for note in notes])


def run(argv: list[str] | None = None) -> int:
    return cli.run(TrainConfig, main, "mmvsd train", __doc__, argv, recipes=True, explain=explain)


if __name__ == "__main__":
    sys.exit(run())
