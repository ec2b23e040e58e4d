"""Turning whatever image a user hands us into an RGB picture a LLaVA processor can take.

Every failure is a `UserError` naming the file and the problem: missing, a folder, empty, not an
image, truncated, or so large that decoding it would be a decompression bomb.

Memory is bounded by the processor's input size, not by the file: a picture is shrunk to at most
MAX_SIDE pixels a side before anything else makes a copy of it (JPEGs are even decoded at reduced
scale), and only then is a thin one padded to a square. A small file that declares huge dimensions
is refused from its header, before decoding, when decoding it would take more than MAX_DECODE_BYTES.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mmvsd.errors import UserError

MAX_PIXELS = 50_000_000  # a 48-MP phone photo fits; a 9000x7000 (63 MP) bomb does not
MAX_DECODE_BYTES = 120_000_000  # a 40-MP RGB PNG (6300x6300) fits; the same in RGBA (160 MB) does not
MAX_SIDE = 1344  # 4x LLaVA-1.5's 336-px input: detail to spare for any processor, 5.4 MB at most in RGB
MAX_ASPECT = 4.0  # beyond this, pad to a square (LLaVA-1.5's own "pad" preprocessing), after the shrink
# Bytes per pixel while a mode is decoded and turned into 8 bits at full size (see _to_8_bits).
_PEAK_BYTES_PER_PIXEL = {"1": 1.2, "L": 1, "P": 5, "LA": 2, "PA": 5, "I;16": 7, "I;16B": 7, "I;16L": 7, "I": 9, "F": 9}


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file and return it as RGB, or raise a UserError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"image {path}: no such file")
    if path.is_dir():
        raise UserError(f"image {path}: is a folder, not an image file")
    if not path.is_file():
        raise UserError(f"image {path}: not a regular file")
    if path.stat().st_size == 0:
        raise UserError(f"image {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            _check_size(image.size, max_pixels, str(path))  # from the header, before decoding
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
            _check_decode_cost(image, str(path))
            _load_whole(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"image {path}: not an image file Pillow can read (PNG, JPEG, GIF, BMP, WebP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image {path}: too many pixels to decode safely (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise UserError(f"image {path}: cannot decode ({' '.join(str(e).split())}); the file may be truncated") from None
    return to_rgb(image, str(path))


def to_rgb(image: Image.Image, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Upright RGB, at most MAX_SIDE a side, with no extreme aspect ratio: what the vision tower expects.

    Grayscale, bilevel, palette, CMYK and 16-bit images are converted; transparency is laid on
    white; EXIF rotation is applied; a very thin image (e.g. 20000x4) is shrunk, then padded to a
    square so the processor's shortest-edge resize cannot blow it up to hundreds of millions of pixels.
    """
    _check_size(image.size, max_pixels, name)
    if image.width < 1 or image.height < 1:
        raise UserError(f"{name}: the image has no pixels ({image.width}x{image.height})")
    image = _shrink(_to_8_bits(image))
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost the picture
        pass
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("RGB")
    long_side, short_side = max(image.size), min(image.size)
    if long_side > MAX_ASPECT * short_side:
        image = _pad_to_square(image)
    return image


def _to_8_bits(image: Image.Image) -> Image.Image:
    """Modes that resize badly or not at all become 8-bit ones first (palette and bilevel would be
    shrunk by nearest neighbour, dropping thin chart lines)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _rescale_high_bit_depth(image)
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    return image


def _shrink(image: Image.Image) -> Image.Image:
    scale = MAX_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise UserError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} million pixels, over the limit of "
            f"{max_pixels / 1e6:.0f} million (a decompression-bomb guard); downscale the image first"
        )


def _load_whole(image: Image.Image) -> None:
    """Decode, refusing truncated data even where another library (lmms-eval's task module) has
    told Pillow to accept it process-wide."""
    accept, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = accept


def _check_decode_cost(image: Image.Image, name: str) -> None:
    """Refuse, from the header, a picture whose decoding alone would take more than MAX_DECODE_BYTES."""
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(image.mode, len(image.getbands()))
    cost = image.width * image.height * per_pixel
    if cost > MAX_DECODE_BYTES:
        raise UserError(f"{name}: a {image.width}x{image.height} {image.mode} image takes {cost / 1e6:.0f} MB to decode, "
                        f"over the limit of {MAX_DECODE_BYTES / 1e6:.0f} MB; downscale it (or save it as JPEG) first")


def _rescale_high_bit_depth(image: Image.Image) -> Image.Image:
    """16-bit and float images: stretch their actual range onto 0..255 instead of clipping."""
    low, high = image.getextrema()
    scale = 255.0 / (high - low) if high > low else 0.0
    return image.convert("F").point(lambda v: (v - low) * scale).convert("L")


def _pad_to_square(image: Image.Image) -> Image.Image:
    side = max(image.size)
    mean = tuple(int(c) for c in ImageOps.fit(image, (1, 1)).getpixel((0, 0)))
    square = Image.new("RGB", (side, side), mean)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square
