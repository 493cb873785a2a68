"""Documents written to hurt the build machine: endless pages, runaway memory, reads of local files and
requests to private addresses. The tests build them with the real renderers and check that nothing leaks
and every attempt is counted."""

from __future__ import annotations

from pathlib import Path

import pymupdf


def nested_forms_pdf(path: Path, levels: int, fan: int = 10) -> Path:
    """A one-page PDF whose content draws a form XObject that draws the form below it `fan` times,
    `levels` deep, above one tiny rectangle: fan**levels rectangles (10**7 take about a minute to render,
    each further level ten times that). A few bytes of file; MuPDF cannot be interrupted while drawing."""
    doc = pymupdf.open()
    page = doc.new_page(width=200, height=200)
    page.insert_text((20, 100), "A page of nested forms", fontsize=12)
    below = doc.get_new_xref()
    doc.update_object(below, "<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] >>")
    doc.update_stream(below, b"0 0 0 rg 1 1 0.5 0.5 re f")
    for _ in range(levels):
        form = doc.get_new_xref()
        doc.update_object(
            form,
            f"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] /Resources << /XObject << /X {below} 0 R >> >> >>",
        )
        doc.update_stream(form, b" ".join(b"q 1 0 0 1 %d 0 cm /X Do Q" % (i % 3) for i in range(fan)))
        below = form
    contents = doc.get_new_xref()
    doc.update_object(contents, "<<>>")
    doc.update_stream(contents, b"/T Do")
    kind, value = doc.xref_get_key(page.xref, "Resources")
    resources = int(value.split()[0]) if kind == "xref" else page.xref
    doc.xref_set_key(resources, "XObject/T" if kind == "xref" else "Resources/XObject/T", f"{below} 0 R")
    doc.xref_set_key(page.xref, "Contents", f"[{page.get_contents()[0]} 0 R {contents} 0 R]")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


# A page whose script allocates without end, outside V8's heap limit (typed arrays), before it loads.
ALLOCATING_PAGE = """<!doctype html><html><body><p>This page never stops asking for memory.</p>
<script>const held = []; for (;;) held.push(new Uint8Array(16 << 20).fill(1));</script></body></html>"""
