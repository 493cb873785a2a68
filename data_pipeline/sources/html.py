"""`html` (markdown, the paper's HTML source): the same render as `web`; each tile's sample is the markdown
of what it shows (headings, lists, code blocks, tables, links' text; navigation, scripts, styles, hidden
elements and footers left out), kept when it agrees with the tile's visible text. Takes what `web` takes, WARC
archives included."""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.web import EXTENSIONS, page_samples

__all__ = ["EXTENSIONS", "build"]
REQUIRED_TOOLS = ("chromium",)


def build(path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from page_samples(path, doc_id, cfg, "html", layout=False, markdown=True)
