"""Turning whatever image a user hands us into an RGB picture a LLaVA processor can take.

Every failure is a `UserError` naming the file and the problem: missing, empty, not an image,
truncated, or so large that decoding it would be a decompression bomb.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mmvsd.errors import UserError

MAX_PIXELS = 50_000_000  # a 48-MP phone photo fits; a 9000x7000 (63 MP) bomb does not
MAX_ASPECT = 4.0  # beyond this, pad to a square first (LLaVA-1.5's own "pad" preprocessing)


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file and return it as RGB, or raise a UserError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"image {path}: no such file")
    if not path.is_file():
        raise UserError(f"image {path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"image {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            _check_size(image.size, max_pixels, str(path))  # from the header, before decoding
            image.load()
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
    """Upright RGB with no extreme aspect ratio: what the vision tower expects.

    Grayscale, bilevel, palette, CMYK and 16-bit images are converted; transparency is laid on
    white; EXIF rotation is applied; a very thin image (e.g. 1x5000) is padded to a square so the
    processor's shortest-edge resize cannot blow it up to hundreds of millions of pixels.
    """
    _check_size(image.size, max_pixels, name)
    if image.width < 1 or image.height < 1:
        raise UserError(f"{name}: the image has no pixels ({image.width}x{image.height})")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost the picture
        pass
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _rescale_high_bit_depth(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("RGB")
    long_side, short_side = max(image.size), min(image.size)
    if long_side > MAX_ASPECT * short_side:
        image = _pad_to_square(image)
    return image


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise UserError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} million pixels, over the limit of "
            f"{max_pixels / 1e6:.0f} million (a decompression-bomb guard); downscale the image first"
        )


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
