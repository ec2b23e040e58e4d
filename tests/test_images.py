"""Whatever image a user hands over is either made usable or refused with one clear line."""

import io
import struct
import zlib

import pytest
from PIL import Image

from mmvsd.errors import UserError
from mmvsd.images import load_image, to_rgb


def png_with_header_size(width: int, height: int, colour_type: int = 0) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape); colour type 0
    is 8-bit grayscale, 6 is RGBA."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def saved(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("make, size", [
    (lambda: Image.new("L", (40, 30), 128), (40, 30)),  # grayscale
    (lambda: Image.new("1", (40, 30), 1), (40, 30)),  # bilevel
    (lambda: Image.new("RGBA", (40, 30), (255, 0, 0, 0)), (40, 30)),  # fully transparent
    (lambda: Image.new("P", (40, 30), 3), (40, 30)),  # palette
    (lambda: Image.new("CMYK", (40, 30), (0, 255, 0, 0)), (40, 30)),
    (lambda: Image.new("I;16", (40, 30), 40000), (40, 30)),  # 16-bit
    (lambda: Image.new("RGB", (1, 1), (9, 9, 9)), (1, 1)),  # one pixel
    (lambda: Image.new("RGB", (5000, 1)), (1344, 1344)),  # extreme aspect: shrunk, then padded to a square
    (lambda: Image.new("RGB", (3000, 2000)), (1344, 896)),  # shrunk to MAX_SIDE, aspect kept
])
def test_unusual_images_become_rgb(make, size):
    image = to_rgb(make())
    assert image.mode == "RGB" and image.size == size


def test_transparency_is_laid_on_white():
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = saved(tmp_path, image, "rotated.jpg", exif=exif)
    assert load_image(path).size == (20, 60)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_common_formats_load(tmp_path, fmt):
    path = saved(tmp_path, Image.new("RGB", (32, 24), (10, 200, 30)), f"pic.{fmt.lower()}", format=fmt)
    assert load_image(path).size == (32, 24)


def test_bad_files_are_refused_with_the_reason(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (200, 200), (1, 2, 3)).save(good, format="PNG")
    cases = {
        "missing.png": (None, "no such file"),
        "empty.png": (b"", "the file is empty"),
        "notes.png": (b"this is not an image\n" * 20, "not an image file"),
        "truncated.png": (good.getvalue()[: len(good.getvalue()) // 2], "cannot decode"),
        "bomb.png": (png_with_header_size(100_000, 100_000), "decompression"),
        "big.png": (png_with_header_size(9000, 7000), "9000x7000 is 63 million pixels"),
        "costly.png": (png_with_header_size(6000, 6000, colour_type=6), "6000x6000 RGBA image takes 144 MB to decode"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(UserError, match=message) as error:
            load_image(path)
        assert "\n" not in str(error.value) and name in str(error.value)
    with pytest.raises(UserError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((300, 300), 50).convert("RGB").save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(UserError, match="cut.jpg: cannot decode"):
        load_image(path)


def peak_rss_mb(argv: list[str], cwd) -> float:
    """Peak resident memory of one child process (its own, not the largest child's so far)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, child.stderr.read().decode()[-2000:]
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def test_small_files_cost_little_memory_whatever_their_dimensions(tmp_path):
    """The issue's 327-byte 20000x4 PNG once cost 2 GB (padded to a square before the shrink); a
    flat PNG of the largest size still decoded (MAX_DECODE_BYTES) is under 1 MB too. A bench on
    either may use at most 200 MB more than on a 64x64 picture."""
    from mmvsd.images import MAX_DECODE_BYTES

    side = int((MAX_DECODE_BYTES / 3) ** 0.5)
    images = {"small.png": Image.new("RGB", (64, 64), (200, 30, 30)),
              "thin.png": Image.new("RGB", (20000, 4), (200, 30, 30)),
              "flat.png": Image.new("RGB", (side, side), (30, 30, 200))}
    peaks = {}
    for name, image in images.items():
        image.save(tmp_path / name)
        assert (tmp_path / name).stat().st_size < 1_000_000
        (tmp_path / f"{name}.jsonl").write_text(f'{{"image": "{name}", "prompt": "Describe it."}}\n')
        peaks[name] = peak_rss_mb(["-m", "mmvsd.bench", "target=tiny-random", "drafter=eagle", "max_new_tokens=2",
                                   f"data={tmp_path / f'{name}.jsonl'}"], tmp_path)
    assert peaks["thin.png"] - peaks["small.png"] < 200, peaks
    assert peaks["flat.png"] - peaks["small.png"] < 200, peaks
