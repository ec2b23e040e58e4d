"""Training data files: LLaVA conversations with images, ShareGPT, target answers; holes counted."""

import json

import pytest
from PIL import Image

from mmvsd.data.loaders import load_records
from mmvsd.errors import UserError
from mmvsd.train import run


@pytest.fixture
def llava_file(tmp_path):
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "coco" / "a.jpg")
    Image.new("L", (20, 50), 128).save(folder / "coco" / "b.png")
    (folder / "coco" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    records = [
        {"id": "1", "image": "coco/a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Yes, quite bright."}]},
        {"id": "2", "image": "coco/b.png", "conversations": [
            {"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "A grey field."}]},
        {"id": "3", "image": "coco/missing.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "4", "image": "coco/a.jpg", "conversations": [{"from": "gpt", "value": "answer first"}]},
        {"id": "5", "conversations": [{"from": "human", "value": "Just text, no image?"},
                                      {"from": "gpt", "value": "Text works too."}]},
        {"id": "6", "image": "coco/broken.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Broken."}]},
        "not a record",
    ]
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(records))
    return path, folder


def test_llava_records_are_read_and_holes_counted(llava_file):
    path, folder = llava_file
    loaded = load_records(path, folder)
    assert len(loaded.records) == 4  # 1, 2, 5 and 6 (6's image only fails when decoded)
    assert loaded.records[0].turns == [("What colour is this?", "Red."), ("Is it bright?", "Yes, quite bright.")]
    assert loaded.records[1].turns[0][0] == "Describe the image."  # the placeholder is removed
    assert loaded.records[2].image is None
    assert loaded.skipped == {"missing image": 1, "malformed conversations": 1, "not an object": 1}
    assert "4 records used" in loaded.summary()


def test_sharegpt_and_target_answers(tmp_path):
    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "Hi, 世界 😀"},
                                                               {"from": "gpt", "value": "Hello!"}]}]))
    assert load_records(share).records[0].image is None
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"image": "p.png", "prompt": "Describe.", "answer": "Dark."}) + "\n\n"
                       + json.dumps({"prompt": 3}) + "\n")
    loaded = load_records(answers)
    assert loaded.records[0].turns == [("Describe.", "Dark.")] and loaded.skipped["neither conversations nor prompt/answer"] == 1


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("{not json", "not valid JSON"), ('{"a": 1}', "expected a list"),
    ('[{"image": "nope.png", "prompt": "a", "answer": "b"}]', "no usable record (0 records used; skipped: 1 missing image)"),
])
def test_unusable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "data.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_records(path)


def test_training_on_a_llava_file_counts_what_it_skipped(llava_file, tmp_path, capsys):
    path, folder = llava_file
    out = tmp_path / "run"
    assert run(["target=tiny-random", "drafter=msd", f"data={path}", f"image_folder={folder}", "steps=3",
                "batch_size=3", "eval_n=0", f"output_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert "skipped: 1 missing image" in err and "unreadable image" in err  # the broken jpeg, found in a batch
    assert (out / "drafter" / "model.safetensors").is_file()


def test_target_written_answers_resume_and_train(tmp_path):
    from mmvsd.data.answers import AnswersConfig, main

    out = tmp_path / "answers"
    main(AnswersConfig(target="tiny-random", out=str(out), n=2, max_new_tokens=6))
    main(AnswersConfig(target="tiny-random", out=str(out), n=3, max_new_tokens=6))  # resumes: one more
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines] == ["images/000000.png", "images/000001.png", "images/000002.png"]
    loaded = load_records(out / "answers.jsonl")
    assert len(loaded.records) == 3 and all(r.image.is_file() for r in loaded.records)
    assert run(["target=tiny-random", "drafter=vispec", f"data={out / 'answers.jsonl'}", "steps=2",
                "batch_size=2", "eval_n=0", f"output_dir={tmp_path / 'run'}"]) == 0


def test_answers_from_a_folder_skip_broken_images(tmp_path, capsys):
    from mmvsd.data.answers import AnswersConfig, main

    Image.new("RGB", (30, 20), (0, 90, 200)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    main(AnswersConfig(target="tiny-random", images=str(tmp_path), out=str(tmp_path / "out"), max_new_tokens=4))
    lines = (tmp_path / "out" / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["image"].endswith("ok.png")
    assert "1 images skipped" in capsys.readouterr().out


def test_text_first_stage_reads_a_text_only_file(llava_file, tmp_path):
    from types import SimpleNamespace

    from mmvsd.models import load_target
    from mmvsd.training.features import training_batch

    path, folder = llava_file
    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([{"id": str(i), "conversations": [
        {"from": "human", "value": f"Count to {i}."}, {"from": "gpt", "value": " ".join(map(str, range(i + 1)))}]}
        for i in range(5)]))
    target = load_target("tiny-random")
    cfg = SimpleNamespace(seed=0, batch_size=3, max_length=512, describe_share=0.0, text_first_steps=2,
                          text_ramp_steps=0)
    main, text = load_records(path, folder), load_records(share)
    first = training_batch(target, cfg, index=0, step=0, loaded=main, text_loaded=text)  # stage 1: text only
    assert not first["has_image"].any() and "pixel_values" not in first
    decoded = target.tokenizer.batch_decode(first["input_ids"], skip_special_tokens=True)
    assert all("Count to" in d for d in decoded)
    second = training_batch(target, cfg, index=5, step=5, loaded=main, text_loaded=text)  # stage 2: the main file
    decoded = target.tokenizer.batch_decode(second["input_ids"], skip_special_tokens=True)
    assert not any("Count to" in d for d in decoded) and second["has_image"].any()
    assert int((second["input_ids"] == target.image_token_id).sum()) == \
        int(second["has_image"].sum()) * target.num_image_tokens

    out = tmp_path / "run"  # both stages in one run, from the command line
    assert run(["target=tiny-random", "drafter=vispec", f"data={path}", f"image_folder={folder}",
                f"text_data={share}", "text_first_steps=2", "steps=4", "batch_size=2", "eval_n=0",
                f"output_dir={out}"]) == 0
    shares = [json.loads(x)["text_only_share"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert shares == [1.0, 1.0, 0.0, 0.0]
