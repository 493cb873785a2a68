"""PDF pages → upright RGB images and their text lines, with PyMuPDF."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image

from data_pipeline.schema import DocumentError, Skip

# TEXTFLAGS_TEXT: the flags of `page.get_text("text")`, so lines and plain text agree (images excluded).
TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT
# With accurate side bearings, glyphs without advance (lone combining marks, U+200C) keep their place in the text,
# as in MuPDF's plain text, but glyph boxes collapse to their baseline: text from one, boxes from the other.
TEXT_FLAGS_EXACT = TEXT_FLAGS | pymupdf.TEXT_ACCURATE_SIDE_BEARINGS
_INVISIBLE = ("Mn", "Me", "Cf", "Cc", "Co", "Zs")


def open_pdf(path: str | Path, max_pages: int) -> pymupdf.Document:
    """Open a PDF or raise `DocumentError` with the counted reason."""
    try:
        if Path(path).stat().st_size == 0:
            raise DocumentError("empty_file", str(path))
        doc = pymupdf.open(path, filetype="pdf")
    except DocumentError:
        raise
    except (pymupdf.FileDataError, RuntimeError, ValueError) as e:
        raise DocumentError("corrupt_pdf", f"{path}: {e}") from e
    if doc.needs_pass and not doc.authenticate(""):
        n = doc.page_count
        doc.close()
        raise DocumentError("encrypted", str(path), pages=max(n, 1))
    if doc.page_count == 0:
        doc.close()
        raise DocumentError("no_pages", str(path))
    if doc.page_count > max_pages:
        n = doc.page_count
        doc.close()
        raise DocumentError("too_many_pages", f"{path}: {n} pages > max_pages_per_doc={max_pages}", pages=n)
    return doc


def page_lines(page: pymupdf.Page, zoom: float) -> list[dict]:
    """Text lines in content order with boxes in pixels of the page rendered upright at `zoom`."""
    to_pixels = page.rotation_matrix * pymupdf.Matrix(zoom, zoom)
    lines = []
    for block in page.get_text("dict", flags=TEXT_FLAGS)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"])
            if not text.strip():
                continue
            r = pymupdf.Rect(line["bbox"]) * to_pixels
            lines.append({"text": text, "bbox": [r.x0, r.y0, r.x1, r.y1]})
    exact = []
    for block in page.get_text("dict", flags=TEXT_FLAGS_EXACT)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"])
            if text.strip():
                r = pymupdf.Rect(line["bbox"]) * to_pixels
                exact.append({"text": text, "bbox": [r.x0, r.y0, r.x1, r.y1]})
    # Lines both extractions found (equal but for invisible characters) take the exact text; lines of invisible
    # characters only the exact one found are added with its box; the rest stay as they are.
    a, b = [_visible(line["text"]) for line in lines], [_visible(line["text"]) for line in exact]
    out: list[dict] = []
    for tag, i0, i1, j0, j1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [{**lines[i0 + k], "text": exact[j0 + k]["text"]} for k in range(i1 - i0)]
            continue
        out += lines[i0:i1]
        if tag == "insert" and not any(b[j0:j1]):
            out += exact[j0:j1]
    return out


def _visible(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)


def render_page(
    page: pymupdf.Page, dpi: float, max_side: int, max_page_pixels: int
) -> tuple[Image.Image, float] | Skip:
    """Render upright at `dpi`, long side capped at `max_side`; pages whose native size at `dpi` exceeds
    `max_page_pixels` (posters, maps, broken media boxes) are skipped with reason `pixel_cap`."""
    rect = page.rect
    if rect.width < 1 or rect.height < 1:
        return Skip("degenerate_page", detail=f"{rect.width}x{rect.height} pt", error=True)
    native = (rect.width * dpi / 72) * (rect.height * dpi / 72)
    if native > max_page_pixels:
        return Skip("pixel_cap", detail=f"{native / 1e6:.0f} MP at {dpi} dpi")
    zoom = min(dpi / 72, max_side / max(rect.width, rect.height))
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
    return pixmap_image(pix), zoom


def pixmap_image(pix: pymupdf.Pixmap) -> Image.Image:
    """RGB pixmap → PIL image, 8-bit grey when the page has no colour (a third of the bytes to encode).
    Colour is looked for on every other pixel of every other row: a coloured mark thinner than that
    is kept, in grey."""
    rgb = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    probe = rgb[::2, ::2]
    if (probe[..., 0] == probe[..., 1]).all() and (probe[..., 1] == probe[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(rgb[..., 1]), "L")
    return Image.fromarray(rgb.copy(), "RGB")


def iter_pdf_pages(path: str | Path, cfg) -> Iterator[tuple[int, Image.Image, list[dict]] | Skip]:
    """Each page as (page index, image, lines) or a `Skip`; raises `DocumentError` for the whole file."""
    doc = open_pdf(path, cfg.max_pages_per_doc)
    try:
        for i in range(doc.page_count):
            try:
                page = doc.load_page(i)
                rendered = render_page(page, cfg.dpi, cfg.max_side, cfg.max_page_pixels)
                if isinstance(rendered, Skip):
                    yield rendered
                    continue
                image, zoom = rendered
                yield i, image, page_lines(page, zoom)
            except (RuntimeError, ValueError) as e:  # MuPDF reports a broken page as RuntimeError
                yield Skip("corrupt_page", detail=f"{path} page {i}: {e}", error=True)
    finally:
        doc.close()
