"""`python -m mmvsd.data.answers`: answers written by the target itself, for drafter training.

    python -m mmvsd.data.answers target=toy-m n=400 out=data/toy-m-answers
    python -m mmvsd.data.answers target=llava-hf/llava-1.5-7b-hf images=DIR out=data/answers \\
        prompt="Describe the image. Please answer with at least 1000 words." max_new_tokens=1024

ViSpec's second stage trains on long answers the target writes for images (Kang et al. 2025,
arXiv 2509.15235): the drafter then learns the target's own phrasing, which is what it must
predict at decoding time. Writes OUT/answers.jsonl ({"image", "prompt", "answer"} per line, the
format `mmvsd.train data=...` reads) and, for toy-world images, the images as PNG in OUT/images.
An interrupted run resumes: lines already written are kept and their images skipped.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from mmvsd import cli
from mmvsd.config import TargetSettings, opt
from mmvsd.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class AnswersConfig(TargetSettings):
    out: str = opt("data/answers", "output folder: answers.jsonl (+ images/ for toy-world images)")
    images: str | None = opt(None, "a folder of images to answer about; default: fresh toy-world images")
    n: int = opt(200, "answer at most this many images")
    prompt: str = opt("Describe the image in detail.", "the request sent with every image")
    max_new_tokens: int = opt(256, "longest answer")
    seed: int = opt(0, "seed of the toy-world image stream")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1 or self.max_new_tokens < 1:
            raise UserError("n and max_new_tokens must be >= 1")


def main(cfg: AnswersConfig) -> None:
    from tqdm import tqdm

    from mmvsd.config import DecodeConfig
    from mmvsd.decoding import autoregressive_generate, collect_tokens
    from mmvsd.images import load_image
    from mmvsd.checks import check_device, check_output_dir
    from mmvsd.models import load_target

    check_device(cfg.device)
    out = check_output_dir(cfg.out, "out")
    if cfg.images:
        folder = Path(cfg.images).expanduser()
        if not folder.is_dir():
            raise UserError(f"images {folder}: {'is a file, not a folder' if folder.exists() else 'no such folder'}")
        sources = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: cfg.n]
        if not sources:
            raise UserError(f"images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    target = load_target(cfg.target, cfg.dtype, cfg.device, layers=cfg.target_layers, vision_layers=cfg.vision_layers)
    out.mkdir(parents=True, exist_ok=True)
    answers = out / "answers.jsonl"
    done = {json.loads(line)["image"] for line in answers.read_text().splitlines() if line.strip()} \
        if answers.is_file() else set()
    rng = random.Random(f"answers-{cfg.seed}")
    skipped = 0
    with answers.open("a") as f:
        for i in tqdm(range(cfg.n if not cfg.images else len(sources)), desc="answering", unit="image"):
            if cfg.images:
                name = str(sources[i].resolve())
                if name in done:
                    continue
                try:
                    image = load_image(sources[i])
                except UserError as e:
                    tqdm.write(f"skipped: {e}", file=sys.stderr)
                    skipped += 1
                    continue
            else:
                from mmvsd.plugins import default_inputs

                image, name = default_inputs().image(rng, 336), f"images/{i:06d}.png"
                if name in done:
                    continue
                (out / "images").mkdir(exist_ok=True)
                image.save(out / name)
            prompt = target.encode(image, cfg.prompt, cfg.max_new_tokens)
            tokens = collect_tokens(autoregressive_generate(target, prompt, DecodeConfig(cfg.max_new_tokens)))
            f.write(json.dumps({"image": name, "prompt": cfg.prompt, "answer": target.decode(tokens).strip()}) + "\n")
            f.flush()
    print(f"{answers} ({skipped} images skipped)" if skipped else answers)


def run(argv: list[str] | None = None) -> int:
    return cli.run(AnswersConfig, main, "mmvsd answers", __doc__, argv)


if __name__ == "__main__":
    sys.exit(run())
