"""Synthetic text pages: text drawn with an installed font at known positions, so every line's box is exact.

Used to make test and benchmark pages without any download, and the seed of the `synthetic` warm-up source.
"""

from __future__ import annotations

import math
import os
import random
import re
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


@lru_cache(maxsize=1024)
def open_font(path: str | None, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font file at `px` pixels (Pillow's own font where `path` is None), opened once per process: a
    snippet stream draws thousands of samples a minute from a few faces and sizes."""
    return ImageFont.truetype(path, px) if path else ImageFont.load_default(size=px)


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


FONT_ROOT = "/usr/share/fonts"


@lru_cache(maxsize=4)
def installed_fonts(root: str = FONT_ROOT) -> tuple[str, ...]:
    """TrueType/OpenType fonts under `root` that draw Latin letters (symbol fonts, whose letters would come
    out as empty boxes, are left out); sorted, so choices are reproducible on machines with the same fonts."""
    folder = Path(root)
    found = (
        sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
        if folder.is_dir()
        else []
    )
    return tuple(f for f in found if _draws_latin(f))


@lru_cache(maxsize=4096)
def font_family(path: str) -> str:
    """The family a font file belongs to, as its name table says, without an optical size ("LM Roman 10" and
    "LM Roman 12" are one family, "LM Roman"); the file's name where it has none. Bold and italic faces share
    their family's name, so a split by family keeps every face of a held-out family out of training."""
    try:
        name = ImageFont.truetype(path, 12).getname()[0] or ""
    except OSError:
        name = ""
    return re.sub(r"\s+\d+$", "", name.strip()) or Path(path).name


def _draws_latin(path: str) -> bool:
    try:
        font = ImageFont.truetype(path, 24)

        def glyph(ch: str) -> bytes:
            mask = font.getmask(ch)
            return bytes(mask) + bytes(mask.size)

        missing = glyph("\U0010fffd")  # what this font draws for a glyph it lacks
        return all(glyph(ch) != missing for ch in "aeoRST")
    except OSError:
        return False


def render_snippets_page(
    snippets: list[str],
    seed: int,
    size: tuple[int, int] | None = None,
    fonts: tuple[str, ...] | None = None,
    font_px: tuple[int, int] = (12, 48),
) -> tuple[Image.Image, list[dict], list[str]]:
    """The v2 warm-up page: text snippets at random places, each in a random installed font, size and dark
    colour, on a random light background. Snippets are placed top to bottom without overlapping; those
    that do not fit are left out. Returns the image, the `[{"text", "bbox"}]` of what was drawn and the
    font file of each drawn line (`default` for Pillow's own). `fonts`: the font files to draw with (default:
    `installed_fonts()`)."""
    rng = random.Random(seed)
    width, height = size or rng.choice([(850, 1100), (1100, 850), (1024, 1448), (800, 800), (1200, 600)])
    background = tuple(rng.randint(215, 255) for _ in range(3))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    fonts = installed_fonts() if fonts is None else fonts
    y = rng.randint(8, 40)
    lines: list[dict] = []
    used: list[str] = []
    for text in snippets:
        px = rng.randint(*font_px)
        path = rng.choice(fonts) if fonts else None
        font = open_font(path, px)
        while " " in text and draw.textlength(text, font=font) > width - 16:
            text = text.rsplit(" ", 1)[0]  # drop whole words: a label never ends in half a word
        if draw.textlength(text, font=font) > width - 16:
            continue
        x = rng.randint(8, max(8, int(width - 8 - draw.textlength(text, font=font))))
        box = draw.textbbox((x, y), text, font=font)
        if box[3] > height - 8:
            break
        colour = tuple(rng.randint(0, 90) for _ in range(3))
        draw.text((x, y), text, fill=colour, font=font)
        lines.append({"text": text, "bbox": list(box)})
        used.append(os.path.basename(path) if path else "default")
        y = box[3] + rng.randint(4, 40)
    return img, lines, used


def render_snippet(
    texts: list[str],
    seed: int,
    fonts: tuple[str, ...] | None = None,
    font_px: tuple[int, int] = (24, 48),
    padding: tuple[float, float] = (0.1, 0.5),
    max_width: int = 1024,
    canvas: tuple[int, int] | None = None,
    max_aspect: float | None = None,
) -> tuple[Image.Image, list[dict], list[str]]:
    """The reading warm-up's sample: `texts` (one or a few lines) in one random font (from `fonts`), size (from
    `font_px`) and dark colour on a light background, so that the text is large against the patch grid.

    Without `canvas` the image is the text's crop with a margin of `padding` (a fraction of the font size, drawn
    from the range); with `canvas=(W, H)` every image is W x H and the text sits at a random place inside it (a
    model with `max_patches = W*H/256` then sees it unscaled: `font_px/16` patches per line). Text wider than
    `max_width` (or the canvas) loses trailing words, then characters; on a canvas, a first line taller than it
    takes a smaller margin, then a smaller font, and later lines that do not fit are left out. `max_aspect`
    (crops only): a crop wider than this many times its height is padded above and below (the text at a random
    height) to that shape, so that a long line keeps as many patch rows as the processor gives that shape (a
    grid's rows are rounded down: at 48 patches a crop wider than 12:1 gets one row of 16 px, 11 keeps two).
    Returns the image, the `[{"text", "bbox"}]` of each drawn line and its font file."""
    rng = random.Random(seed)
    fonts = installed_fonts() if fonts is None else fonts
    px = rng.randint(*font_px)
    path = rng.choice(fonts) if fonts else None
    margin = max(1, round(px * rng.uniform(*padding)))
    gap = int(px * rng.uniform(0.2, 0.6))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while True:
        font = open_font(path, px)
        room = (canvas[0] if canvas else max_width) - 2 * margin
        fitted = [t for t in (_fit(probe, t, font, room) for t in texts) if t]
        extents = [probe.textbbox((0, 0), t, font=font) for t in fitted]
        # On a canvas the first line always fits: the margin gives way first, then the font size.
        if not canvas or not extents or extents[0][3] - extents[0][1] + 2 * margin <= canvas[1]:
            break
        if margin > 0:
            margin = max(0, (canvas[1] - (extents[0][3] - extents[0][1])) // 2)
        elif px > 4:
            px -= 1
        else:
            break
    if canvas:  # keep the lines that fit the canvas's height
        used_height, keep = 2 * margin, 0
        for _, y0, _, y1 in extents:
            used_height += (y1 - y0) + (gap if keep else 0)
            if used_height > canvas[1]:
                break
            keep += 1
        fitted, extents = fitted[:keep], extents[:keep]
    heights = [b[3] - b[1] for b in extents]
    block_w = max((b[2] - b[0] for b in extents), default=0)
    block_h = sum(heights) + gap * max(len(heights) - 1, 0)
    if canvas:
        width, height = canvas
        left = rng.randint(margin, max(margin, width - margin - block_w))
        top = rng.randint(margin, max(margin, height - margin - block_h))
    else:
        width, height = max(block_w + 2 * margin, 8), max(block_h + 2 * margin, 8)
        left, top = margin, margin
        if max_aspect and width > max_aspect * height:
            taller = math.ceil(width / max_aspect)
            top += rng.randint(0, taller - height)
            height = taller
    background = tuple(rng.randint(200, 255) for _ in range(3))
    colour = tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    lines, y = [], top
    for text, (x0, y0, x1, _), h in zip(fitted, extents, heights, strict=True):
        draw.text((left - x0, y - y0), text, fill=colour, font=font)
        # The label is the measured extent moved to where it was drawn (what textbbox there would return).
        lines.append({"text": text, "bbox": [left, y, left + x1 - x0, y + h]})
        y += h + gap
    return img, lines, [os.path.basename(path) if path else "default"] * len(lines)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, room: int) -> str:
    """`text` cut to `room` pixels: trailing words first, then trailing characters (what is drawn is the label)."""
    while " " in text and draw.textlength(text, font=font) > room:
        text = text.rsplit(" ", 1)[0]
    while text and draw.textlength(text, font=font) > room:
        text = text[:-1]
    return text.strip()


def invoice_page(rng: random.Random) -> tuple[Image.Image, list[dict], str]:
    """A made-up invoice (a number, a date, lines of items, a total) for fine-tuning examples: the page, its
    lines with boxes (a layout label) and the total as text (the answer to "What is the total?")."""
    image = Image.new("L", (400, 320), 255)
    draw = ImageDraw.Draw(image)
    font = load_font(16)
    items = [
        (rng.choice(WORDS), rng.randint(1, 99) + rng.randint(0, 99) / 100) for _ in range(rng.randint(2, 5))
    ]
    total = f"{sum(price for _, price in items):.2f}"
    texts = [
        f"INVOICE {rng.randint(1000, 9999)}",
        f"Date 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    ]
    texts += [f"{name} {price:.2f}" for name, price in items] + [f"TOTAL {total}"]
    lines, y = [], 16
    for text in texts:
        x = 20 if not text.startswith("TOTAL") else 200
        draw.text((x, y), text, fill=0, font=font)
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        lines.append({"text": text, "bbox": [x0, y0, x1, y1]})
        y += 40 if text.startswith(("INVOICE", "Date")) else 32
    return image, lines, total
