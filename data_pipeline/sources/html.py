"""`html` (markdown, the paper's HTML source): the same render as `web`; each tile's sample is the markdown
of what it shows (headings, lists, code blocks, tables, links' text; navigation, scripts, styles, hidden
elements and footers left out), kept when it agrees with the tile's visible text."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.web import browser_samples

EXTENSIONS = (".html", ".htm", ".xhtml")
REQUIRED_TOOLS = ("chromium",)


def build(path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from browser_samples(path, doc_id, cfg, "html", layout=False, markdown=True)
