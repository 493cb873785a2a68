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


# Words of the secret: none of them is English, so a hit in OCR or a label is a leak, not a coincidence.
SECRET_WORDS = ("Zorbulax", "Quendrith", "Vashmoor", "Plinketta")
SECRET = " ".join(SECRET_WORDS) + "\n"


def secret_beside(input_dir: Path) -> Path:
    """A secret file next to the input folder (inside no document's folder)."""
    path = input_dir.parent / "secret.txt"
    path.write_text(SECRET * 20)
    return path


class Canary:
    """An HTTP server on loopback that logs every request it gets (a stand-in for a cloud metadata service
    or an intranet host): each answer is the secret, so a request that reaches it could leak it."""

    def __init__(self):
        import http.server
        import threading

        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                body = SECRET.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reaching_page(
    secret: Path, canary: int, title: str = "A page that reaches for what is not its own"
) -> str:
    """HTML that tries every way a page has to show a local file or to reach a private address."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="http://127.0.0.1:{canary}/style.css"></head><body>
<h1>{title}</h1>
<p>The committee met on Tuesday to review the budget for the coming year. Most of the discussion was
about the new library building, which is expected to open in the spring.</p>
<iframe src="{secret.as_uri()}" width="600" height="80"></iframe>
<object data="file:///etc/passwd" width="600" height="80"></object>
<embed src="{secret.as_uri()}" width="600" height="80">
<img src="outside.png" alt="">
<iframe src="outside.txt" width="600" height="80"></iframe>
<iframe src="http://127.0.0.1:{canary}/iframe" width="600" height="80"></iframe>
<img src="http://localhost:{canary}/image.png" alt="">
<svg width="200" height="50"><image href="http://127.0.0.1:{canary}/svg.png" width="200" height="50"/></svg>
<div style="background: url(http://127.0.0.1:{canary}/css.png); width: 100px; height: 20px"></div>
<script>
  fetch("http://127.0.0.1:{canary}/fetch").catch(() => {{}});
  try {{ new WebSocket("ws://127.0.0.1:{canary}/ws"); }} catch (e) {{}}
  navigator.sendBeacon && navigator.sendBeacon("http://127.0.0.1:{canary}/beacon", "x");
</script>
</body></html>"""


def link_outside(folder: Path, secret: Path) -> None:
    """Symbolic links in the document's folder that point at the secret."""
    (folder / "outside.png").symlink_to(secret)
    (folder / "outside.txt").symlink_to(secret)


ORDINARY = (
    "The committee met on Tuesday to review the budget for the coming year. Most of the discussion was about "
    "the new library building, which is expected to open in the spring, and about the cost of keeping the "
    "old one running until then."
)


def linking_docx(path: Path, secret: Path, canary: int) -> Path:
    """A DOCX whose fields load the secret (INCLUDETEXT) and pictures from the canary and from a file
    (INCLUDEPICTURE), and whose package links an image outside itself."""
    from docx import Document
    from docx.opc.constants import RELATIONSHIP_TYPE as RT
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    doc = Document()
    doc.add_heading("Minutes of the meeting", level=1)
    for _ in range(3):
        doc.add_paragraph(ORDINARY)
    for instr in (
        f'INCLUDETEXT "{secret}"',
        f'INCLUDEPICTURE "http://127.0.0.1:{canary}/picture.png" \\d',
        f'INCLUDEPICTURE "{secret.with_suffix(".png")}" \\d',
    ):
        field = f"<w:fldSimple {nsdecls('w')} w:instr='{instr}'><w:r><w:t>field</w:t></w:r></w:fldSimple>"
        doc.add_paragraph()._p.append(parse_xml(field))
    doc.part.relate_to(f"http://127.0.0.1:{canary}/linked.png", RT.IMAGE, is_external=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


def reading_latex(folder: Path, secret: Path) -> Path:
    """A LaTeX source (`folder/main.tex`) that inputs the secret, reads /etc/passwd and inputs a file from
    outside its folder, and its PDF as its author would send it (without what those lines read)."""
    folder.mkdir(parents=True, exist_ok=True)
    hostile = [
        r"\input{" + str(secret) + "}",
        r"\openin5=/etc/passwd \read5 to \x \x",
        r"\IfFileExists{../secret.txt}{\input{../secret.txt}}{}",
    ]
    lines = [
        r"\documentclass{article}",
        r"\begin{document}",
        r"\section{Introduction}",
        ORDINARY,
        "",
        ORDINARY,
        "",
        *hostile,
        r"\end{document}",
    ]
    (folder / "main.tex").write_text("\n".join(lines) + "\n")
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_textbox(
        pymupdf.Rect(72, 72, 540, 770), f"1 Introduction\n{ORDINARY}\n{ORDINARY}", fontsize=11
    )
    pdf.save(folder.with_suffix(".pdf"))
    return folder.with_suffix(".pdf")


def linking_pptx(path: Path, canary: int) -> Path:
    """A one-slide PPTX whose package links a picture on the canary."""
    from pptx import Presentation
    from pptx.opc.constants import RELATIONSHIP_TYPE as RT
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Minutes of the meeting"
    slide.shapes.add_textbox(Inches(1), Inches(2), Inches(8), Inches(3)).text_frame.text = ORDINARY
    slide.part.relate_to(f"http://127.0.0.1:{canary}/linked.png", RT.IMAGE, is_external=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    deck.save(path)
    return path
