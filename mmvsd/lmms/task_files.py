"""The mmvsd lmms-eval tasks, ready to run: their YAML files (shipped in the package) with the toy
world's test splits beside them, in one folder under $MMVSD_HOME to pass as `--include_path`.

lmms-eval anchors a task's relative `data_files` at the folder of its YAML file, and only when the
file exists as the task is read, so the data has to sit next to the YAMLs before lmms-eval starts:

    python -m lmms_eval --model mmvsd ... --include_path "$(python -m mmvsd.zoo tasks)"
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

import yaml

from mmvsd.errors import UserError

TEMPLATES = Path(str(resources.files("mmvsd") / "lmms" / "tasks"))


def task_folder(home: Path | None = None, datasets: Path | None = None, log=print) -> Path:
    """The ready task folder: made once per version of the task files (under the cache lock),
    found again afterwards. `datasets` is a toy-world dataset folder (default: the shared one)."""
    from mmvsd.checks import mmvsd_home
    from mmvsd.files import cache_lock
    from mmvsd.toyworld.targets.build import ensure_datasets
    from mmvsd.toyworld.data import DATA_VERSION, export_test_parquet

    digest = hashlib.sha256(f"data-v{DATA_VERSION}".encode())
    for path in sorted(TEMPLATES.rglob("*.yaml")):
        digest.update(path.relative_to(TEMPLATES).as_posix().encode() + path.read_bytes())
    folder = (home or mmvsd_home()) / "lmms_tasks" / digest.hexdigest()[:12]
    if (folder / "done").is_file():
        return folder
    with cache_lock(folder, "the lmms-eval task files", log):
        if (folder / "done").is_file():  # made while this process waited
            return folder
        log(f"writing the lmms-eval task files and toy test splits to {folder}")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(TEMPLATES, tmp, ignore=shutil.ignore_patterns("data", "__pycache__"))
        export_test_parquet(datasets or ensure_datasets(home, log=log), tmp / "data")
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


def check_task_data(tasks: list[str], folder: Path) -> None:
    """Before lmms-eval starts (it would fail deep inside `datasets`, naming a path): a toy task
    whose data is not beside its YAML file, or, offline, a `*_hub` task whose dataset is not in the
    local Hugging Face cache, is refused in one line that says what to run."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "")
    for task in tasks:
        toy = folder / f"{task}.yaml"
        if toy.is_file():
            missing = [f for f in _read_task(toy)["dataset_kwargs"]["data_files"].values() if not (folder / f).is_file()]
            if missing:
                raise UserError(f"{task}: {folder / missing[0]} does not exist; run `python -m mmvsd.zoo tasks` and "
                                "pass the folder it prints as the include path")
        hub = folder / "hub" / f"{task}.yaml"
        if not (offline and hub.is_file()):
            continue
        dataset = _read_task(hub)["dataset_path"]
        if not _in_hf_cache(dataset):
            raise UserError(f"{task} needs the Hugging Face dataset {dataset}, which is not in the local cache and "
                            f"HF_HUB_OFFLINE is set; fetch it once where there is network (huggingface-cli download "
                            f"--repo-type dataset {dataset}) or run the toy task {task.removesuffix('_hub')}")


def _read_task(path: Path) -> dict:
    """A task YAML's plain keys (lmms-eval's `!function` tags read as None)."""
    loader = type("TaskLoader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda *_: None)
    return yaml.load(path.read_text(), Loader=loader)


def _in_hf_cache(dataset: str) -> bool:
    from huggingface_hub import constants

    owner_name = dataset.replace("/", "--")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    return (Path(constants.HF_HUB_CACHE) / f"datasets--{owner_name}").is_dir() or \
        any(datasets_cache.glob(f"{dataset.replace('/', '___')}*"))
