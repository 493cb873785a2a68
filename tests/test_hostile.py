"""Hostile documents (tests/hostile.py) built with the real renderers: a document's time and memory limits
hold whatever it is doing, and its neighbours are built."""

from __future__ import annotations

import time

from data_pipeline.demo_corpus import make_pdf
from tests.hostile import ALLOCATING_PAGE, nested_forms_pdf
from tests.test_build_pdf import build, read_shards, summary

ORDINARY = (
    "The committee met on Tuesday to review the budget for the coming year. Most of the discussion was about "
    "the new library building, which is expected to open in the spring, and about the cost of keeping the "
    "old one running until then."
)


def test_a_document_past_its_time_limit_is_stopped_in_native_code(tmp_path):
    """MuPDF drawing 10**7 (and 10**9) nested rectangles cannot be interrupted from Python; the worker
    kills the document's process and goes on with the shard."""
    src = tmp_path / "in"
    make_pdf(src / "a.pdf", seed=1)
    nested_forms_pdf(src / "b_nested7.pdf", levels=7)  # about a minute to draw
    nested_forms_pdf(src / "c_nested9.pdf", levels=9)  # hours
    make_pdf(src / "d.pdf", seed=2)
    out = tmp_path / "out"
    start = time.monotonic()
    r = build("source=pdf", f"input={src}", f"output={out}", "workers=1", "source.doc_timeout=3", check=False)
    elapsed = time.monotonic() - start
    s = summary(r)
    assert s["errors"] == {"doc_timeout": 2} and not s["tasks_failed"], s
    assert elapsed < 40, f"the build took {elapsed:.0f} s: the limit did not stop the drawing"
    docs = {key.split("/")[1] for key in read_shards(out)}
    assert docs == {"a", "d"}


def test_a_document_past_its_memory_limit_is_stopped_and_counted(tmp_path):
    """A page that allocates without end is killed at `worker_memory_mb`, not by the kernel's OOM killer
    with its neighbours; the next document gets a new process and is built."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_hungry.html").write_text(ALLOCATING_PAGE)
    (src / "b_ok.html").write_text(f"<!doctype html><p>{ORDINARY}</p>")
    out = tmp_path / "out"
    r = build("source=web", f"input={src}", f"output={out}", "workers=1", "worker_memory_mb=700", check=False)
    s = summary(r)
    assert s["errors"].get("out_of_memory") == 1 and not s["tasks_failed"], s
    assert [key.split("/")[1] for key in read_shards(out)] == ["b_ok"]
