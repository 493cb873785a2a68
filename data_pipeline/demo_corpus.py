"""A small, deterministic corpus that exercises the builders: PDFs (columns, a table, a rotated page,
Unicode, a page without text), scan-like TIFFs rendered from known text, a PowerPoint deck and a LaTeX paper.
Tests and the demo make their documents here; nothing is downloaded.

    python -m data_pipeline.demo_corpus <dir>
"""

from __future__ import annotations

import math
import random
import sys
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
        page.draw_line((x - 4, 110), (x - 4, 560)) if col else None
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


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    for i in range(3):
        make_pdf(out / "pdf" / f"doc{i}.pdf", seed=i)
        make_scan(out / "scan" / f"scan{i}.tiff", seed=i)
        make_pptx(out / "powerpoint" / f"deck{i}.pptx", seed=i)
    make_latex_paper(out / "arxiv" / "paper0", seed=0)
    print(f"demo corpus written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
