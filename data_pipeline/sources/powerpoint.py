"""`powerpoint`: .pptx/.ppt/.odp → PDF with LibreOffice → the `pdf` path (layout samples). With
`markdown=true`, .pptx slides also get markdown from their structure (titles → headings, bullets → lists,
tables → tables) through python-pptx; hidden slides are skipped, as LibreOffice's export skips them."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.render.office import convert_to_pdf, external_references
from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.pdf import pdf_samples

EXTENSIONS = (".pptx", ".ppt", ".odp")
REQUIRED_TOOLS = ("soffice",)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def slide_markdown(slide) -> str:
    """Markdown of one slide: the title as `#`, other text frames as paragraphs or nested lists, tables."""
    parts: list[str] = []
    title = slide.shapes.title
    if title is not None and title.text_frame.text.strip():
        parts.append("# " + " ".join(title.text_frame.text.split()))
    for shape in slide.shapes:
        if title is not None and shape.shape_id == title.shape_id:
            continue
        if shape.has_text_frame:
            paras = [
                (p.level, " ".join("".join(r.text for r in p.runs).split()))
                for p in shape.text_frame.paragraphs
            ]
            paras = [(lvl, t) for lvl, t in paras if t]
            if len(paras) == 1 and paras[0][0] == 0:
                parts.append(paras[0][1])
            elif paras:
                parts.append("\n".join(f"{'  ' * lvl}- {t}" for lvl, t in paras))
        elif getattr(shape, "has_table", False) and shape.has_table:
            rows = [[_cell(c.text) for c in row.cells] for row in shape.table.rows]
            if rows:
                lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
                lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
                parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _markdown_pages(path: Path) -> list[str] | None:
    if path.suffix.lower() != ".pptx":
        return None
    from pptx import Presentation

    slides = [s for s in Presentation(str(path)).slides if s._element.get("show") != "0"]
    return [slide_markdown(s) for s in slides]


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    for link in external_references(path):  # refused by the sandbox; counted here
        yield Skip("blocked_external_link", pages=0, detail=f"{path}: {link}")
    md_pages = _markdown_pages(path) if cfg.markdown else None
    with tempfile.TemporaryDirectory(prefix="literate-ppt-") as tmp:
        pdf = convert_to_pdf(path, Path(tmp), float(cfg.convert_timeout))
        for item in pdf_samples(pdf, doc_id, cfg, "powerpoint"):
            if isinstance(item, Sample):
                item.origin = str(path)
                if md_pages is not None and item.page < len(md_pages):
                    item.md = md_pages[item.page]
            yield item
