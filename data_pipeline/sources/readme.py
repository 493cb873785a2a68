"""`readme`: markdown files → HTML with pandoc (GitHub-flavoured, a GitHub-like stylesheet) → Chromium →
tiles; each tile's label is the markdown of what it shows, normalised by the round trip through HTML."""

from __future__ import annotations

import html
import tempfile
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.render.pandoc import pandoc_html
from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.web import browser_samples

EXTENSIONS = (".md", ".markdown")
REQUIRED_TOOLS = ("chromium", "pandoc")
STYLESHEET = Path(__file__).resolve().parents[1] / "render" / "github.css"


def readme_html(path: Path, timeout: float) -> str:
    """A standalone HTML page of the README; relative links and images resolve against its folder."""
    body = pandoc_html(path, "gfm", timeout)
    base = path.resolve().parent.as_uri() + "/"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><base href="{html.escape(base)}">'
        f"<title>{html.escape(path.name)}</title><style>{STYLESHEET.read_text()}</style></head>"
        f"<body>{body}</body></html>"
    )


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    page = readme_html(path, float(cfg.convert_timeout))
    with tempfile.TemporaryDirectory(prefix="literate-readme-") as tmp:
        rendered = Path(tmp) / "readme.html"
        rendered.write_text(page, encoding="utf-8")
        yield from browser_samples(
            rendered, doc_id, cfg, "readme", layout=False, markdown=True, origin=str(path)
        )
