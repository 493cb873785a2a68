"""Page images: our PNG writer, grey/colour rendering of PDF pages, and the arrays that share pixmap memory."""

from __future__ import annotations

import gc
import io

import numpy as np
import pymupdf
import pytest
from PIL import Image

from data_pipeline.filters import grey_spread
from data_pipeline.imageio import ScanlineImage, encode_image, encode_png, resize_long_side
from data_pipeline.render.pdf import page_lines, render_page


@pytest.mark.parametrize("shape", [(37, 53), (64, 31, 3), (1, 1), (1, 1, 3), (2048, 1449)])
def test_png_writer_round_trips(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[: shape[0] // 2] = 255  # flat background, as on pages
    for level in (0, 1, 3, 9):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(a, level))))
        assert decoded.shape == a.shape and (decoded == a).all()


def test_png_writer_takes_views_and_other_modes_and_refuses_the_rest():
    a = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    view = a[::2, 5:70]  # not contiguous
    assert (np.asarray(Image.open(io.BytesIO(encode_image(view, "png")))) == view).all()
    rgba = Image.new("RGBA", (9, 7), (10, 20, 30, 128))
    assert Image.open(io.BytesIO(encode_image(rgba, "png"))).mode == "RGB"
    assert Image.open(io.BytesIO(encode_image(a, "jpg"))).size == (80, 60)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(a.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((4, 4, 4), np.uint8))


def test_resize_and_grey_spread():
    a = np.full((400, 100, 3), (255, 0, 0), np.uint8)
    small = resize_long_side(a, 200)
    assert small.size == (50, 200) and resize_long_side(a, 400) is a
    assert grey_spread(a) == pytest.approx(0, abs=1e-3)  # one colour: blank, whatever the colour
    grey = np.full((512, 100), 255, np.uint8)
    grey[:256] = 0  # half black, half white: a spread of 127.5 from the histogram as from the pixels
    assert grey_spread(grey) == pytest.approx(grey[::8, ::8].std()) == pytest.approx(127.5)
    a = np.full((512, 100, 3), (255, 0, 0), np.uint8)
    a[:256] = 0
    assert grey_spread(a) == pytest.approx(0.299 * 255 / 2, abs=0.5)  # luma in whole levels


def _pdf(colour: tuple[float, float, float]) -> pymupdf.Document:
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 100), "Literate pages", fontsize=24, color=colour)
    return doc


def test_grey_pages_render_grey_and_coloured_pages_rgb():
    grey = render_page(_pdf((0.2, 0.2, 0.2))[0], 144, 2048, 10**9)
    red = render_page(_pdf((1, 0, 0))[0], 144, 2048, 10**9)
    (g, _, zoom), (r, _, _) = grey, red
    assert zoom == 2 and g.shape == (400, 600) and r.shape == (400, 600, 3)
    assert g.min() < 100  # the text is drawn
    ink = r[(r[..., 1] < 128)]
    assert len(ink) > 100 and (ink[:, 0] > 200).all()  # red, not grey
    # A view keeps the image's scanline buffer alive.
    rows = g[100:300]
    del grey, g
    gc.collect()
    assert rows.min() < 100 and Image.open(io.BytesIO(encode_png(rows))).size == (600, 200)


def test_rendered_pages_are_png_scanlines_and_encode_like_a_copy():
    for colour in ((0.2, 0.2, 0.2), (1, 0, 0)):
        image, dlist, zoom = render_page(_pdf(colour)[0], 144, 2048, 10**9)
        assert isinstance(image, ScanlineImage) and (image.scanlines[:, 0] == 0).all()
        # drawn as get_pixmap draws it
        space = pymupdf.csRGB if image.ndim == 3 else pymupdf.csGRAY
        pix = dlist.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=space, alpha=False)
        want = np.frombuffer(pix.samples, np.uint8).reshape(image.shape)
        assert (np.asarray(image) == want).all()
        png = encode_png(image)
        assert png == encode_png(np.array(image))  # the scanlines deflated as they are = a copy's PNG
        assert (np.asarray(Image.open(io.BytesIO(png))) == want).all()
        crop = image[10:50, 20:]  # a crop is no longer the scanlines: encoded from a copy
        assert (np.asarray(Image.open(io.BytesIO(encode_png(crop)))) == crop).all()


def test_page_lines_read_broken_text_as_get_text_does():
    """A control character in the text and a font map that sends a code to a lone surrogate: MuPDF's JSON is
    then no valid UTF-8 JSON, and the lines are read the slower way, with U+FFFD as `get_text()` has it."""
    doc = _pdf((0, 0, 0))
    page = doc[0]
    page.insert_text((20, 150), "Bell\x07here, ABC", fontsize=12)
    font = page.get_fonts()[0][0]
    cmap = doc.get_new_xref()
    doc.update_object(cmap, "<<>>")
    doc.update_stream(
        cmap,
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /X def "
        b"1 begincodespacerange <00> <FF> endcodespacerange 1 beginbfchar <41> <D800> endbfchar "
        b"endcmap CMapName currentdict /CMap defineresource pop end end",
    )
    doc.xref_set_key(font, "ToUnicode", f"{cmap} 0 R")
    texts = []
    for page in (pymupdf.open("pdf", doc.tobytes())[0], _pdf((0, 0, 0))[0]):  # broken, then clean
        _, dlist, zoom = render_page(page, 72, 2048, 10**9)
        texts.append([line["text"] for line in page_lines(dlist, zoom)])
        assert texts[-1] == page.get_text().splitlines()
    assert texts == [["Literate pages", "Bell\x07here, \ufffdBC"], ["Literate pages"]]
