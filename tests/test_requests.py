"""The bench's data files (mmvsd.data.requests): whole files, BOMs, MMSpec's lines and layout, toy:mmspec."""

import json
from pathlib import Path

import pytest
from PIL import Image

from mmvsd.data.requests import builtin_requests, read_requests
from mmvsd.errors import UserError
from mmvsd.toyworld.mmspec import TOPICS


def write_lines(path: Path, records: list, encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding=encoding)
    return path


@pytest.fixture
def picture(tmp_path) -> str:
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "pic.png")
    return "pic.png"


def test_n_zero_reads_the_whole_file_and_n_keeps_the_first_inputs(tmp_path, picture):
    data = tmp_path / "ten.jsonl"
    data.write_text("\n".join(json.dumps({"image": picture, "prompt": f"question {i}"}) for i in range(10)) + "\n\n")
    requests, total = read_requests(str(data), 0)
    assert total == 10 and [r.prompt for r in requests] == [f"question {i}" for i in range(10)]
    assert all(r.error is None and r.turns == [r.prompt] for r in requests)
    requests, total = read_requests(str(data), 3)
    assert total == 10 and [r.name for r in requests] == [f"ten.jsonl:{i} (pic.png)" for i in (1, 2, 3)]


def test_a_byte_order_mark_does_not_cost_line_one(tmp_path, picture):
    data = write_lines(tmp_path / "bom.jsonl", [{"image": picture, "prompt": "hi"}], encoding="utf-8-sig")
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    (request,), total = read_requests(str(data), 0)
    assert request.error is None and request.prompt == "hi" and total == 1


def test_each_bad_turns_line_has_its_own_one_line_error_and_the_rest_loads(tmp_path, picture):
    bad = [
        ({"image": picture, "turns": "what is it?"}, '"turns" is a string, not a list'),
        ({"image": picture, "turns": []}, '"turns" is an empty list'),
        ({"image": picture, "turns": ["what is it?", 3]}, 'turn 2 of "turns" is a number, not a string'),
        ({"image": picture, "turns": ["what is it?", "why?", "  \n"]}, 'turn 3 of "turns" is empty'),
        ({"image": picture, "turns": ["what is it?"], "prompt": "hi"}, 'both "turns" and "prompt"; give one of them'),
        ({"image": picture, "topic": "general vqa"}, 'no "prompt" or "turns"'),
        ({"image": picture, "turns": ["what is it?"], "topic": 7}, '"topic" is a number, not a string'),
    ]
    good = {"image": picture, "turns": ["what is it?", "how many?"]}
    data = write_lines(tmp_path / "mixed.jsonl", [good] + [record for record, _ in bad] + [good])
    requests, total = read_requests(str(data), 0)
    assert total == len(bad) + 2
    assert requests[0].error is None and requests[-1].error is None and requests[-1].turns == good["turns"]
    for number, (request, (_, problem)) in enumerate(zip(requests[1:-1], bad), start=2):
        assert request.error.startswith(f"mixed.jsonl:{number}: {problem}; expected "), request.error
        assert "\n" not in request.error


def test_relative_images_are_found_beside_the_file_or_under_images(tmp_path, picture):
    (tmp_path / "images" / "general_vqa").mkdir(parents=True)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "images" / "general_vqa" / "img_000001.png")
    absolute = str(tmp_path / picture)
    data = write_lines(tmp_path / "mmspec.jsonl", [
        {"image": "general_vqa/img_000001.png", "prompt": "colour?"},
        {"image": picture, "prompt": "colour?"},
        {"image": absolute, "prompt": "colour?"},
        {"image": "general_vqa/img_000002.png", "prompt": "colour?"},
    ])
    under_images, beside, by_absolute, missing = read_requests(str(data), 0)[0]
    assert under_images.error is None and under_images.image.getpixel((5, 5)) == (0, 0, 255)
    assert beside.error is None and beside.image.getpixel((5, 5)) == (200, 30, 30)
    assert by_absolute.error is None and by_absolute.image.size == (40, 30)
    assert missing.image is None and "no such file" in missing.error and "\n" not in missing.error
    assert f"looked in {tmp_path} and in {tmp_path / 'images'}" in missing.error


def test_an_mmspec_line_is_read_as_it_is(tmp_path, picture):
    line = {"id": 17, "image": picture, "turns": ["Describe the image.", "What colour is it?"],
            "category": "a red rectangle", "topic": "multi-turn"}
    (request,), _ = read_requests(str(write_lines(tmp_path / "mmspec.jsonl", [line])), 0)
    assert request.error is None and request.image is not None
    assert request.turns == line["turns"] and request.prompt == "Describe the image."
    assert request.topic == "multi-turn" and request.id == "17"


def test_toy_mmspec_is_written_once_with_every_topic(tmp_path, monkeypatch):
    monkeypatch.setenv("MMVSD_HOME", str(tmp_path))
    requests, total = read_requests("toy:mmspec", 0)
    file = tmp_path / "toyworld" / "mmspec-v1" / "mmspec.jsonl"
    written = file.stat().st_mtime_ns
    assert total == len(requests) and {r.topic for r in requests} == set(TOPICS)
    assert any(r.topic == "multi-turn" and len(r.turns) >= 2 for r in requests)
    assert all(r.error is None and r.image.size == (336, 336) for r in requests)
    assert all(line.split('"image": "')[1].startswith(("general_vqa/", "chart_understanding/", "image_captioning/",
                                                       "multi-turn/")) for line in file.read_text().splitlines())
    again, _ = read_requests("toy:mmspec", 2)
    assert file.stat().st_mtime_ns == written and [r.turns for r in again] == [r.turns for r in requests[:2]]
    assert [p.name for p in file.parent.parent.iterdir()] == ["mmspec-v1"]  # no temporary folder left behind


def test_an_unknown_toy_set_is_one_line():
    with pytest.raises(UserError, match=r"^data toy:nope: no such toy set; the toy sets are toy:mmspec$"):
        read_requests("toy:nope", 0)


def test_builtin_requests_are_single_turn():
    requests = builtin_requests(2, seed=0)
    assert all(r.turns == [r.prompt] and r.prompt for r in requests)
