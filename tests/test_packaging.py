"""A wheel carries what the commands need: recipes, accelerate configs, lmms-eval task files,
shipped weights; an installed copy finds its recipes and task files from any directory."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                             "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return next(out.glob("mmvsd-*.whl"))


def test_the_wheel_holds_recipes_configs_and_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # pyproject.toml names its packages (for recipes/'s mapping): every module of the tree must be in
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mmvsd").rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert {f"mmvsd/recipes/{p.relative_to(ROOT / 'recipes').as_posix()}" for p in (ROOT / "recipes").rglob("*.yaml")} <= names
    recipes = {Path(n).stem for n in names if n.startswith("mmvsd/recipes/") and n.count("/") == 2}
    assert {"toy_msd", "toy_eagle", "toy_vispec", "llava7b_msd", "llava13b_vispec_vsd"} <= recipes
    assert {"mmvsd/recipes/accelerate/fsdp.yaml", "mmvsd/recipes/accelerate/deepspeed.yaml"} <= names
    assert "mmvsd/weights/targets/toy-s/model.safetensors" in names
    assert {"mmvsd/lmms/tasks/mmvsd_pope.yaml", "mmvsd/lmms/tasks/mmvsd_describe.yaml",
            "mmvsd/lmms/tasks/hub/mmvsd_vqav2_hub.yaml"} <= names


def test_an_installed_copy_finds_its_recipes_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", "import mmvsd, sys; print(mmvsd.__file__); "
                             "from mmvsd.lmms.task_files import TEMPLATES; print(sorted(p.name for p in TEMPLATES.rglob('*.yaml'))); "
                             "from mmvsd.train import run; sys.exit(run(['recipe=toy_msd', 'dry_run=true']))"],
                            cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(site))  # the installed copy, not this checkout
    assert "'mmvsd_chartqa.yaml', 'mmvsd_chartqa_hub.yaml', 'mmvsd_describe.yaml'" in result.stdout
    assert "drafter: msd" in result.stdout and "# batch: 8 per process" in result.stdout
