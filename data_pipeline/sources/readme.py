"""`readme`: markdown files → HTML with pandoc (GitHub-flavoured, a GitHub-like stylesheet) → Chromium →
tiles; each tile's label is the markdown of what it shows, normalised by the round trip through HTML."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.render.pandoc import pandoc_html
from data_pipeline.render.routing import LocalDocument
from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.web import browser_samples

EXTENSIONS = (".md", ".markdown")
REQUIRED_TOOLS = ("chromium", "pandoc")
STYLESHEET = Path(__file__).resolve().parents[1] / "render" / "github.css"


def readme_html(path: Path, timeout: float) -> str:
    """A standalone HTML page of the README (the stylesheet inlined)."""
    body = pandoc_html(path, "gfm", timeout)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(path.name)}</title><style>{STYLESHEET.read_text()}</style></head>"
        f"<body>{body}</body></html>"
    )


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    page = readme_html(path, float(cfg.convert_timeout))
    # Served as if it were a file beside the README: relative links and images resolve in its folder, the
    # only one it may read.
    folder = path.resolve().parent
    document = LocalDocument(folder, folder / f"{path.name}.html", html=page)
    yield from browser_samples(document, doc_id, cfg, "readme", layout=False, markdown=True, origin=str(path))
