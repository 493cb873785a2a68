"""A small, deterministic corpus that exercises every builder: PDFs (columns, a table, a rotated page,
Unicode, a page without text), scan-like TIFFs rendered from known text, PowerPoint decks, LaTeX papers, HTML
pages, READMEs, DOCX reports and text snippets for synthetic pages. Tests and the demo make their documents
here; nothing is downloaded.

    python -m data_pipeline.demo_corpus <dir> [--scale 1.0]     # <dir>/<builder>/{train,val}/
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from data_pipeline.synthetic import WORDS, render_text_page

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _sentences(rng: random.Random, n: int, words: int = 12) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


def make_pdf(path: str | Path, seed: int = 0) -> Path:
    """Four pages: two columns with a table, a page rotated by 90°, Unicode text, and an image-only page."""
    import pymupdf

    rng = random.Random(seed)
    doc = pymupdf.open()
    # 1. title + two columns + a small table
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 80), f"Document {seed}: layout of pages", fontsize=18, fontname="helv")
    for col, x in enumerate((72, 310)):
        rect = pymupdf.Rect(x, 110, x + 213, 560)
        page.insert_textbox(rect, " ".join(_sentences(rng, 8)), fontsize=10, fontname="helv")
        if col:  # a rule between the columns
            page.draw_line((x - 4, 110), (x - 4, 560))
    y = 600
    for r in range(4):
        for c in range(3):
            cell = pymupdf.Rect(72 + c * 150, y + r * 22, 72 + (c + 1) * 150, y + (r + 1) * 22)
            page.draw_rect(cell)
            text = ["Item", "Amount", "Date"][c] if r == 0 else f"{rng.choice(WORDS)} {rng.randint(1, 999)}"
            page.insert_text((cell.x0 + 4, cell.y1 - 7), text, fontsize=10, fontname="helv")
    # 2. a landscape page stored as a rotated portrait one (/Rotate 90): the content is drawn turned, so the
    #    page reads upright only when the rotation is applied
    page = doc.new_page(width=595, height=842)
    page.set_rotation(90)
    for i, s in enumerate(_sentences(rng, 10, 8)):
        at = pymupdf.Point(60, 80 + 40 * i) * page.derotation_matrix  # a point on the displayed page
        page.insert_text(at, s, fontsize=12, fontname="helv", rotate=90)
    # 3. Unicode (accents, Greek, Cyrillic with an embedded DejaVu; CJK with a built-in CJK font)
    page = doc.new_page(width=595, height=842)
    kwargs = {"fontname": "dejavu", "fontfile": DEJAVU} if Path(DEJAVU).exists() else {"fontname": "helv"}
    for i, s in enumerate(
        ["Café, naïve, résumé, Zürich", "Ελληνικά κείμενα", "Русский текст", "Déjà vu — “quotes”"]
    ):
        page.insert_text((72, 100 + 30 * i), s, fontsize=14, **kwargs)
    page.insert_text((72, 260), "中文文本和日本語", fontsize=14, fontname="china-s")
    # 4. an image only: no text layer
    page = doc.new_page(width=595, height=842)
    img, _ = render_text_page(400, 300, seed=seed)
    page.insert_image(pymupdf.Rect(72, 72, 472, 372), pixmap=pymupdf.Pixmap(_png(img)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_scan(
    path: str | Path,
    seed: int = 0,
    pages: int = 2,
    rotation: float = 1.5,
    noise: float = 12.0,
    blur: float = 0.6,
) -> list[list[dict]]:
    """A multi-page TIFF of text pages degraded like a scan (noise, blur, slight rotation); returns each
    page's known lines, boxes turned with the page (the axis-aligned box of the rotated line)."""
    rng = random.Random(seed)
    frames, truth = [], []
    for p in range(pages):
        img, lines = render_text_page(
            1275, 1650, seed=seed * 100 + p, font_size=30, texts=_sentences(rng, 22, 6)
        )
        angle = rng.uniform(-rotation, rotation)
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
        lines = [
            {"text": ln["text"], "bbox": _rotate_box(ln["bbox"], angle, img.width / 2, img.height / 2)}
            for ln in lines
        ]
        img = img.filter(ImageFilter.GaussianBlur(blur))
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        arr = arr + np.random.default_rng(seed * 100 + p).normal(0, noise, arr.shape)
        frames.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
        truth.append(lines)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], compression="tiff_deflate", dpi=(150, 150))
    return truth


def _rotate_box(box: list[float], degrees: float, cx: float, cy: float) -> list[float]:
    """The axis-aligned box of `box` turned counter-clockwise about (cx, cy), as `Image.rotate` turns pixels."""
    t = math.radians(degrees)
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        xs.append(cx + (x - cx) * math.cos(t) + (y - cy) * math.sin(t))
        ys.append(cy - (x - cx) * math.sin(t) + (y - cy) * math.cos(t))
    return [min(xs), min(ys), max(xs), max(ys)]


def make_pptx(path: str | Path, seed: int = 0) -> Path:
    """A three-slide deck: a title slide, bullets, and a table."""
    from pptx import Presentation
    from pptx.util import Inches

    rng = random.Random(seed)
    prs = Presentation()
    s = prs.slides.add_slide(prs.slide_layouts[0])
    s.shapes.title.text = f"Quarterly review {seed}"
    s.placeholders[1].text = "Prepared for the literate model"
    s = prs.slides.add_slide(prs.slide_layouts[1])
    s.shapes.title.text = "Key results"
    body = s.placeholders[1].text_frame
    body.text = _sentences(rng, 1, 6)[0]
    for _ in range(3):
        para = body.add_paragraph()
        para.text = _sentences(rng, 1, 5)[0]
        para.level = 1
    s = prs.slides.add_slide(prs.slide_layouts[5])
    s.shapes.title.text = "Numbers"
    table = s.shapes.add_table(3, 3, Inches(1), Inches(2), Inches(8), Inches(1.5)).table
    for r in range(3):
        for c in range(3):
            table.cell(r, c).text = (
                ["Region", "Sales", "Growth"][c] if r == 0 else f"{rng.choice(WORDS)} {rng.randint(1, 99)}"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prs.save(path)
    return path


LATEX_PAPER = r"""\documentclass{article}
\usepackage[margin=1in]{geometry}
\title{Reading Pages with Literate Models}
\author{Demo Author}
\begin{document}
\maketitle
\section{Introduction}
%(intro)s
\section{Method}
%(method)s
\begin{equation}
E = \sum_{i=1}^{n} x_i^2 + \frac{a}{b}
\end{equation}
\subsection{Details}
%(details)s
\begin{itemize}
\item First point about layout.
\item Second point about markdown.
\end{itemize}
\section{Results}
\begin{table}[h]
\centering
\begin{tabular}{lrr}
Model & Score & Pages \\
small & 81 & 120 \\
large & 90 & 340 \\
\end{tabular}
\caption{Results on the test pages.}
\end{table}
%(results)s
\section{Conclusion}
%(conclusion)s
\end{document}
"""


def make_latex_paper(folder: str | Path, seed: int = 0, paragraphs: int = 6) -> Path:
    """A LaTeX source folder (`main.tex`) long enough for three or more pages."""
    rng = random.Random(seed)

    def text(n):
        return "\n\n".join(" ".join(_sentences(rng, 7, 11)) for _ in range(n))

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = LATEX_PAPER % {k: text(paragraphs) for k in ("intro", "method", "details", "results", "conclusion")}
    (folder / "main.tex").write_text(src)
    return folder


def make_docx(path: str | Path, seed: int = 0, sections: int = 5) -> Path:
    """A DOCX of three or more pages: headings, paragraphs, bulleted and numbered lists, and a table."""
    from docx import Document

    rng = random.Random(seed)
    doc = Document()
    doc.add_heading(f"Project report {seed}", level=0)
    for s in range(sections):
        doc.add_heading(f"Section {s + 1}: {rng.choice(WORDS).capitalize()} {rng.choice(WORDS)}", level=1)
        for _ in range(3):
            doc.add_paragraph(" ".join(_sentences(rng, 6, 12)))
        for _ in range(3):
            doc.add_paragraph(_sentences(rng, 1, 6)[0], style="List Bullet")
        if s % 2 == 0:
            for _ in range(2):
                doc.add_paragraph(_sentences(rng, 1, 5)[0], style="List Number")
        if s == 1:
            table = doc.add_table(rows=4, cols=3)
            table.style = "Table Grid"
            for r in range(4):
                for c in range(3):
                    table.cell(r, c).text = (
                        ["Item", "Count", "Note"][c]
                        if r == 0
                        else f"{rng.choice(WORDS)} {rng.randint(1, 99)}"
                    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


WEB_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Demo page %(seed)d</title>
<link rel="stylesheet" href="https://cdn.example.com/site.css">
<script src="https://cdn.example.com/app.js"></script>
<style>@font-face { font-family: Remote; src: url(https://fonts.example.com/remote.woff2); }
body { font-family: Remote, "DejaVu Sans", sans-serif; margin: 24px; } .cols { display: flex; gap: 48px; }
.cols > div { flex: 1; } .hidden { display: none; } .ghost { opacity: 0; } .clip { height: 20px; overflow: hidden; }
table { border-collapse: collapse; } td, th { border: 1px solid #999; padding: 4px 10px; }</style></head>
<body><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<h1>%(title)s</h1>
<div class="cols"><div><h2>Left column</h2><p>%(left)s</p></div><div><h2>Right column</h2><p>%(right)s</p></div></div>
<h2>Numbers</h2><table><tr><th>Name</th><th>Value</th></tr>%(rows)s</table>
<h2>Code</h2><pre>def total(items):
    return sum(item.amount for item in items)</pre>
<ul><li>%(item1)s</li><li>%(item2)s<ul><li>%(item3)s</li></ul></li></ul>
<p class="hidden">this hidden paragraph must not appear</p><p class="ghost">this transparent paragraph must not appear</p>
<div class="clip">clipped first line<br>clipped second line never shows</div>
<img src="https://cdn.example.com/logo.png" alt="">
<footer>Footer of demo page %(seed)d</footer></body></html>
"""


def make_web_page(path: str | Path, seed: int = 0) -> Path:
    """An HTML page with two columns, a table, code, a nested list, hidden, transparent and clipped text,
    and external resources (a stylesheet, a script, a font, an image) that offline rendering must block."""
    rng = random.Random(seed)
    rows = "".join(f"<tr><td>{rng.choice(WORDS)}</td><td>{rng.randint(1, 999)}</td></tr>" for _ in range(4))
    html = WEB_PAGE % {
        "seed": seed,
        "title": f"Demo page {seed} about {rng.choice(WORDS)}",
        "left": " ".join(_sentences(rng, 4, 10)),
        "right": " ".join(_sentences(rng, 4, 10)),
        "rows": rows,
        "item1": _sentences(rng, 1, 5)[0],
        "item2": _sentences(rng, 1, 5)[0],
        "item3": _sentences(rng, 1, 5)[0],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def make_readme(path: str | Path, seed: int = 0) -> Path:
    """A README.md with headings, paragraphs, lists, a code block and a table, long enough for two tiles."""
    rng = random.Random(seed)
    parts = [
        f"# Project {seed}",
        " ".join(_sentences(rng, 3, 10)),
        "## Install",
        "```bash\npip install project\n```",
    ]
    for s in range(6):
        parts += [
            f"## Part {s + 1}",
            " ".join(_sentences(rng, 5, 11)),
            "\n".join(f"- {x}" for x in _sentences(rng, 3, 5)),
        ]
    parts += [
        "## Options",
        "| option | meaning |\n|---|---|\n"
        + "\n".join(f"| `{rng.choice(WORDS)}` | {_sentences(rng, 1, 4)[0]} |" for _ in range(4)),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


# Documents per builder in the demo corpus: (training, held-out). Held-out documents use other seeds.
DEMO_COUNTS = {
    "pdf": (30, 3),
    "scan": (8, 2),
    "powerpoint": (3, 1),
    "arxiv": (2, 1),
    "web": (8, 2),
    "readme": (24, 4),
    "docx": (3, 1),
    "synthetic": (60, 2),
}
HELD_OUT_SEED = 1000


def make_snippets(path: str | Path, seed: int = 0, lines: int = 120) -> Path:
    """A text file of short snippets (one to six words, some numbers) for the synthetic source."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.2:
            words.append(str(rng.randint(1, 2030)))
        out.append(" ".join(words).capitalize() if rng.random() < 0.5 else " ".join(words))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


# One document of each builder's kind: MAKERS[builder](folder, seed) writes it into folder.
MAKERS = {
    "pdf": lambda d, s: make_pdf(d / f"doc{s}.pdf", seed=s),
    "scan": lambda d, s: make_scan(d / f"scan{s}.tiff", seed=s, pages=1),
    "powerpoint": lambda d, s: make_pptx(d / f"deck{s}.pptx", seed=s),
    "arxiv": lambda d, s: make_arxiv_pair(d, seed=s),
    "web": lambda d, s: make_web_page(d / f"page{s}.html", seed=s),
    "readme": lambda d, s: make_readme(d / f"README{s}.md", seed=s),
    "docx": lambda d, s: make_docx(d / f"report{s}.docx", seed=s),
    "synthetic": lambda d, s: make_snippets(d / f"snippets{s}.txt", seed=s),
}


def make_demo_corpus(out: str | Path, scale: float = 1.0) -> dict[str, dict[str, int]]:
    """`<out>/<builder>/{train,val}/...`: documents for every builder, training and held-out, deterministic.
    The `html` builder reads the `web` pages. Returns the document counts."""
    out = Path(out)
    counts: dict[str, dict[str, int]] = {}
    for name, make in MAKERS.items():
        n_train, n_val = DEMO_COUNTS[name]
        n_train = max(1, round(n_train * scale))
        for split, seeds in (("train", range(n_train)), ("val", range(HELD_OUT_SEED, HELD_OUT_SEED + n_val))):
            folder = out / name / split
            folder.mkdir(parents=True, exist_ok=True)
            for seed in seeds:
                make(folder, seed)
            counts.setdefault(name, {})[split] = len(seeds)
    return counts


def make_arxiv_pair(folder: str | Path, seed: int = 0) -> Path:
    """`paperN.pdf` (compiled with pdflatex, twice for references) beside its source folder `paperN/`, as
    arXiv's bulk data pairs them."""
    import subprocess

    folder = Path(folder)
    src = make_latex_paper(folder / f"paper{seed}", seed=seed)
    with tempfile.TemporaryDirectory() as build:
        for _ in range(2):
            subprocess.run(
                ["pdflatex", "-interaction=nonstopmode", "-output-directory", build, "main.tex"],
                cwd=src,
                capture_output=True,
                check=True,
                timeout=300,
            )
        shutil.copy(Path(build) / "main.pdf", folder / f"paper{seed}.pdf")
    return folder / f"paper{seed}.pdf"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m data_pipeline.demo_corpus", description=__doc__)
    parser.add_argument("out", help="folder to write <builder>/{train,val}/ into")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the training document counts")
    args = parser.parse_args(argv)
    counts = make_demo_corpus(args.out, args.scale)
    for name, c in counts.items():
        print(f"{name:11s} {c['train']:3d} training, {c['val']:2d} held-out documents")
    print(f"demo corpus written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
