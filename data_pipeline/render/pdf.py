"""PDF pages → upright grey or RGB images and their text lines, with PyMuPDF."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pymupdf

from data_pipeline.schema import DocumentError, Skip

# TEXTFLAGS_TEXT: the flags of `page.get_text("text")`, so lines and plain text agree (images excluded).
TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT
# With accurate side bearings, glyphs without advance (lone combining marks, U+200C) keep their place in the text,
# as in MuPDF's plain text, but glyph boxes collapse to their baseline: text from one, boxes from the other.
TEXT_FLAGS_EXACT = TEXT_FLAGS | pymupdf.TEXT_ACCURATE_SIDE_BEARINGS
_mupdf = pymupdf.mupdf
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


def display_list(page: pymupdf.Page) -> tuple[pymupdf.DisplayList, bool]:
    """The page's display list, upright (page rotation applied) with its annotations, as `get_pixmap` draws
    it, and whether anything on it has colour. One pass over the page content: MuPDF's test device passes
    every call on to the list device and notes any non-grey colour (images or shadings in a colour space
    count as colour). Rendering and both text extractions then run from the list."""
    fz_page = page.this if isinstance(page.this, _mupdf.FzPage) else page.this.super()
    dlist = _mupdf.FzDisplayList(_mupdf.fz_bound_page(fz_page))
    list_dev = _mupdf.fz_new_list_device(dlist)
    found = _mupdf.ll_fz_new_test_device_outparams()  # kept alive: the device writes `is_color` into it
    test_dev = _mupdf.FzDevice(_mupdf.ll_fz_new_test_device_outparams_fn(0.0, 0, list_dev.m_internal, found))
    _mupdf.fz_run_page(fz_page, test_dev, _mupdf.FzMatrix(), _mupdf.FzCookie())
    _mupdf.fz_close_device(test_dev)
    _mupdf.fz_close_device(list_dev)
    return pymupdf.DisplayList(dlist), found.is_color != 0


def page_lines(dlist: pymupdf.DisplayList, zoom: float) -> list[dict]:
    """Text lines in content order with boxes in pixels of the display list rendered at `zoom`."""
    lines = []
    for block in pymupdf.TextPage(dlist.get_textpage(TEXT_FLAGS)).extractDICT()["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"])
            if text.strip():
                x0, y0, x1, y1 = line["bbox"]
                lines.append({"text": text, "bbox": [x0 * zoom, y0 * zoom, x1 * zoom, y1 * zoom]})
    # The exact extraction's plain text has one line per line, in the same order (MuPDF ends every line with a
    # newline and every block with one more); mostly it equals the lines above, and then there is no more to do.
    exact = pymupdf.TextPage(dlist.get_textpage(TEXT_FLAGS_EXACT))
    exact_texts = [t for t in exact.extractText().split("\n") if t.strip()]
    if exact_texts == [line["text"] for line in lines]:
        return lines
    # Lines both found (equal but for invisible characters) take the exact text; lines of invisible characters
    # only the exact one found are added with its box; the rest stay as they are.
    a, b = [_visible(line["text"]) for line in lines], [_visible(t) for t in exact_texts]
    out: list[dict] = []
    for tag, i0, i1, j0, j1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [{**lines[i0 + k], "text": exact_texts[j0 + k]} for k in range(i1 - i0)]
            continue
        out += lines[i0:i1]
        if tag == "insert" and not any(b[j0:j1]):
            boxes = _line_boxes(exact, zoom)
            out += [
                {"text": exact_texts[j], "bbox": boxes.get(exact_texts[j], [0, 0, 0, 0])}
                for j in range(j0, j1)
            ]
    return out


def _line_boxes(textpage: pymupdf.TextPage, zoom: float) -> dict[str, list[float]]:
    boxes = {}
    for block in textpage.extractDICT()["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"])
            boxes.setdefault(text, [v * zoom for v in line["bbox"]])
    return boxes


def _visible(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)


def render_page(
    page: pymupdf.Page, dpi: float, max_side: int, max_page_pixels: int
) -> tuple[np.ndarray, pymupdf.DisplayList, float] | Skip:
    """Render upright at `dpi`, long side capped at `max_side`, as an 8-bit grey array when nothing on the page
    has colour (a third of the bytes to draw and encode), else RGB; pages whose native size at `dpi` exceeds
    `max_page_pixels` (posters, maps, broken media boxes) are skipped with reason `pixel_cap`.
    Returns (image, display list, zoom)."""
    rect = page.rect
    if rect.width < 1 or rect.height < 1:
        return Skip("degenerate_page", detail=f"{rect.width}x{rect.height} pt", error=True)
    native = (rect.width * dpi / 72) * (rect.height * dpi / 72)
    if native > max_page_pixels:
        return Skip("pixel_cap", detail=f"{native / 1e6:.0f} MP at {dpi} dpi")
    zoom = min(dpi / 72, max_side / max(rect.width, rect.height))
    dlist, colour = display_list(page)
    space = pymupdf.csRGB if colour else pymupdf.csGRAY
    pix = dlist.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=space, alpha=False)
    return pixmap_array(pix), dlist, zoom


class _PixmapArray(np.ndarray):
    """An array over a pixmap's samples that keeps the pixmap alive (its memory is the pixmap's)."""


def pixmap_array(pix: pymupdf.Pixmap) -> np.ndarray:
    """A grey or RGB pixmap as an (H, W) or (H, W, 3) uint8 array sharing its memory (no copy)."""
    flat = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.stride)
    rows = flat[:, : pix.width * pix.n]
    array = (rows if pix.n == 1 else rows.reshape(pix.height, pix.width, pix.n)).view(_PixmapArray)
    array.pixmap = pix
    return array


def iter_pdf_pages(path: str | Path, cfg) -> Iterator[tuple[int, np.ndarray, list[dict]] | Skip]:
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
                image, dlist, zoom = rendered
                yield i, image, page_lines(dlist, zoom)
            except (RuntimeError, ValueError) as e:  # MuPDF reports a broken page as RuntimeError
                yield Skip("corrupt_page", detail=f"{path} page {i}: {e}", error=True)
    finally:
        doc.close()
