"""`python -m mmvsd.train recipe=NAME [key=value ...]`: train a drafter against a target.

    python -m mmvsd.train recipe=toy_msd                 # MSD drafter for toy-m, a few minutes on a CPU
    python -m mmvsd.train recipe=toy_vispec steps=600    # any recipe key can be overridden
    python -m mmvsd.train recipe=toy_msd resume=true     # continue a killed run exactly
    python -m mmvsd.train recipe=toy_msd dry_run=true    # print the resolved config

The target's features are computed online (one no-grad pass per batch) on toy-world
conversations; the drafter learns to regress the target's next feature and to match its
next-token distribution (`mmvsd.training.losses`). The run folder gets config.yaml,
metrics.jsonl (one line per step), checkpoint.pt (atomic, every checkpoint_every steps),
drafter/ (config.json + model.safetensors) and eval.json (tau and speed-up of the trained
drafter against the target alone on held-out toy images, from the bench). Runs under
`accelerate launch` unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmvsd import cli
from mmvsd.config import BenchConfig, TrainConfig
from mmvsd.errors import UserError


def main(cfg: TrainConfig) -> None:
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm

    from mmvsd.drafters import load_drafter, save_drafter
    from mmvsd.models import load_target
    from mmvsd.training.checkpoint import atomic_torch_save, load_checkpoint
    from mmvsd.training.features import file_conversations, target_features, text_only_share, toy_conversations
    from mmvsd.training.losses import drafter_losses
    from mmvsd.training.optim import build_optimizer, lr_at, set_lr

    out = Path(cfg.output_dir or "runs/train")
    checkpoint = out / "checkpoint.pt"
    if cfg.resume and not checkpoint.is_file():
        raise UserError(f"resume=true but {checkpoint} does not exist; start the run without resume=true")
    if not cfg.resume and checkpoint.is_file():
        raise UserError(f"{out} already holds a run; pass resume=true to continue it, or another output_dir")

    loaded = None
    if cfg.data:  # read and checked before any model is loaded
        from mmvsd.data.loaders import load_records

        loaded = load_records(cfg.data, cfg.image_folder)
        print(f"data {cfg.data}: {loaded.summary()}", file=sys.stderr)
    accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum)
    target = load_target(cfg.target, cfg.dtype, str(accelerator.device))
    target.model.requires_grad_(False)
    drafter = load_drafter(cfg.drafter, target, seed=cfg.seed)
    if cfg.target_answers:  # after the drafter/target check: this is minutes of generation
        from mmvsd.data.answers import AnswersConfig
        from mmvsd.data.answers import main as write_answers
        from mmvsd.data.loaders import load_records

        answers = out / "answers"
        if accelerator.is_main_process:
            write_answers(AnswersConfig(target=cfg.target, out=str(answers), n=cfg.target_answers,
                                        max_new_tokens=cfg.eval_max_new_tokens * 2, seed=cfg.seed, dtype=cfg.dtype,
                                        device=str(accelerator.device)))
        accelerator.wait_for_everyone()
        loaded = load_records(answers / "answers.jsonl")
    optimizer = build_optimizer(drafter.parameters(), cfg.lr, cfg.weight_decay)
    start = 0
    if cfg.resume:
        state = load_checkpoint(checkpoint)
        drafter.load_state_dict(state["drafter"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    drafter.train()
    model, optimizer = accelerator.prepare(drafter, optimizer)

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cli.to_yaml(cfg))
    metrics_path = out / "metrics.jsonl"
    kept = [line for line in _lines(metrics_path) if json.loads(line)["step"] <= start]  # drop lines past the checkpoint
    metrics_path.write_text("".join(kept))
    image_size = target.processor.image_processor.crop_size["height"]

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {drafter.kind}",
               unit="step", dynamic_ncols=True, disable=not accelerator.is_main_process)
    for step in bar:
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        set_lr(optimizer, lr)
        for micro in range(cfg.grad_accum):
            with accelerator.accumulate(model):
                index = step * cfg.grad_accum + micro
                share = text_only_share(step, cfg.text_first_steps, cfg.text_ramp_steps)
                conversations = toy_conversations(target, cfg.seed, index, cfg.batch_size, cfg.describe_share,
                                                  image_size, share) if loaded is None else \
                    file_conversations(target, loaded, cfg.seed, index, cfg.batch_size, cfg.max_length)
                batch = target_features(target, conversations)
                predicted = model(batch.features, batch.tokens, batch.image_pairs, batch.image_embeds)
                loss, stats = drafter_losses(predicted, batch.next_features, batch.next_logits, batch.loss_mask,
                                             drafter.lm_head, cfg.regression_weight, cfg.token_weight)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr, **{k: round(v, 5) for k, v in stats.items()}}
        if cfg.text_first_steps or cfg.text_ramp_steps:
            record["text_only_share"] = round(share, 4)
        bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{stats['top1']:.2f}", refresh=False)
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                atomic_torch_save({"drafter": accelerator.unwrap_model(model).state_dict(),
                                   "optimizer": optimizer.state_dict(), "step": step + 1}, checkpoint)
    if not accelerator.is_main_process:
        return
    if loaded is not None and loaded.skipped:
        print(f"data {cfg.data or out / 'answers' / 'answers.jsonl'}: {loaded.summary()}", file=sys.stderr)
    folder = save_drafter(accelerator.unwrap_model(model).eval(), out / "drafter")
    print(f"drafter written to {folder}", file=sys.stderr)
    if cfg.eval_n:
        from mmvsd.bench import run_bench

        report = run_bench(BenchConfig(target=cfg.target, drafter=str(folder), n=cfg.eval_n,
                                       max_new_tokens=cfg.eval_max_new_tokens, tree=cfg.tree, dtype=cfg.dtype,
                                       device=str(accelerator.device), seed=cfg.seed))
        summary = {k: report[k] for k in ("tau", "speedup", "identical_outputs", "n_prompts", "acceptance_by_depth",
                                          "baseline_tokens_per_s", "speculative_tokens_per_s") if k in report}
        (out / "eval.json").write_text(json.dumps(summary, indent=2))
        print(f"eval: tau {summary['tau']:.2f}, speed-up {summary['speedup']:.2f}x on {summary['n_prompts']} "
              "held-out toy images", file=sys.stderr)
    print(out)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.is_file() else []


def run(argv: list[str] | None = None) -> int:
    return cli.run(TrainConfig, main, "mmvsd.train", __doc__, argv, recipes=True)


if __name__ == "__main__":
    sys.exit(run())
