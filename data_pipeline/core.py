"""Inputs → deterministic tasks → one shard per task. `run_task` is the function every executor runs.

A task is a fixed slice of the sorted input list, so task i always means the same documents and writes
shard i; a rerun skips tasks whose shard JSON exists and rebuilds the rest.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline import storage
from data_pipeline.filters import VOTE_CHARS, SampleFilter, page_language
from data_pipeline.runner import DocTimeout, worker_runner
from data_pipeline.schema import DocumentError, Sample, Skip, compact_json
from data_pipeline.writer import ShardStats, ShardWriter, is_finished, read_stats

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Document:
    path: str
    doc_id: str


@dataclass(frozen=True)
class Task:
    index: int
    docs: tuple[Document, ...]


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
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        root = p
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES and p.suffix.lower() not in extensions:
        entries = [
            line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        urls = [e for e in entries if _is_url(e)]
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


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def plan_tasks(docs: list[Document], docs_per_shard: int) -> list[Task]:
    return [
        Task(i // docs_per_shard, tuple(docs[i : i + docs_per_shard]))
        for i in range(0, len(docs), docs_per_shard)
    ]


def _count(stats: ShardStats, skip: Skip, path: str) -> None:
    # pages=0: a part of a page was dropped (its markdown, say); the reason is counted, the page is not.
    (stats.errors if skip.error else stats.skips)[skip.reason] += max(skip.pages, 1)
    stats.pages += skip.pages
    if skip.error and len(stats.error_examples) < 20:
        stats.error_examples.append(f"{path}: {skip.reason}: {skip.detail}"[:500])


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
        yield from source.build(doc.path if _is_url(doc.path) else Path(doc.path), doc.doc_id, cfg.source)
    except DocumentError as e:
        yield Skip(e.reason, pages=e.pages, detail=e.detail, error=e.reason not in POLICY_REASONS)
    except MemoryError:
        yield Skip("out_of_memory", error=True)
    except Exception as e:  # a builder bug or an unforeseen file: counted with its type, never fatal
        yield Skip(f"exception_{type(e).__name__}", detail=traceback.format_exc(limit=3)[-400:], error=True)


# Reasons that are decisions about the data, not failures: they do not count against the error cap.
POLICY_REASONS = {"too_many_pages", "no_pages"}


class PendingPages:
    """A document's encoded samples, held until its language is decided (`lang_scope: document`), then
    written with the document's language in their `meta.json`, or counted as `language` skips. The
    document is decided at its end, once its votes have settled (`DocumentLanguage.settled`), or when the
    held pages outgrow `limit` bytes; its later pages follow the decision."""

    def __init__(self, keep: SampleFilter, limit: int):
        self.keep, self.limit = keep, limit
        self.votes = keep.document()
        self.held: list[tuple[dict, dict]] = []  # (tar members, meta)
        self.bytes = 0
        self.decided: tuple[str, float] | None = None

    def add(self, members: dict, meta: dict, text: str, writer: ShardWriter, stats: ShardStats) -> None:
        """One page: its encoded tar members, its `meta.json` contents and its text (for the vote)."""
        if self.decided is None:
            self.votes.add(page_language(text, VOTE_CHARS))
            self.held.append((members, meta))
            self.bytes += sum(len(v) for k, v in members.items() if k != "__key__")
            if self.bytes > self.limit or self.votes.settled():
                self.flush(writer, stats)
        elif self.keep.accepts(*self.decided):
            writer.write(with_language(members, meta, *self.decided))
        else:
            stats.skips["language"] += 1

    def flush(self, writer: ShardWriter, stats: ShardStats) -> None:
        """Decide the document's language (if not yet) and write or count the held pages."""
        if self.decided is None:
            self.decided = self.votes.decide()
        lang, score = self.decided
        held, self.held, self.bytes = self.held, [], 0
        if not self.keep.accepts(lang, score):
            stats.skips["language"] += len(held)
            return
        for members, meta in held:
            writer.write(with_language(members, meta, lang, score))


def with_language(members: dict, meta: dict, lang: str, score: float) -> dict:
    """The members with the language written into their `meta.json`."""
    meta["lang"], meta["lang_score"] = lang, round(score, 3)
    members["meta.json"] = compact_json(meta)
    return members


def run_task(task: Task, cfg, progress=None) -> dict:
    """Build shard `task.index` unless finished; returns its stats as a dict (with `"skipped": True` when
    the shard was already there). `progress`, when given, is a queue receiving per-document counts."""
    out = str(cfg.output)
    if is_finished(out, task.index):
        stats = read_stats(out, task.index).to_dict()
        if progress is not None:
            progress.put((len(task.docs), stats["pages"], stats["samples"], sum(stats["errors"].values())))
        return {**stats, "skipped": True}
    keep = SampleFilter(cfg.filters)
    hold_limit = int(float(cfg.filters.get("lang_hold_mb", 256)) * 2**20)
    runner = worker_runner()
    with ShardWriter(out, task.index) as writer:
        stats = writer.stats
        for doc in task.docs:
            before = (stats.pages, stats.samples, sum(stats.errors.values()))
            pending = PendingPages(keep, hold_limit) if keep.per_document else None
            try:
                for kind, *item in runner.build(doc, cfg):
                    if kind == "skip":
                        _count(stats, item[0], doc.path)
                        continue
                    members, meta, text, reason = item
                    stats.pages += 1
                    if reason is not None:
                        stats.skips[reason] += 1
                    elif pending is not None:
                        pending.add(members, meta, text, writer, stats)
                    else:
                        lang = page_language(text)
                        if keep.accepts(lang.lang, lang.score):
                            writer.write(with_language(members, meta, lang.lang, lang.score))
                        else:
                            stats.skips["language"] += 1
            except DocTimeout as e:
                _count(stats, Skip("doc_timeout", detail=str(e), error=True), doc.path)
            if pending is not None:  # the pages built before a time-out are kept too
                pending.flush(writer, stats)
            stats.docs += 1
            if progress is not None:
                now = (stats.pages, stats.samples, sum(stats.errors.values()))
                progress.put((1, *(a - b for a, b in zip(now, before, strict=True))))
    return stats.to_dict()


def write_manifest(out: str | Path, source: str, n_tasks: int) -> dict:
    """`manifest.json`: every finished shard with its sample count (wids shard-index format) and totals."""
    shards, totals = [], ShardStats(shard="total")
    for i in range(n_tasks):
        if not is_finished(out, i):
            continue
        s = read_stats(out, i)
        shards.append({"url": s.shard, "nsamples": s.samples})
        for k in ("docs", "pages", "samples", "bytes"):
            setattr(totals, k, getattr(totals, k) + getattr(s, k))
        totals.seconds += s.seconds
        totals.errors.update(s.errors)
        totals.skips.update(s.skips)
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": source,
        "source": source,
        "shardlist": shards,
        "tasks": n_tasks,
        "finished": len(shards),
        "totals": {k: v for k, v in totals.to_dict().items() if k not in ("shard", "error_examples")},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if storage.output_exists(out, "dedup/drop.json"):
        manifest["drop_list"] = "dedup/drop.json"
        manifest["dropped"] = json.loads(storage.read_text(out, "dedup/drop.json"))["count"]
    storage.write_text(out, "manifest.json", json.dumps(manifest, indent=1))
    return manifest
