"""Page images: a `Sample.image` is a PIL image or an 8-bit array (H, W) grey / (H, W, 3) RGB, and is
stored as PNG, JPEG or WebP.

PNG goes through our own writer: rows unfiltered, deflated by ISA-L (`isal`, several times faster than
zlib at level 1). Document pages are mostly flat background, where unfiltered rows compress as well as
Pillow's adaptive filters (165 kB vs 176 kB on a grey 1449x2048 page) in a twelfth of the time (1.3 ms vs
16 ms). Without `isal` (a platform without its wheel), zlib does the same work more slowly. A renderer that
draws into a `scanline_image` hands the writer its rows ready to deflate: no copy at all. ISA-L's output is not
always the same for the same rows (rarely: a Slurm build against a local one differed in one bit of one page's
deflate stream, the inflated rows identical): two builds of a page agree in its pixels, not always in its bytes.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
from PIL import Image

try:
    from isal import isal_zlib as _deflate

    _MAX_LEVEL = 3  # ISA-L levels are 0-3
except ImportError:  # pragma: no cover - isal ships wheels for the usual platforms
    _deflate, _MAX_LEVEL = zlib, 9

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}

PageImage = Image.Image | np.ndarray


def image_size(image: PageImage) -> tuple[int, int]:
    """(width, height) of a PIL image or an array."""
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.size


def to_array(image: PageImage) -> np.ndarray:
    """8-bit grey (H, W) or RGB (H, W, 3) array; other PIL modes are converted to RGB."""
    if isinstance(image, np.ndarray):
        return image
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def to_pil(image: PageImage) -> Image.Image:
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image


class ScanlineImage(np.ndarray):
    """An 8-bit image that is a view into PNG scanlines: `scanlines` is an (H, 1 + W*C) buffer whose first
    column is every row's filter byte (0, none), so `encode_png` deflates it as it is."""

    scanlines: np.ndarray


def scanline_image(height: int, width: int, channels: int) -> ScanlineImage:
    """A new (H, W) grey or (H, W, 3) RGB image laid out as PNG scanlines, for a renderer to draw into."""
    if channels not in (1, 3):
        raise ValueError(f"scanline_image: 1 or 3 channels, not {channels}")
    scanlines = np.empty((height, 1 + width * channels), np.uint8)
    scanlines[:, 0] = 0
    rows = scanlines[:, 1:]
    image = (rows if channels == 1 else rows.reshape(height, width, 3)).view(ScanlineImage)
    image.scanlines = scanlines
    return image


def _own_scanlines(array: np.ndarray) -> np.ndarray | None:
    """The scanline buffer behind a whole `ScanlineImage` (not behind a crop or a copy of one)."""
    scanlines = getattr(array, "scanlines", None)
    if (
        scanlines is None
        or scanlines.shape != (array.shape[0], 1 + array[0].size)
        or array.__array_interface__["data"][0] != scanlines.__array_interface__["data"][0] + 1
    ):
        return None
    return scanlines


def encode_png(array: np.ndarray, level: int = 1) -> bytes:
    """An 8-bit grey or RGB array as PNG (no filtering, deflate at `level`, capped at the codec's maximum)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"encode_png: need uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    rows = _own_scanlines(array)
    if rows is None:
        rows = _scratch(height * (array[0].size + 1)).reshape(height, -1)
        rows[:, 0] = 0  # filter type None on every row
        rows[:, 1:] = array.reshape(height, -1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if array.ndim == 2 else 2, 0, 0, 0)
    idat = _deflate.compress(rows, max(0, min(int(level), _MAX_LEVEL)))
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """This thread's reused buffer for the rows to deflate (a page is 3-10 MB: no new allocation per page)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = _SCRATCH.buf = np.empty(size, np.uint8)
    return buf[:size]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + tag + data + struct.pack(">I", _deflate.crc32(data, zlib.crc32(tag)))
    )


def encode_image(image: PageImage, image_format: str, quality: int = 90, png_level: int = 1) -> bytes:
    """Bytes of the image in `image_format` (png | jpg | webp)."""
    if image_format == "png":
        return encode_png(to_array(image), png_level)
    pil = to_pil(image)
    if pil.mode not in ("L", "RGB"):
        pil = pil.convert("RGB")
    buf = io.BytesIO()
    pil.save(buf, FORMATS[image_format], quality=quality)
    return buf.getvalue()


def resize_long_side(image: PageImage, max_side: int) -> PageImage:
    """The image with its long side capped at `max_side` (Lanczos); unchanged when already within it."""
    width, height = image_size(image)
    scale = min(1.0, max_side / max(width, height))
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil = to_pil(image)
    if pil.mode not in ("L", "RGB"):
        pil = pil.convert("RGB")
    return pil.resize(size, Image.Resampling.LANCZOS)
