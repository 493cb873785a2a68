"""`pdfa_wds`: Common Crawl's PDFs (the SafeDocs corpus, English pages) as published in webdataset tars
(`pixparse/pdfa-eng-wds`: each PDF with its lines and boxes) → layout samples labelled with the corpus's own
lines (`data_pipeline/sources/page_corpus.py`); `meta.json` says how they agree with the PDF's text layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.page_corpus import EXTENSIONS, corpus_samples

__all__ = ["EXTENSIONS", "build"]


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from corpus_samples(path, doc_id, cfg, "pdfa_wds")
