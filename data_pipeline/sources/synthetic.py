"""`synthetic` (the paper's v2 warm-up): text snippets (one per line of the input text files) drawn in
random fonts (`fonts`: a folder of them, default the system's), sizes, colours and backgrounds → layout samples
with exact boxes. Deterministic: a page's look depends only on its document id, its page number and the fonts
(each page's `meta.json` names the font of each line); ship a `fonts` folder with a cluster job so that every
node draws alike."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.schema import Sample, Skip
from data_pipeline.synthetic import FONT_ROOT, installed_fonts, render_snippets_page

EXTENSIONS = (".txt",)


def _font_root(cfg) -> str:
    return str(cfg.get("fonts") or FONT_ROOT)


def check_config(cfg) -> None:
    """A `fonts` folder given must hold fonts (without one, a machine with none draws in Pillow's own)."""
    if cfg.get("fonts") and not installed_fonts(_font_root(cfg)):
        raise ValueError(
            f"source.fonts={_font_root(cfg)}: no .ttf or .otf font there that draws Latin letters"
        )


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    snippets = [
        s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()
    ]
    per_page = int(cfg.snippets_per_page)
    choices = installed_fonts(_font_root(cfg))
    for page, start in enumerate(range(0, len(snippets), per_page)):
        if page >= int(cfg.max_pages_per_doc):
            yield Skip("too_many_pages", pages=(len(snippets) - start + per_page - 1) // per_page)
            return
        seed = int.from_bytes(hashlib.sha256(f"{doc_id}/{page}".encode()).digest()[:8], "little")
        image, lines, fonts = render_snippets_page(snippets[start : start + per_page], seed, fonts=choices)
        if not lines:
            yield Skip("nothing_drawn", detail=f"{path} page {page}")
            continue
        yield Sample(
            "synthetic",
            doc_id,
            page,
            image,
            str(path),
            lines=lines,
            meta={"render_seed": seed, "fonts": fonts},
        )
