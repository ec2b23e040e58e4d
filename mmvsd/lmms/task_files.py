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
    whose data is not beside its YAML file, or, offline, a `*_hub` task or one of lmms-eval's own
    (pope, chartqa, vqav2_val, ...) whose dataset is not in the local Hugging Face cache, is refused
    in one line that says what to run."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "")
    for task in tasks:
        toy = folder / f"{task}.yaml"
        if toy.is_file():
            missing = [f for f in _read_task(toy)["dataset_kwargs"]["data_files"].values() if not (folder / f).is_file()]
            if missing:
                raise UserError(f"{task}: {folder / missing[0]} does not exist; run `python -m mmvsd.zoo tasks` and "
                                "pass the folder it prints as the include path")
            continue
        if not offline:
            continue
        hub = folder / "hub" / f"{task}.yaml"
        config = _read_task(hub) if hub.is_file() else _lmms_eval_task(task)
        if config is None or not _is_hub_dataset(config):
            continue
        dataset, name = config["dataset_path"], config.get("dataset_name")
        if not _in_hf_cache(dataset, name):
            load = f"datasets.load_dataset('{dataset}'" + (f", '{name}'" if name else "") + ")"
            instead = f" or run the toy task {task.removesuffix('_hub')}" if hub.is_file() else ""
            raise UserError(f"{task} needs the Hugging Face dataset {dataset}" + (f" ({name})" if name else "") +
                            f", which is not in the local datasets cache and HF_HUB_OFFLINE is set; load it once "
                            f"where there is network (python -c \"import datasets; {load}\"){instead}")


def _read_task(path: Path) -> dict:
    """A task YAML's plain keys (lmms-eval's `!function` tags read as None)."""
    loader = type("TaskLoader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda *_: None)
    return yaml.load(path.read_text(), Loader=loader)


def _lmms_eval_task(task: str) -> dict | None:
    """The keys of lmms-eval's own task `task` (its `include`d template's below its own), when its
    YAML is named after it (pope.yaml, chartqa.yaml, vqav2_val.yaml, vqav2_val_lite.yaml, ...)."""
    from importlib.util import find_spec

    spec = find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    for path in sorted(root.glob(f"*/{task}.yaml")):
        config = _read_task(path)
        if isinstance(config, dict) and config.get("task") == task:
            include = config.get("include")
            base = _read_task(path.parent / include) if include and (path.parent / include).is_file() else {}
            return {**(base if isinstance(base, dict) else {}), **config}
    return None


def _is_hub_dataset(config: dict) -> bool:
    """A dataset that `datasets.load_dataset` fetches from the hub (not a local path, not a video task's download)."""
    path, kwargs = config.get("dataset_path"), config.get("dataset_kwargs") or {}
    return isinstance(path, str) and path.count("/") == 1 and not Path(path).exists() and \
        not {"video", "load_from_disk", "From_YouTube", "data_files", "builder_script"} & set(kwargs)


def _in_hf_cache(dataset: str, name: str | None = None) -> bool:
    """Whether offline `datasets.load_dataset(dataset, name)` finds it: datasets 5 then reads only the
    datasets prepared under the datasets cache (lmms-eval's: $LMMS_EVAL_DATASETS_CACHE, else
    $HF_DATASETS_CACHE, else $HF_HOME/datasets), as <owner>___<snake_case name>/<config>/<version>/<hash>."""
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants

    home = Path(os.environ.get("HF_HOME", constants.HF_HOME)).expanduser()
    cache = Path(os.environ.get("LMMS_EVAL_DATASETS_CACHE", "").strip() or
                 os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    owner, repo = dataset.split("/")
    prepared = cache / f"{owner}___{camelcase_to_snakecase(repo)}"
    # A hub download (`datasets--owner--name` in the hub cache) is still taken as being there, as before
    return any(prepared.glob(f"{name or '*'}/*/*/dataset_info.json")) or \
        (Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{repo}").is_dir()
