"""One module per source. Each exposes `EXTENSIONS` and `build(path, doc_id, cfg) -> Iterator[Sample | Skip]`,
a pure function of one input document (it may raise `DocumentError` for the whole document)."""

from __future__ import annotations

import importlib
from types import ModuleType

SOURCES = (
    "pdf",
    "scan",
    "powerpoint",
    "arxiv",
    "web",
    "html",
    "readme",
    "docx",
    "synthetic",
    "tasks",
    "idl_wds",
    "pdfa_wds",
)


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    return importlib.import_module(f"data_pipeline.sources.{name}")
