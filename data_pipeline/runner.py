"""Documents are built in a child process of the worker, the runner, so that a document's limits hold
whatever it is doing: a page deep in MuPDF's C code, a converter that never returns, a renderer that
allocates without end. The worker sends the runner one document at a time and reads back its pages,
filtered and encoded; it gives the document `source.doc_timeout` seconds and the runner's process tree
`worker_memory_mb`, and kills the tree when either is exceeded (counted as `doc_timeout` or
`out_of_memory`, the pages already read are kept). A killed or crashed runner is replaced for the next
document; the shard goes on. The worker writes the shard, so nothing half-written is ever lost with a
runner.

Kept across documents and tasks in a worker (its imports, a shared Chromium), the runner costs a pipe
round trip per page: the encoded members, which the worker would have written anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator

from data_pipeline.documents import build_document
from data_pipeline.filters import LANG_ID_CHARS, SampleFilter
from data_pipeline.schema import Skip, encode_sample, sample_meta

# The text a page's language is read from: `prose_text` reads at most 8 characters per one it keeps.
TEXT_CHARS = 8 * LANG_ID_CHARS
# How often the worker reads the runner's memory while it waits (seconds).
MEMORY_POLL = 0.5
PR_SET_PDEATHSIG = 1


class DocTimeout(Exception):
    pass


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so no worker or runner outlives
    the build that started it. Elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def memory_limit_bytes(cfg) -> int:
    """`worker_memory_mb` in bytes: `auto` is 80% of the machine's memory shared by its workers."""
    value = cfg.get("worker_memory_mb", "auto")
    if value in (None, "auto"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        workers = int(cfg.get("workers") or os.cpu_count() or 1)
        return int(0.8 * total / max(workers, 1))
    return int(float(value) * 2**20)


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Chromium and converters included, whatever group they joined)."""
    children, tree, i = _children(), [pid], 0
    while i < len(tree):
        tree += children.get(tree[i], [])
        i += 1
    return tree


def tree_memory(pids: list[int]) -> int:
    """Bytes of memory the processes hold: their proportional set sizes (shared pages split between the
    processes that share them, so Chromium's processes are not counted many times over)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class DocumentRunner:
    """The worker's side: starts the runner, sends it documents, enforces each document's limits."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.tmp: str | None = None
        self.cfg_sent = None

    def _start(self, cfg) -> None:
        ctx = mp.get_context("spawn")
        ours, theirs = ctx.Pipe()
        self.tmp = tempfile.mkdtemp(prefix="literate-runner-")
        # daemon: a worker process ends without waiting for it (multiprocessing joins other children)
        self.proc = ctx.Process(target=_serve, args=(theirs, self.tmp), name="literate-runner", daemon=True)
        self.proc.start()
        theirs.close()
        self.conn = ours
        self.cfg_sent = None

    def build(self, doc, cfg) -> Iterator[tuple]:
        """The document's items, as the runner sends them: `("skip", Skip)` or `("page", members, meta,
        text, reason)` (members None when `reason`, a quality filter's, drops the page). Raises
        `DocTimeout` after killing the runner when the document outlives `source.doc_timeout`."""
        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self._start(cfg)
        if self.cfg_sent is not cfg:
            self.conn.send(("config", cfg))
            self.cfg_sent = cfg
        self.conn.send(("doc", doc))
        limit = float(cfg.source.doc_timeout)
        deadline = time.monotonic() + limit if limit > 0 else float("inf")
        memory = memory_limit_bytes(cfg)
        next_poll = time.monotonic() + MEMORY_POLL
        while True:
            now = time.monotonic()
            wait = max(0.0, min(deadline, next_poll) - now)
            if self.conn.poll(wait):
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    yield ("skip", self._crashed())
                    return
                if msg[0] == "end":
                    return
                if msg[0] == "ready":
                    # start-up is not the document's time
                    deadline = time.monotonic() + limit if limit > 0 else deadline
                    continue
                yield msg
                continue
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise DocTimeout(f"over {limit:g}s")
            if now >= next_poll:
                next_poll = now + MEMORY_POLL
                if not self.proc.is_alive():
                    yield ("skip", self._crashed())
                    return
                used = tree_memory(process_tree(self.proc.pid))
                if used > memory:
                    self.kill()
                    detail = f"{used / 2**20:.0f} MB > worker_memory_mb {memory / 2**20:.0f}"
                    yield ("skip", Skip("out_of_memory", detail=detail, error=True))
                    return

    def _crashed(self) -> Skip:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        self.kill()
        return Skip("runner_crashed", detail=f"the document's process ended with {code}", error=True)

    def kill(self) -> None:
        """Kill the runner and everything it started, and remove its temporary files."""
        if self.proc is not None:
            for pid in reversed(process_tree(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.join(timeout=10)
        self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def stop(self) -> None:
        """End the runner cleanly (it closes its browser), or kill it if it does not end in time."""
        if self.proc is not None and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
            self.proc.join(timeout=30)
        self.kill()


_RUNNER: DocumentRunner | None = None


def worker_runner() -> DocumentRunner:
    """This process's runner, kept across tasks, stopped when the process exits (a finalizer, as worker
    processes end without running `atexit` handlers)."""
    global _RUNNER
    if _RUNNER is None:
        from multiprocessing import util

        _RUNNER = DocumentRunner()
        util.Finalize(_RUNNER, _RUNNER.stop, exitpriority=10)
    return _RUNNER


def _serve(conn, tmp: str) -> None:
    """The runner: builds the documents it is sent, sends back their pages, filtered and encoded."""
    from data_pipeline.render import sandbox
    from data_pipeline.sources import get_source

    die_with_parent()
    # The worker removes this folder with the runner: what a killed converter or browser left goes too.
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the worker decides
    conn.send(("ready",))
    source = keep = img = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        if msg[0] == "config":
            cfg = msg[1]
            source, keep = get_source(cfg.source.name), SampleFilter(cfg.filters)
            sandbox.use(str(cfg.get("sandbox", "bwrap")))
            img = (
                str(cfg.image.format),
                int(cfg.image.quality),
                int(cfg.image.max_side),
                int(cfg.image.png_level),
            )
            continue
        doc = msg[1]
        for item in build_document(doc, source, cfg):
            if isinstance(item, Skip):
                conn.send(("skip", item))
                continue
            reason = keep.quality(item)
            if reason is not None:
                conn.send(("page", None, None, None, reason))
                continue
            conn.send(("page", encode_sample(item, *img), sample_meta(item), item.text()[:TEXT_CHARS], None))
        conn.send(("end",))
