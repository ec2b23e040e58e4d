"""A few documents written where `datasets.load_dataset("owner/Name", config)` finds them offline.

With HF_HUB_OFFLINE=1, datasets 5.x never reads the hub's file cache (`datasets--owner--Name/`): its
`dataset_module_factory` raises at once and falls back to `CachedDatasetModuleFactory`, which takes
the newest *prepared* dataset under HF_DATASETS_CACHE:

    <HF_DATASETS_CACHE>/<owner>___<snake_case(Name)>/<config>/<version>/<hash>/
        dataset_info.json            (its "config_name" must be the <config> folder's name)
        <snake_case(Name)>-<split>.arrow   (Arrow IPC streams, one per split)

which is the layout `load_dataset` leaves behind after one online run. This writes that layout."""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets.arrow_writer import ArrowWriter
from datasets.naming import camelcase_to_snakecase, filenames_for_dataset_split

# The features of lmms-lab's datasets, as their task code reads them (lmms_eval/tasks/*/utils.py).
IMAGE = datasets.Image()
S = datasets.Value("string")
POPE = datasets.Features({"id": S, "question_id": S, "question": S, "answer": S, "image_source": S,
                          "image": IMAGE, "category": S})
CHARTQA = datasets.Features({"type": S, "question": S, "answer": S, "image": IMAGE})
VQAV2 = datasets.Features({
    "question_type": S, "multiple_choice_answer": S,
    "answers": [{"answer": S, "answer_confidence": S, "answer_id": datasets.Value("int64")}],
    "image_id": datasets.Value("int64"), "answer_type": S, "question_id": datasets.Value("int64"), "question": S,
    "image": IMAGE})


def prepared_dir(cache: Path, repo_id: str, config: str | None) -> Path:
    owner, name = repo_id.split("/")
    return cache / f"{owner}___{camelcase_to_snakecase(name)}" / (config or "default") / "0.0.0" / ("0" * 16)


def write_prepared(cache: Path, repo_id: str, config: str | None, split: str, rows: list[dict],
                   features: datasets.Features) -> Path:
    """`rows` (PIL images in the image column) as split `split` of `repo_id` (config `config`, or the
    default one) in the datasets cache `cache`, replacing whatever was there."""
    import shutil

    folder = prepared_dir(cache, repo_id, config)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    name = camelcase_to_snakecase(repo_id.split("/")[1])
    [path] = filenames_for_dataset_split(str(folder), dataset_name=name, split=split, filetype_suffix="arrow")
    with ArrowWriter(features=features, path=path) as writer:
        for row in rows:
            writer.write(features.encode_example(row))
        count, size = writer.finalize()
    info = datasets.DatasetInfo(
        features=features, config_name=config or "default", dataset_name=name, version="0.0.0",
        splits=datasets.SplitDict({split: datasets.SplitInfo(name=split, num_bytes=size, num_examples=count,
                                                             dataset_name=name)}, dataset_name=name))
    info.write_to_directory(str(folder))
    return folder
