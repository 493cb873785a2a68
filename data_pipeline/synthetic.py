"""Synthetic text pages: text drawn with an installed font at known positions, so every line's box is exact.

Used to make test and benchmark pages without any download, and the seed of the `synthetic` warm-up source.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype")
WORDS = [
    "the",
    "model",
    "reads",
    "a",
    "page",
    "image",
    "and",
    "writes",
    "its",
    "text",
    "lines",
    "with",
    "bounding",
    "boxes",
    "or",
    "the",
    "page",
    "as",
    "markdown",
    "document",
    "layout",
    "table",
    "figure",
    "section",
    "abstract",
    "results",
    "training",
    "data",
    "scale",
    "tokens",
    "vision",
    "encoder",
    "resampler",
    "decoder",
    "invoice",
    "total",
    "amount",
    "date",
    "number",
    "page",
    "column",
    "header",
    "footer",
    "paragraph",
]


@lru_cache(maxsize=64)
def load_font(size: int, name: str = "DejaVuSans.ttf") -> ImageFont.FreeTypeFont:
    """An installed TrueType font at `size` px (DejaVu from Debian's fonts-dejavu-core), else Pillow's own."""
    for d in FONT_DIRS:
        for path in sorted(Path(d).rglob(name)) if Path(d).is_dir() else []:
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def render_text_page(
    width: int,
    height: int,
    seed: int = 0,
    font_size: int | None = None,
    texts: list[str] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[Image.Image, list[dict]]:
    """A page with lines of text top to bottom; returns the image and `[{"text", "bbox"}]` in its pixels.

    `texts` gives the lines' texts (default: random words); lines that do not fit the page are dropped.
    """
    rng = random.Random(seed)
    size = font_size or max(8, min(width, height) // 40)
    font = load_font(size)
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    margin = max(2, width // 20)
    y = margin
    lines: list[dict] = []
    i = 0
    while y + size * 1.2 < height - margin:
        if texts is not None and i >= len(texts):
            break
        text = (
            texts[i] if texts is not None else " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
        )
        i += 1
        x = margin + rng.randint(0, max(0, width // 10))
        while text and draw.textlength(text, font=font) > width - x - margin:
            text = text[: -max(1, len(text) // 10)].rstrip()
        if text.strip():
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
            x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
            lines.append({"text": text, "bbox": [x0, y0, x1, y1]})
        y += int(size * rng.uniform(1.3, 2.2))
    return img, lines
