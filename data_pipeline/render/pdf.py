"""PDF pages → upright grey or RGB images and their text lines, with PyMuPDF."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pymupdf

from data_pipeline.imageio import ScanlineImage, scanline_image
from data_pipeline.schema import DocumentError, Skip

# TEXTFLAGS_TEXT: the flags of `page.get_text("text")`, so lines and plain text agree (images excluded).
TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT
_mupdf = pymupdf.mupdf
# MuPDF's JSON gives coordinates as whole numbers: asked for in 1/16 px, they are exact to a 1/8 px.
_SUBPIXEL = 16
_SURROGATE = re.compile("[\ud800-\udfff]")


def open_pdf(path: str | Path, max_pages: int, data: bytes | None = None) -> pymupdf.Document:
    """Open a PDF (the file at `path`, or `data`, the bytes of one that `path` names) or raise `DocumentError`
    with the counted reason."""
    try:
        if (len(data) if data is not None else Path(path).stat().st_size) == 0:
            raise DocumentError("empty_file", str(path))
        doc = (
            pymupdf.open(path, filetype="pdf") if data is None else pymupdf.open(stream=data, filetype="pdf")
        )
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
    """Text lines in MuPDF's reading order with boxes in pixels of the display list drawn at `zoom`. MuPDF
    writes its structured text as JSON in C, each line with its box and its characters (exactly those of
    its plain text): a third of the time of building `get_text("dict")`'s spans in Python."""
    buf = _mupdf.FzBuffer(1 << 16)
    out = _mupdf.FzOutput(buf)
    _mupdf.fz_print_stext_page_as_json(out, dlist.get_textpage(TEXT_FLAGS), zoom * _SUBPIXEL)
    out.fz_close_output()
    raw = buf.fz_buffer_extract()
    try:  # orjson parses in half the time of `json`; it refuses what MuPDF writes for broken text (below)
        blocks, clean = orjson.loads(raw)["blocks"], True
    except orjson.JSONDecodeError:
        # Characters are written as UTF-8 even when they are no valid code point (broken font maps), and
        # control characters unescaped: `json` with surrogates let through and `strict=False` reads both.
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace")
        blocks, clean = json.loads(text, strict=False)["blocks"], False
    lines = []
    for block in blocks:
        for line in block.get("lines", ()):
            chars = line["text"]
            if not chars.strip():
                continue
            if not clean and _SURROGATE.search(
                chars
            ):  # as in `get_text()`: an invalid code point reads U+FFFD
                chars = _SURROGATE.sub("\ufffd", chars)
            b = line["bbox"]
            x0, y0 = b["x"] / _SUBPIXEL, b["y"] / _SUBPIXEL
            lines.append({"text": chars, "bbox": [x0, y0, x0 + b["w"] / _SUBPIXEL, y0 + b["h"] / _SUBPIXEL]})
    return lines


def draw_page(dlist: pymupdf.DisplayList, zoom: float, colour: bool) -> ScanlineImage:
    """The display list drawn at `zoom` as `get_pixmap` draws it (white background, no alpha), into a new
    grey or RGB image laid out as PNG scanlines, which the PNG writer then deflates without a copy."""
    matrix = _mupdf.FzMatrix(zoom, 0, 0, zoom, 0, 0)
    box = _mupdf.fz_round_rect(_mupdf.fz_transform_rect(_mupdf.fz_bound_display_list(dlist.this), matrix))
    width, height = box.x1 - box.x0, box.y1 - box.y0
    image = scanline_image(height, width, 3 if colour else 1)
    space = _mupdf.FzColorspace(_mupdf.FzColorspace.Fixed_RGB if colour else _mupdf.FzColorspace.Fixed_GRAY)
    samples = _mupdf.python_mutable_buffer_data(memoryview(image.scanlines.reshape(-1))[1:])
    stride = image.scanlines.strides[0]
    pix = _mupdf.fz_new_pixmap_with_data(space, width, height, _mupdf.FzSeparations(), 0, stride, samples)
    pix.m_internal.x, pix.m_internal.y = box.x0, box.y0
    _mupdf.fz_clear_pixmap_with_value(pix, 0xFF)
    device = _mupdf.fz_new_draw_device(matrix, pix)
    everything = _mupdf.FzRect(_mupdf.FzRect.Fixed_INFINITE)
    _mupdf.fz_run_display_list(dlist.this, device, _mupdf.FzMatrix(), everything, _mupdf.FzCookie())
    _mupdf.fz_close_device(device)
    return image


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
    return draw_page(dlist, zoom, colour), dlist, zoom


def iter_pdf_pages(path: str | Path, cfg) -> Iterator[tuple[int, np.ndarray, list[dict]] | Skip]:
    """Each page as (page index, image, lines) or a `Skip`; raises `DocumentError` for the whole file."""
    doc = open_pdf(path, cfg.max_pages_per_doc)
    dpi, max_side, max_pixels = float(cfg.dpi), int(cfg.max_side), int(cfg.max_page_pixels)
    try:
        for i in range(doc.page_count):
            try:
                page = doc.load_page(i)
                rendered = render_page(page, dpi, max_side, max_pixels)
                if isinstance(rendered, Skip):
                    yield rendered
                    continue
                image, dlist, zoom = rendered
                yield i, image, page_lines(dlist, zoom)
            except (RuntimeError, ValueError) as e:  # MuPDF reports a broken page as RuntimeError
                yield Skip("corrupt_page", detail=f"{path} page {i}: {e}", error=True)
    finally:
        doc.close()
