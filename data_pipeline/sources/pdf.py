"""`pdf`: general PDFs → layout samples (PyMuPDF render + text lines; OCR for pages without a text layer
when `ocr_fallback` is on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.render.ocr import tesseract_lines
from data_pipeline.render.pdf import iter_pdf_pages
from data_pipeline.schema import Sample, Skip, clean_lines

EXTENSIONS = (".pdf",)


def pdf_samples(path: Path, doc_id: str, cfg, source: str) -> Iterator[Sample | Skip]:
    """Layout samples of a PDF's pages; shared by every source that ends in a PDF."""
    for item in iter_pdf_pages(path, cfg):
        if isinstance(item, Skip):
            yield item
            continue
        index, image, lines = item  # lines with text; their boxes are clamped when the sample is encoded
        meta = {}
        if not lines:
            if not cfg.get("ocr_fallback", False):
                yield Skip("no_text_layer", detail=f"{path} page {index}")
                continue
            height, width = image.shape[:2]
            ocr = tesseract_lines(
                Image.fromarray(np.array(image)), cfg.ocr_lang, cfg.ocr_timeout, threads=int(cfg.ocr_threads)
            )
            lines = clean_lines(ocr, width, height)
            meta["ocr"] = "tesseract"
            if not lines:
                yield Skip("no_text_found", detail=f"{path} page {index}")
                continue
        yield Sample(source, doc_id, index, image, str(path), lines=lines, meta=meta)


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from pdf_samples(path, doc_id, cfg, "pdf")
