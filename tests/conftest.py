"""Shared fixtures: tiny real models built in code, random images and prompts. Nothing is downloaded."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# This test session's mmvsd processes count each other's threads, not those of whatever else runs
# on the machine (another test session, a benchmark): their warnings would change what tests read.
os.environ["MMVSD_THREADS_DIR"] = tempfile.mkdtemp(prefix="mmvsd-threads-")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(2)

PROMPT_WORDS = ("describe", "the", "image", "what", "colour", "is", "shape", "how", "many", "left", "chart",
                "value", "décris", "l'image", "画像", "を", "説明", "😀", "?", "\n", "  ")


@pytest.fixture
def one_thread():
    """One torch thread for the test: with fixed seeds, invariance and distribution tests then
    compute the same numbers on every run and every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_target():
    from mmvsd.models import load_target

    return load_target("tiny-random")


def random_image(rng: random.Random) -> Image.Image:
    """Noise, a flat colour or blocks, at a random size and aspect ratio."""
    width, height = rng.randint(1, 300), rng.randint(1, 300)
    kind = rng.choice(["noise", "flat", "blocks"])
    if kind == "flat":
        return Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    if kind == "noise":
        return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    image = Image.new("RGB", (width, height))
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(width, x + 40), min(height, y + 40)))
    return image


def random_prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(1, 12))).strip() or "describe"


@pytest.fixture
def rng():
    return random.Random(1234)


def toy_home(tmp_path_factory, sizes: dict[str, int]):
    """A $MMVSD_HOME whose toy-world datasets are this small, so that builds take seconds."""
    from mmvsd.toyworld.data import build_datasets
    from mmvsd.toyworld.targets.build import data_dir

    home = tmp_path_factory.mktemp("mmvsd-home")
    folder = data_dir(home)
    build_datasets(folder, seed=0, image_size=128, sizes=sizes)
    (folder / "done").write_text("ok\n")
    return home


def eval_script(name: str):
    """eval/NAME.py imported as a module (the eval scripts are not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
