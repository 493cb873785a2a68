"""A build's documents: what its input names (`list_inputs`: a folder, a glob, a list file of paths or URLs,
an object-store prefix, one file), and one document built into samples (`build_document`, which the runner's
child process calls: a document in object storage is fetched into a folder of its own first, and a builder's
failure becomes a counted `Skip`, never an exception).
"""

from __future__ import annotations

import glob
import os
import posixpath
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline import storage
from data_pipeline.schema import DocumentError, Sample, Skip

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Document:
    path: str
    doc_id: str


def list_inputs(spec: str, extensions: tuple[str, ...]) -> list[Document]:
    """A folder (searched recursively for `extensions`), a glob, a list file (one path or URL per line, `s3://`
    and `gs://` objects included), an object-store prefix, or one file → documents sorted by path, each with
    an id relative to the input's root."""
    if storage.is_object_store(spec):  # a prefix in object storage: its objects, ids relative to it
        urls = storage.list_objects(spec, extensions)
        if not urls:
            raise ValueError(f"input {spec!r}: no objects found (extensions {', '.join(extensions)})")
        prefix = spec.rstrip("/") + "/"
        return [Document(u, os.path.splitext(u[len(prefix) :])[0]) for u in urls]
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(tuple(extensions)))
        root = p
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES and p.suffix.lower() not in extensions:
        entries = [
            line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        urls = [e for e in entries if is_url(e)]
        if urls:  # a URL list: one document per URL, its id the URL without the scheme
            return [Document(u, u.split("://", 1)[1]) for u in sorted(set(urls))]
        objects = sorted({e for e in entries if storage.is_object_store(e)})
        if objects:  # objects in a bucket: ids relative to their common folder, as for a list of paths
            keys = [u.split("://", 1)[1] for u in objects]
            root = posixpath.commonpath([posixpath.dirname(k) for k in keys])
            return [
                Document(u, posixpath.splitext(posixpath.relpath(k, root))[0])
                for u, k in zip(objects, keys, strict=True)
            ]
        files = sorted(Path(e) for e in entries)
        root = Path(os.path.commonpath([str(f.parent.resolve()) for f in files])) if files else p.parent
        files = [f.resolve() for f in files]
    elif p.is_file():
        files, root = [p], p.parent
    else:
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        prefix = spec.split("*")[0].split("?")[0].split("[")[0]
        root = Path(prefix) if prefix.endswith("/") else Path(prefix).parent
    if not files:
        raise ValueError(f"input {spec!r}: no files found (extensions {', '.join(extensions)})")
    docs = []
    for f in files:
        try:
            rel = f.relative_to(root)
        except ValueError:
            rel = Path(str(f).lstrip("/"))
        docs.append(Document(str(f), str(rel.with_suffix(""))))
    return docs


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def build_document(doc: Document, source, cfg) -> Iterator[Sample | Skip]:
    """The source's builder with whole-document failures turned into counted `Skip`s. A document in object
    storage is fetched first, alone in a folder of its own; its samples name its URL as their origin."""
    if storage.is_object_store(doc.path):
        with tempfile.TemporaryDirectory(prefix="literate-doc-") as folder:
            try:
                local = storage.fetch(doc.path, folder)
            except (OSError, ValueError) as e:
                yield Skip("fetch_failed", detail=f"{doc.path}: {e}", error=True)
                return
            for item in build_document(Document(local, doc.doc_id), source, cfg):
                if isinstance(item, Sample):
                    item.origin = doc.path
                yield item
        return
    try:
        yield from source.build(doc.path if is_url(doc.path) else Path(doc.path), doc.doc_id, cfg.source)
    except DocumentError as e:
        yield Skip(e.reason, pages=e.pages, detail=e.detail, error=e.reason not in POLICY_REASONS)
    except MemoryError:
        yield Skip("out_of_memory", error=True)
    except Exception as e:  # a builder bug or an unforeseen file: counted with its type, never fatal
        yield Skip(f"exception_{type(e).__name__}", detail=traceback.format_exc(limit=3)[-400:], error=True)


# Reasons that are decisions about the data, not failures: they do not count against the error cap.
POLICY_REASONS = {"too_many_pages", "no_pages"}
