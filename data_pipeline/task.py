"""A build's tasks: documents → deterministic tasks → one shard per task. `run_task` is the function every
executor runs.

A task is a fixed slice of the sorted input list, so task i always means the same documents and writes
shard i; a rerun skips tasks whose shard JSON exists and rebuilds the rest. Each document is built in the
worker's runner (`data_pipeline/runner.py`, a sandboxed child with deadlines); its pages are filtered by
language (per page, or held until the document's language is decided) and written.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.documents import Document
from data_pipeline.filters import VOTE_CHARS, SampleFilter, page_language
from data_pipeline.runner import DocTimeout, worker_runner
from data_pipeline.schema import Skip, compact_json
from data_pipeline.writer import ShardStats, ShardWriter, is_finished, read_stats


@dataclass(frozen=True)
class Task:
    index: int
    docs: tuple[Document, ...]


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
