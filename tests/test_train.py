"""Drafter training: every recipe parses, a tiny run writes its folder, a killed run resumes
exactly, the losses match a naive reference, and bad input is refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmvsd import cli
from mmvsd.config import TrainConfig
from mmvsd.drafters import DRAFTERS
from mmvsd.train import run

RECIPES = sorted(p.stem for p in cli.RECIPES_DIR.glob("*.yaml"))
TINY = ["target=tiny-random", "describe_share=0", "batch_size=2", "eval_n=1", "eval_max_new_tokens=8",
        "checkpoint_every=2"]


def test_there_are_recipes():
    assert {"toy_eagle", "toy_msd", "toy_vispec", "llava7b_msd", "llava7b_vispec", "llava13b_msd",
            "llava13b_vispec", "toy_msd_vsd", "toy_vispec_vsd", "llava7b_msd_vsd", "llava7b_vispec_vsd",
            "llava13b_msd_vsd", "llava13b_vispec_vsd"} <= set(RECIPES)
    for name in ("fsdp", "deepspeed"):  # accelerate launch configs, named in the real recipes' headers
        assert (cli.RECIPES_DIR / "accelerate" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("launch, mode", [("deepspeed", "DeepSpeed ZeRO-2, 8 processes"), ("fsdp", "FSDP, 8 processes")])
def test_dry_run_checks_a_shipped_launch_config_and_estimates_for_it(launch, mode, capsys):
    assert run(["recipe=llava7b_msd", "target=random:llava-1.5-7b", f"launch_config={launch}", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "# batch: 2 per process x 8 processes x 2 accumulated = 32 conversations per step" in out
    assert f"memory per process (estimate, {mode}):" in out and "gradients and AdamW state (sharded)" in out


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_parses_and_dry_runs(recipe, capsys):
    cfg = cli.parse(TrainConfig, [f"recipe={recipe}"], cli.RECIPES_DIR)
    assert cfg.output_dir and cfg.steps >= 1
    header = (cli.RECIPES_DIR / f"{recipe}.yaml").read_text().splitlines()[:4]
    assert any(f"python -m mmvsd.train recipe={recipe}" in line for line in header)  # says how to reproduce it
    assert run([f"recipe={recipe}", "dry_run=true"]) == 0
    assert f"output_dir: {cfg.output_dir}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_a_tiny_run_writes_drafter_metrics_and_eval(tmp_path, kind):
    out = tmp_path / "run"
    assert run([*TINY, f"drafter={kind}", "steps=3", f"output_dir={out}"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoint.pt", "drafter", "eval.json",
                                               "training_curve.png"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all(x["loss"] == x["loss"] for x in lines)  # not NaN
    assert json.loads((out / "drafter" / "config.json").read_text())["kind"] == kind
    report = json.loads((out / "eval.json").read_text())
    assert report["identical_outputs"] is True and report["tau"] >= 1
    umask = os.umask(0)
    os.umask(umask)
    for path in [out, *out.rglob("*")]:  # written with the user's umask, as any other tool's files
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path):
    import signal
    import time

    args = [*TINY, "drafter=msd", "steps=6", "eval_n=0"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run([*args, f"output_dir={straight}"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "mmvsd.train", *args, f"output_dir={broken}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = broken / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # after step 3: the last checkpoint is step 2's
    assert process.wait() == -signal.SIGKILL
    assert torch.load(broken / "checkpoint.pt", weights_only=False)["step"] in (2, 4)
    assert run([*args, f"output_dir={broken}", "resume=true"]) == 0
    a, b = load_file(str(straight / "drafter/model.safetensors")), load_file(str(broken / "drafter/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "metrics.jsonl").read_text() == metrics.read_text()  # lines past the checkpoint redone once


def test_the_schedule_warms_up_decays_to_a_floor_and_resumes_mid_way():
    from mmvsd.training.optim import build_optimizer, build_schedule

    def lrs(start: int, total: int = 20) -> list[float]:
        optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)
        schedule = build_schedule(optimizer, warmup=4, total=total, start=start)
        seen = []
        for _ in range(start, total):
            seen.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        return seen

    straight = lrs(0)
    assert straight[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(straight[4:], straight[5:])) and straight[-1] == pytest.approx(0.1, abs=0.01)
    assert lrs(7) == pytest.approx(straight[7:])  # a resumed run continues the same schedule


def test_losses_match_a_naive_reference():
    from mmvsd.training.losses import drafter_losses

    torch.manual_seed(0)
    b, n, h, v = 2, 5, 8, 11
    predicted, nxt, logits = torch.randn(b, n, h), torch.randn(b, n, h), torch.randn(b, n, v)
    mask = torch.rand(b, n) > 0.4
    head = torch.nn.Linear(h, v, bias=False)
    loss, stats = drafter_losses(predicted, nxt, logits, mask, head, 1.0, 0.1)
    reg = ce = 0.0
    m = 0
    for i in range(b):
        for j in range(n):
            if not mask[i, j]:
                continue
            diff = (predicted[i, j] - nxt[i, j]).abs()
            reg += torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).mean()
            p, logq = torch.softmax(logits[i, j], -1), torch.log_softmax(head(predicted[i, j]), -1)
            ce += -(p * logq).sum()
            m += 1
    assert torch.allclose(loss, reg / m + 0.1 * ce / m, atol=1e-5)
    assert stats["regression"] == pytest.approx((reg / m).item(), abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["recipe=toy_nope"], "recipe 'toy_nope' not found"),
    (["recipe=toy_msd", "stepz=3"], "unknown key 'stepz'"),
    (["recipe=toy_msd", "steps=many"], "steps"),
    (["drafter=medusa", "target=tiny-random", "output_dir=OUT"], "not a folder, a drafter kind"),
    (["resume=true", "target=tiny-random", "output_dir=OUT"], "resume=true but"),
    (["recipe=llava7b_msd", "device=cpu"], "data file data/llava_v1_5_mix665k.json: no such file"),  # before any model loads
    (["recipe=toy_msd_vsd", "drafter=runs/nope/drafter", "target=tiny-random"], "train it first"),
    (["recipe=toy_msd", "vsd.num_proposals=0"], "vsd.num_proposals must be >= 1"),
    (["target=tiny-random", "log_with=jsonl,mlflw", "output_dir=OUT"], "unknown tracker 'mlflw'"),
])
def test_bad_input_is_refused_in_one_line(args, message, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "r")) for a in args]
    result = subprocess.run([sys.executable, "-m", "mmvsd.train", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_resume_refuses_a_changed_run_and_accepts_a_longer_one(tmp_path, capsys):
    out = tmp_path / "r"
    args = [*TINY, "drafter=eagle", "steps=2", "eval_n=0", f"output_dir={out}"]
    assert run(args) == 0
    before = (out / "checkpoint.pt").read_bytes()
    for change, named in ((["lr=0.01"], "lr: 0.001 -> 0.01"), (["drafter=msd"], "drafter.kind: eagle -> msd"),
                          (["batch_size=4"], "micro-batch across processes: 2 -> 4"),
                          (["vsd.enabled=true"], "vsd.enabled: False -> True")):
        capsys.readouterr()
        assert run([*args, "resume=true", *change]) == 2
        error = capsys.readouterr().err
        assert "holds another run" in error and named in error and len(error.strip().splitlines()) == 1
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing was touched
    assert run([*args, "resume=true", "steps=3", "eval_n=1", "eval_max_new_tokens=4", "checkpoint_every=1"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3


def test_a_drafter_for_another_target_is_refused_before_training(tmp_path):
    from mmvsd.drafters import build_drafter, save_drafter
    from mmvsd.models import load_target
    from mmvsd.models.llava import LlavaTarget
    from mmvsd.models.tiny import build_tiny_random

    other = LlavaTarget(*build_tiny_random(hidden_size=96), "other")
    folder = save_drafter(build_drafter("msd", other), tmp_path / "d")
    load_target("tiny-random")
    result = subprocess.run([sys.executable, "-m", "mmvsd.train", "target=tiny-random", f"drafter={folder}",
                             f"output_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "trained for another target" in result.stderr
    assert not Path(tmp_path / "r").exists()


def test_msd_curriculum_goes_from_text_only_to_multimodal(tmp_path):
    from mmvsd.training.features import text_only_share

    shares = [text_only_share(step, 3, 4) for step in range(9)]
    assert shares[:3] == [1.0, 1.0, 1.0] and shares[-2:] == [0.0, 0.0]
    assert all(a >= b for a, b in zip(shares, shares[1:])) and 0 < shares[4] < 1
    out = tmp_path / "run"
    assert run([*TINY, "drafter=msd", "steps=4", "text_first_steps=2", "text_ramp_steps=2", "eval_n=0",
                f"output_dir={out}"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["text_only_share"] for x in lines] == [1.0, 1.0, 0.5, 0.0]


def test_training_on_answers_the_target_writes_first(tmp_path):
    out = tmp_path / "run"
    assert run([*TINY, "drafter=vispec", "steps=2", "target_answers=3", "eval_n=0", f"output_dir={out}"]) == 0
    lines = (out / "answers" / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 3 and (out / "drafter" / "model.safetensors").is_file()


def test_self_fed_pass_reads_the_drafters_own_shifted_predictions():
    from types import SimpleNamespace

    from mmvsd.drafters import build_drafter
    from mmvsd.models import load_target
    from mmvsd.train import self_fed_losses
    from mmvsd.training.features import DraftBatch
    from mmvsd.training.losses import drafter_losses

    target = load_target("tiny-random")
    drafter = build_drafter("eagle", target, seed=0)
    torch.manual_seed(0)
    b, n, h = 2, 7, target.hidden_size
    batch = DraftBatch(features=torch.randn(b, n, h), tokens=torch.randint(0, 100, (b, n)),
                       image_pairs=torch.zeros(b, n, dtype=torch.bool), image_embeds=torch.zeros(b, 0, h),
                       next_features=torch.randn(b, n, h), next_logits=torch.randn(b, n, target.vocab_size),
                       loss_mask=torch.rand(b, n) > 0.3, input_ids=torch.zeros(b, n + 1, dtype=torch.long),
                       attention_mask=torch.ones(b, n + 1, dtype=torch.long))
    cfg = SimpleNamespace(self_feed_passes=1, regression_weight=1.0, token_weight=0.1)
    loss, stats = self_fed_losses(drafter, batch, drafter.lm_head, cfg)
    args = (batch.next_features, batch.next_logits, batch.loss_mask, drafter.lm_head, 1.0, 0.1)
    first = drafter(batch.features, batch.tokens, batch.image_pairs, batch.image_embeds)
    shifted = torch.stack([batch.features[:, 0], *first[:, :-1].unbind(1)], dim=1)  # pair j reads ŷ(h_j)
    second = drafter(shifted, batch.tokens, batch.image_pairs, batch.image_embeds)
    expected = drafter_losses(first, *args)[0] + drafter_losses(second, *args)[0]
    assert torch.allclose(loss, expected, atol=1e-5) and "top1_self_fed" in stats
    assert not torch.allclose(first, second)  # the second pass really saw other inputs


def test_a_feature_cache_is_written_once_read_after_and_guarded(tmp_path):
    args = [*TINY, "drafter=msd", "steps=3", "eval_n=0", "self_feed_passes=1", f"feature_cache={tmp_path / 'f'}"]
    assert run([*args, f"output_dir={tmp_path / 'a'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "f").glob("*.safetensors")) == [f"{i:08d}.safetensors" for i in range(3)]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("*.safetensors")}
    assert run([*args, f"output_dir={tmp_path / 'b'}"]) == 0  # reads the cache: same data, same drafter
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("*.safetensors")}
    a, b = (load_file(str(tmp_path / r / "drafter/model.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = subprocess.run([sys.executable, "-m", "mmvsd.train", *args, "batch_size=3", f"output_dir={tmp_path / 'c'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "written with other settings (batch_size)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_once_trains_in_its_own_process_then_reuses_the_drafter(tmp_path):
    """What the demo does for a target without a shipped drafter."""
    from mmvsd.train import train_once

    args = ["recipe=toy_msd", *TINY[:3], "steps=2", "text_first_steps=0", "text_ramp_steps=0"]
    folder = train_once(args, tmp_path / "run")
    assert (folder / "model.safetensors").is_file() and not (tmp_path / "run" / "eval.json").exists()
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert train_once(args, tmp_path / "run") == folder and (folder / "model.safetensors").stat().st_mtime_ns == written


def test_the_feature_cache_key_is_derived_from_tagged_settings():
    """A setting that changes the data is tagged where it is declared (opt(..., data=True)); the
    feature cache's key follows, so a new data knob cannot silently reuse stale features."""
    from mmvsd.training.cache import DATA_KEYS

    assert set(DATA_KEYS) == {"data", "text_data", "image_folder", "max_length", "target_answers", "batch_size",
                              "grad_accum", "describe_share", "text_first_steps", "text_ramp_steps", "seed"}
    assert not {"lr", "steps", "tree", "vsd", "device", "threads"} & set(DATA_KEYS)
