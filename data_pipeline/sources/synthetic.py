"""`synthetic` (the paper's v2 warm-up): text snippets (one per line of the input text files) drawn in
random installed fonts, sizes, colours and backgrounds → layout samples with exact boxes. Deterministic:
a page's look depends only on its document id and page number."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.schema import Sample, Skip
from data_pipeline.synthetic import render_snippets_page

EXTENSIONS = (".txt",)


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    snippets = [
        s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()
    ]
    per_page = int(cfg.snippets_per_page)
    for page, start in enumerate(range(0, len(snippets), per_page)):
        if page >= int(cfg.max_pages_per_doc):
            yield Skip("too_many_pages", pages=(len(snippets) - start + per_page - 1) // per_page)
            return
        seed = int.from_bytes(hashlib.sha256(f"{doc_id}/{page}".encode()).digest()[:8], "little")
        image, lines, fonts = render_snippets_page(snippets[start : start + per_page], seed)
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
