"""Open page corpora published as webdataset tars of PDFs with their own OCR (`idl_wds`, `pdfa_wds`): each page
rendered with PyMuPDF as `source=pdf` renders it, labelled with the corpus's own lines and boxes, not
re-OCRed and not re-extracted.

The layout read is the one the corpora's cards describe (Industry Documents Library `pixparse/idl-wds`, ~19M
pages, lines and words from Amazon Textract; PDFA `pixparse/pdfa-eng-wds`, ~18M pages of Common Crawl PDFs,
"formatted in the same way"): a sample is `<key>.pdf` (the document) and `<key>.json`,

    {"pages": [{"lines": {"text": [...], "bbox": [[left, top, width, height], ...], "score": [...],
                          "word_slice": [[first, end], ...]},
                "words": {"text": [...], "bbox": [...], "score": [...], "line_pos": [...]},
                "images_bbox": [...], "images_bbox_no_text_overlap": [...]}, ...]}

with boxes as fractions of the page (Textract's `BoundingBox`: left, top, width, height), one entry per PDF
page in page order, lines in the corpus's reading order (kept). A document is one tar shard: its samples are
read in order, a page is a sample keyed `<source>/<tar name>/<corpus key>/<page>`; `meta.json` names the corpus,
its document id and its licence note. Counted, never silent: lines without text (`corpus_empty_line`), boxes
outside the page (`corpus_box_outside`, kept clamped when they overlap it), pages the JSON lacks
(`corpus_page_unlabelled`), samples without a PDF or JSON (`corpus_incomplete`) or with JSON that does not
parse (`corpus_bad_json`). Where the PDF has a text layer of its own, `meta.json` gives the word IoU of the
corpus's lines against it (`text_layer_iou`): how far the corpus's OCR and the born-digital text agree
(`text_layer_agreement: false` skips the extraction and writes null).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from data_pipeline import storage
from data_pipeline.align import token_iou, words
from data_pipeline.render.pdf import open_pdf, page_lines, render_page
from data_pipeline.schema import DocumentError, Sample, Skip

EXTENSIONS = (".tar",)
# A box may overhang the page by this share of its side (OCR of a page edge) before it counts as outside.
TOLERANCE = 0.01


def corpus_lines(page: dict) -> tuple[list[dict], dict[str, int]]:
    """A JSON page's lines, boxes as fractions of the page (x0, y0, x1, y1), in the corpus's order, and the counts
    of what was dropped (`empty_line`) or lies outside the page (`box_outside`: dropped when it misses the
    page, clamped by `clean_lines` when it overlaps it)."""
    block = page.get("lines") or {}
    texts, boxes = block.get("text") or [], block.get("bbox") or []
    if len(texts) != len(boxes):
        raise ValueError(f"lines.text has {len(texts)} entries, lines.bbox {len(boxes)}")
    lines, counts = [], {"empty_line": 0, "box_outside": 0}
    for text, box in zip(texts, boxes, strict=True):
        if not str(text).strip():
            counts["empty_line"] += 1
            continue
        left, top, w, h = (float(v) for v in box)
        right, bottom = left + w, top + h
        if left < -TOLERANCE or top < -TOLERANCE or right > 1 + TOLERANCE or bottom > 1 + TOLERANCE:
            counts["box_outside"] += 1
            if right <= 0 or bottom <= 0 or left >= 1 or top >= 1:
                continue
        lines.append({"text": str(text), "bbox": [left, top, right, bottom]})
    return lines, counts


def corpus_samples(path: str | Path, doc_id: str, cfg, source: str) -> Iterator[Sample | Skip]:
    """Layout samples of every page of every PDF in the tar at `path` (a file, or a URL `storage` reads)."""
    corpus, licence = str(cfg.corpus), str(cfg.licence)
    dpi, max_side, max_pixels = float(cfg.dpi), int(cfg.max_side), int(cfg.max_page_pixels)
    agree = bool(cfg.get("text_layer_agreement", True))
    try:
        for members in storage.iter_samples(str(path)):
            key = members["__key__"]
            where = f"{path}#{key}"
            if "pdf" not in members or "json" not in members:
                missing = " and ".join(m for m in ("pdf", "json") if m not in members)
                yield Skip("corpus_incomplete", detail=f"{where}: no {missing}", error=True)
                continue
            try:  # orjson: a corpus page's JSON holds every word's box, and parsing it was a third of the work
                pages = orjson.loads(members["json"])["pages"]
            except (orjson.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                yield Skip("corpus_bad_json", detail=f"{where}: {e}", error=True)
                continue
            try:
                doc = open_pdf(where, int(cfg.max_pages_per_doc), data=members["pdf"])
            except DocumentError as e:
                yield Skip(e.reason, pages=e.pages, detail=e.detail, error=e.reason != "too_many_pages")
                continue
            try:
                yield from _pages(doc, pages, where, f"{doc_id}/{key}", source, (dpi, max_side, max_pixels),
                                  {"corpus": corpus, "corpus_id": key, "licence": licence}, agree)  # fmt: skip
            finally:
                doc.close()
    except storage.UnreadableShard as e:
        raise DocumentError("unreadable_tar", f"{path}: {e.reason}") from e


def _agreement(lines: list[dict], layer: list[dict]) -> float | None:
    """Word IoU of the corpus's lines against the PDF's own text layer (None without one)."""
    if not layer:
        return None
    return round(
        token_iou(words(" ".join(ln["text"] for ln in lines)), words(" ".join(ln["text"] for ln in layer))), 4
    )


def _pages(doc, pages: list, where: str, doc_id: str, source: str, render: tuple, meta: dict, agree: bool):
    for i in range(doc.page_count):
        if i >= len(pages) or not isinstance(pages[i], dict):
            yield Skip("corpus_page_unlabelled", detail=f"{where} page {i}: the JSON has {len(pages)} pages")
            continue
        try:  # before rendering: a page without a line to label it is not rendered
            lines, counts = corpus_lines(pages[i])
        except (ValueError, TypeError) as e:
            yield Skip("corpus_bad_json", detail=f"{where} page {i}: {e}", error=True)
            continue
        for reason, n in counts.items():
            if n:  # a part of the page: counted, the page is still written
                yield Skip(f"corpus_{reason}", pages=0, detail=f"{where} page {i}: {n}")
        if not lines:
            yield Skip("no_text_found", detail=f"{where} page {i}")
            continue
        try:
            rendered = render_page(doc.load_page(i), *render)
        except (RuntimeError, ValueError) as e:
            yield Skip("corrupt_page", detail=f"{where} page {i}: {e}", error=True)
            continue
        if isinstance(rendered, Skip):
            yield rendered
            continue
        image, dlist, zoom = rendered
        height, width = image.shape[:2]
        for line in lines:
            left, top, right, bottom = line["bbox"]
            line["bbox"] = [left * width, top * height, right * width, bottom * height]
        agreement = _agreement(lines, page_lines(dlist, zoom)) if agree else None
        yield Sample(source, doc_id, i, image, where, lines=lines, meta={**meta, "text_layer_iou": agreement})
