"""Training metrics through accelerate's tracker API: `metrics.jsonl` always (one JSON line per
step, read by the plot and by tests), TensorBoard or Weights & Biases as well when asked for and
installed (`log_with=tensorboard,wandb`); and the training-curve plot written at the end."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.tracking import GeneralTracker

from mmvsd.errors import UserError

OPTIONAL = {"tensorboard": "tensorboard", "wandb": "wandb"}  # log_with name -> the package it needs


class JsonLinesTracker(GeneralTracker):
    """Appends {"step": n, ...values} to a file, one line per step."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    @property
    def tracker(self) -> Path:
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def trackers(log_with: str, metrics_path: Path) -> list:
    """The trackers for `log_with` (comma-separated names; jsonl is always on), checked now."""
    import importlib.util

    names = [n.strip() for n in log_with.split(",") if n.strip() and n.strip() != "jsonl"]
    for name in names:
        if name not in OPTIONAL:
            raise UserError(f"log_with: unknown tracker {name!r}; known: jsonl, {', '.join(OPTIONAL)}")
        if importlib.util.find_spec(OPTIONAL[name]) is None:
            raise UserError(f"log_with={name} needs the {OPTIONAL[name]} package: pip install {OPTIONAL[name]}")
    return [JsonLinesTracker(metrics_path), *names]


def keep_until(metrics_path: Path, step: int) -> None:
    """Drop the lines past `step` (a resumed run redoes them), so the file reads as one run's."""
    lines = metrics_path.read_text().splitlines(keepends=True) if metrics_path.is_file() else []
    metrics_path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))


def plot_curve(metrics_path: Path, out: Path) -> Path:
    """Loss, top-1 agreement with the target, VSD's accepted length (when logged) and lr over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    panels = [(k, label) for k, label in (("loss", "loss"), ("top1", "top-1 agreement with the target"),
                                          ("accepted_len", "VSD: accepted draft tokens"), ("lr", "learning rate"))
              if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (key, label) in zip(axes, panels):
        ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
