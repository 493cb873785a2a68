"""Page image → flattened patches, value-for-value what Hugging Face's `Kosmos2_5ImageProcessor` makes.

The recipe (Pix2Struct's): normalise each image by its own mean and standard deviation, resize it keeping
the aspect ratio to the largest grid of 16x16 patches that fits `max_patches`, cut the patches, prefix each
with its 1-based row and column ids, and pad with zero rows up to `max_patches`. The padding is kept on
purpose: the reference resampler attends over every position, padding included.

Normalising is affine and the antialiased bilinear resize is a weighted average with weights summing to
one, so the two commute: we take the statistics on the original uint8 pixels (exactly, from a histogram)
and normalise only the resized image, which is what makes this faster than the reference. The reference's
PIL backend uses the population standard deviation (its torchvision backend the sample one, a relative
difference of 1/(2N) for N values); we use the population one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

# Larger images are first reduced (PIL box filter) to fit: the model sees at most max_patches * 256 pixels,
# and a 50-megapixel page is already ~12x that at the paper's max_patches=4096.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


@dataclass
class ProcessedImage:
    flattened_patches: torch.Tensor  # (max_patches, 2 + p*p*3) float32
    width: int  # resized width in pixels = cols * p; layout coordinates live in this frame
    height: int  # resized height in pixels = rows * p
    rows: int
    cols: int
    original_width: int
    original_height: int


class ImageProcessor:
    """`ImageProcessor(max_patches=4096)(image)` → `ProcessedImage`. Accepts a PIL image, an (H, W, 3)
    uint8 array, or a path; anything else, an empty image or an unreadable file raises `ValueError`
    naming the input."""

    def __init__(
        self, max_patches: int = 4096, patch_size: int = 16, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ):
        if max_patches < 1 or patch_size < 1:
            raise ValueError(f"max_patches ({max_patches}) and patch_size ({patch_size}) must be positive")
        self.max_patches = max_patches
        self.patch_size = patch_size
        self.max_image_pixels = max_image_pixels

    # ----------------------------------------------------------------- inputs
    def load(self, image: Image.Image | np.ndarray | str | Path) -> np.ndarray:
        """Any accepted input → contiguous (H, W, 3) uint8 RGB array (transparency composited on white)."""
        name = "image"
        if isinstance(image, (str, Path)):
            name = str(image)
            try:
                with Image.open(image) as im:
                    im.draft("RGB", _draft_size(im.size, self.max_image_pixels))
                    image = _to_rgb(im)
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise ValueError(f"{name}: not a readable image ({e})") from e
        elif isinstance(image, Image.Image):
            if image.width * image.height == 0:
                raise ValueError(f"{name} is empty ({image.width}x{image.height})")
            image = _to_rgb(image)
        elif isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise ValueError(
                    f"{name}: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
                )
            if image.shape[2] == 4:
                image = np.asarray(_to_rgb(Image.fromarray(image, "RGBA")))
        else:
            raise ValueError(
                f"{name}: expected a PIL image, an (H, W, 3) uint8 array or a path, got {type(image).__name__}"
            )
        arr = np.ascontiguousarray(image) if isinstance(image, np.ndarray) else np.asarray(image)
        h, w = arr.shape[:2]
        if h * w == 0:
            raise ValueError(f"{name} is empty ({w}x{h})")
        if h * w > self.max_image_pixels:
            scale = math.sqrt(self.max_image_pixels / (h * w))
            small = Image.fromarray(arr).resize(
                (max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BOX
            )
            arr = np.asarray(small)
        return arr

    # ------------------------------------------------------------- transform
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch rows and columns for an image: the largest aspect-preserving grid within max_patches."""
        p = self.patch_size
        scale = math.sqrt(self.max_patches * (p / height) * (p / width))
        # Ids are 1-based and the row/column tables hold max_patches entries, so one side of max_patches
        # patches would index past them (the reference crashes there); only a >= max_patches:1 strip differs.
        side = max(self.max_patches - 1, 1)
        rows = max(min(math.floor(scale * height / p), side), 1)
        cols = max(min(math.floor(scale * width / p), side), 1)
        return rows, cols

    def __call__(self, image: Image.Image | np.ndarray | str | Path) -> ProcessedImage:
        arr = self.load(image)
        h, w = arr.shape[:2]
        p = self.patch_size
        rows, cols = self.grid(h, w)
        mean, std = _mean_std(arr)
        # float32 in (H, W, C) order: the resize then runs on a channels-last tensor without a transpose copy.
        x = torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
        x = F.interpolate(x, size=(rows * p, cols * p), mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
        x = (x - mean) / std
        patches = x.view(3, rows, p, cols, p).permute(1, 3, 2, 4, 0).reshape(rows * cols, p * p * 3)
        out = torch.zeros(self.max_patches, 2 + p * p * 3)
        n = rows * cols
        ids = torch.arange(n)
        out[:n, 0] = (ids // cols + 1).float()
        out[:n, 1] = (ids % cols + 1).float()
        out[:n, 2:] = patches
        return ProcessedImage(out, cols * p, rows * p, rows, cols, arr.shape[1], arr.shape[0])

    def batch(self, images: list) -> dict[str, torch.Tensor]:
        """Several images → `flattened_patches (B, max_patches, D)`, `width`, `height` (resized), as tensors."""
        done = [self(im) for im in images]
        return {
            "flattened_patches": torch.stack([d.flattened_patches for d in done]),
            "width": torch.tensor([d.width for d in done]),
            "height": torch.tensor([d.height for d in done]),
        }


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _draft_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    # Lets a JPEG decoder skip work for huge scans; other formats ignore draft().
    w, h = size
    if w * h <= max_pixels:
        return size
    s = math.sqrt(max_pixels / (w * h))
    return max(1, int(w * s)), max(1, int(h * s))


def _mean_std(arr: np.ndarray) -> tuple[float, float]:
    """Exact mean and population std of all uint8 values, floored at 1/sqrt(N) as the reference does."""
    counts = np.bincount(arr.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    n = counts.sum()
    mean = (counts @ values) / n
    var = max((counts @ (values - mean) ** 2) / n, 0.0)
    return float(mean), max(math.sqrt(var), 1.0 / math.sqrt(n))
