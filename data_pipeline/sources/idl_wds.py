"""`idl_wds`: the Industry Documents Library scans (the documents IIT-CDIP was drawn from) as published in
webdataset tars (`pixparse/idl-wds`: PDFs of scanned pages with Amazon Textract's lines and boxes) → layout
samples labelled with the corpus's own lines (`data_pipeline/sources/page_corpus.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_pipeline.schema import Sample, Skip
from data_pipeline.sources.page_corpus import EXTENSIONS, corpus_samples

__all__ = ["EXTENSIONS", "build"]


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    yield from corpus_samples(path, doc_id, cfg, "idl_wds")
