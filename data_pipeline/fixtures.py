"""Shards in the exact layout of public page corpora, made from this project's own documents, for the tests and
benchmarks of the importers (nothing is downloaded): `pixparse_tar` writes a webdataset tar as `pixparse/idl-wds`
and `pixparse/pdfa-eng-wds` publish them (`<key>.pdf` + `<key>.json`, lines with boxes as fractions of the
page; see `data_pipeline/sources/page_corpus.py`)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from data_pipeline.render.pdf import open_pdf, page_lines, render_page


def pdf_page_lines(pdf: bytes, dpi: float = 72.0) -> list[list[dict]]:
    """Each page's text-layer lines as the corpora store them: `{"text", "bbox": [left, top, width, height]}`,
    fractions of the page as it is drawn (rotation applied)."""
    doc = open_pdf("fixture.pdf", 10_000, data=pdf)
    pages = []
    try:
        for i in range(doc.page_count):
            image, dlist, zoom = render_page(doc.load_page(i), dpi, 10**6, 10**10)
            height, width = image.shape[:2]
            pages.append(
                [
                    {
                        "text": ln["text"],
                        "bbox": [
                            ln["bbox"][0] / width,
                            ln["bbox"][1] / height,
                            (ln["bbox"][2] - ln["bbox"][0]) / width,
                            (ln["bbox"][3] - ln["bbox"][1]) / height,
                        ],
                    }
                    for ln in page_lines(dlist, zoom)
                ]
            )
    finally:
        doc.close()
    return pages


def corpus_json(pages: list[list[dict]]) -> dict:
    """The corpus JSON of a document from its pages' lines (words split on spaces, their boxes the line's)."""
    out = []
    for lines in pages:
        words, slices = {"text": [], "bbox": [], "score": [], "line_pos": []}, []
        for n, line in enumerate(lines):
            start = len(words["text"])
            for k, word in enumerate(line["text"].split()):
                words["text"].append(word)
                words["bbox"].append(line["bbox"])
                words["score"].append(1.0)
                words["line_pos"].append([n, k])
            slices.append([start, len(words["text"])])
        out.append(
            {
                "images_bbox": [],
                "images_bbox_no_text_overlap": [],
                "lines": {
                    "text": [ln["text"] for ln in lines],
                    "bbox": [ln["bbox"] for ln in lines],
                    "score": [1.0] * len(lines),
                    "word_slice": slices,
                },
                "words": words,
            }
        )
    return {"pages": out}


def write_tar(path: str | Path, members: dict[str, bytes]) -> Path:
    """A tar of `{member name: bytes}` in the order given (mtime 0, so the bytes repeat)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def pixparse_tar(path: str | Path, documents: dict[str, tuple[bytes | None, dict | bytes | None]]) -> Path:
    """A tar of `{key: (pdf bytes, corpus JSON)}` in key order; None leaves that member out, bytes are written as
    they are (a broken JSON)."""
    members = {}
    for key in sorted(documents):
        pdf, label = documents[key]
        for ext, data in (("json", label), ("pdf", pdf)):
            if data is not None:
                members[f"{key}.{ext}"] = data if isinstance(data, bytes) else json.dumps(data).encode()
    return write_tar(path, members)
