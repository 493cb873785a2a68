"""`docx`: DOCX → PDF with LibreOffice → page images and layout lines; DOCX → markdown with pandoc (through
HTML, so tables become markdown tables, as the paper did with markdownify) → cut per page by aligning with
each page's PDF text (shared with `arxiv`). A page keeps its markdown when the token IoU with its PDF text
reaches `md_min_iou`, else only its layout (counted as `md_consistency`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymupdf

from data_pipeline.align import markdown_words, page_words, split_markdown_by_pages, token_iou
from data_pipeline.render.html_markdown import html_to_markdown
from data_pipeline.render.office import convert_to_pdf, external_references
from data_pipeline.render.pandoc import pandoc_html
from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.pdf import pdf_samples

EXTENSIONS = (".docx",)
REQUIRED_TOOLS = ("soffice", "pandoc")


def docx_markdown(path: Path, timeout: float) -> str:
    return html_to_markdown(pandoc_html(path, "docx", timeout))


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    for link in external_references(path):  # refused by the sandbox; counted here
        yield Skip("blocked_external_link", pages=0, detail=f"{path}: {link}")
    md = docx_markdown(path, float(cfg.convert_timeout))
    with tempfile.TemporaryDirectory(prefix="literate-docx-") as tmp:
        pdf = convert_to_pdf(path, Path(tmp), float(cfg.convert_timeout))
        with pymupdf.open(pdf) as doc:
            page_texts = [page.get_text() for page in doc]
        pages = split_markdown_by_pages(md, page_texts)
        for item in pdf_samples(pdf, doc_id, cfg, "docx"):
            if isinstance(item, Sample):
                item.origin = str(path)
                iou = token_iou(markdown_words(pages[item.page]), page_words(page_texts[item.page]))
                item.meta["md_token_iou"] = round(iou, 3)
                if iou >= float(cfg.md_min_iou):
                    item.md = pages[item.page]
                else:
                    yield Skip(
                        "md_consistency", pages=0, detail=f"{path} page {item.page}: token IoU {iou:.2f}"
                    )
            yield item
