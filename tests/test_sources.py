"""The scan, PowerPoint and arXiv sources on documents the tests make, through the real build CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile

import numpy as np
import pymupdf
import pytest
from PIL import Image

from data_pipeline.align import markdown_words, split_markdown_by_pages, token_recall, words
from data_pipeline.demo_corpus import make_latex_paper, make_pptx, make_scan
from data_pipeline.render.html_markdown import html_to_markdown
from data_pipeline.sources.scan import page_image
from tests.test_build_pdf import build, read_shards, summary
from train.scoring import match_lines, word_prf


def test_scan_ocr_reads_degraded_pages(tmp_path):
    truth = make_scan(
        tmp_path / "in" / "box" / "scan.tiff", seed=7, pages=3, rotation=2.0, noise=15.0, blur=0.8
    )
    # Three pages in Tesseract runs of two: each page must get its own lines back.
    args = ["source=scan", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "source.ocr_batch=2"]
    s = summary(build(*args, "workers=2"))
    assert s["samples"] == 3 and s["error_rate"] == 0
    for key, sample in read_shards(tmp_path / "out").items():
        layout, meta = json.loads(sample["layout.json"]), json.loads(sample["meta.json"])
        ref = truth[meta["page"]]
        _, _, f1 = word_prf(layout["lines"], ref)
        matches = match_lines(layout["lines"], ref)
        assert f1 >= 0.9, key
        assert len(matches) >= 0.9 * len(ref) and all(iou >= 0.5 for _, _, iou in matches), key
        assert meta["ocr"] == "tesseract"


def test_scan_pages_of_16_bit_grey_are_scaled_not_clipped():
    levels = np.full((40, 60), 60000, np.uint16)
    levels[10:30, 10:50] = 1000  # dark text on a light page, in 16-bit levels
    page = page_image(Image.fromarray(levels))
    assert page.mode == "L" and np.asarray(page)[0, 0] == 234 and np.asarray(page)[20, 20] == 3
    assert page_image(Image.new("1", (8, 8), 1)).mode == "L"
    assert page_image(Image.new("P", (8, 8))).mode == "RGB"


def test_scan_uses_azure_read_results_when_present(tmp_path):
    src = tmp_path / "in"
    make_scan(src / "a.png", seed=1, pages=1)
    result = {
        "status": "succeeded",
        "analyzeResult": {
            "version": "3.2.0",
            "readResults": [
                {
                    "page": 1,
                    "angle": 0,
                    "width": 8.5,
                    "height": 11.0,
                    "unit": "inch",
                    "lines": [
                        {"text": "Total amount due", "boundingBox": [1.0, 1.0, 4.0, 1.0, 4.0, 1.5, 1.0, 1.5]},
                        {"text": "Thank you", "boundingBox": [1.0, 2.0, 3.0, 2.0, 3.0, 2.4, 1.0, 2.4]},
                    ],
                }
            ],
        },
    }
    (src / "a.json").write_text(json.dumps(result))
    build(
        "source=scan",
        f"input={src}",
        f"output={tmp_path / 'out'}",
        "workers=1",
        "filters.min_chars=5",
        "filters.languages=all",
    )
    (sample,) = read_shards(tmp_path / "out").values()
    layout = json.loads(sample["layout.json"])
    assert [ln["text"] for ln in layout["lines"]] == ["Total amount due", "Thank you"]
    assert layout["lines"][0]["bbox"] == pytest.approx(
        [150, 150, 600, 225], abs=1
    )  # 1275 px / 8.5 in = 150 px/in
    assert json.loads(sample["meta.json"])["ocr"] == "azure-read-v3"


def test_scan_pixel_cap_and_corrupt_images_are_counted(tmp_path):
    src = tmp_path / "in"
    make_scan(src / "ok.tiff", seed=2, pages=1)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    s = summary(build("source=scan", f"input={src}", f"output={tmp_path / 'out'}", "workers=1", check=False))
    assert s["errors"] == {"corrupt_image": 1} and s["samples"] == 1
    s = summary(
        build(
            "source=scan",
            f"input={src}",
            f"output={tmp_path / 'out2'}",
            "workers=1",
            "source.max_page_pixels=1000000",
            check=False,
        )
    )
    assert s["errors"]["pixel_cap"] == 1 and s["samples"] == 0


def test_powerpoint_layout_and_slide_markdown(tmp_path):
    make_pptx(tmp_path / "in" / "deck.pptx", seed=0)
    s = summary(
        build(
            "source=powerpoint",
            f"input={tmp_path / 'in'}",
            f"output={tmp_path / 'out'}",
            "workers=1",
            "source.markdown=true",
        )
    )
    assert s["samples"] == 3
    samples = read_shards(tmp_path / "out")
    md = [samples[f"powerpoint/deck/{i:05d}"]["md"].decode() for i in range(3)]
    assert md[0].startswith("# Quarterly review 0")
    assert md[1].startswith("# Key results") and "\n  - " in md[1]  # level-1 bullets nest
    assert "| Region | Sales | Growth |\n|---|---|---|" in md[2]
    layout = json.loads(samples["powerpoint/deck/00002"]["layout.json"])
    assert {"Region", "Sales", "Growth"} <= {ln["text"] for ln in layout["lines"]}


def test_powerpoint_conversion_time_out_is_counted_and_killed(tmp_path):
    make_pptx(tmp_path / "in" / "deck.pptx", seed=1)
    r = build(
        "source=powerpoint",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "workers=1",
        "source.convert_timeout=0.05",
        check=False,
    )
    assert summary(r)["errors"] == {"convert_timeout": 1}
    left = subprocess.run(["pgrep", "-f", "literate-lo-"], capture_output=True, text=True).stdout.split()
    assert not left, "LibreOffice was left running"


@pytest.fixture(scope="module")
def arxiv_pair(tmp_path_factory):
    """A compiled LaTeX paper: `paper.pdf` beside `paper.tar.gz`, as arXiv's bulk data ships them."""
    root = tmp_path_factory.mktemp("arxiv")
    src = make_latex_paper(root / "work", seed=3, paragraphs=5)
    for _ in range(2):
        subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "main.tex"], cwd=src, capture_output=True, check=True
        )
    inp = root / "in"
    inp.mkdir()
    shutil.copy(src / "main.pdf", inp / "paper.pdf")
    with tarfile.open(inp / "paper.tar.gz", "w:gz") as tar:
        tar.add(src / "main.tex", arcname="main.tex")
    return inp


def test_arxiv_markdown_per_page(arxiv_pair, tmp_path):
    s = summary(build("source=arxiv", f"input={arxiv_pair}", f"output={tmp_path / 'out'}", "workers=1"))
    pdf = pymupdf.open(arxiv_pair / "paper.pdf")
    assert pdf.page_count >= 3 and s["samples"] == pdf.page_count and "md_alignment" not in s["skips"]
    samples = read_shards(tmp_path / "out")
    all_md = ""
    for i, page in enumerate(pdf):
        md = samples[f"arxiv/paper/{i:05d}"]["md"].decode()
        all_md += md
        text = page.get_text()
        for heading in re.findall(r"^\d+(?:\.\d+)?\s+[A-Z][a-z]+$", text, re.MULTILINE):
            assert any(line.startswith("#") and heading.split()[-1] in line for line in md.splitlines()), (
                i,
                heading,
            )
        assert token_recall(words(text), markdown_words(md)) >= 0.9, i
    assert (
        "| Model | Score | Pages |" in all_md
        and "$$E=\\sum_{i=1}^{n}" in all_md
        and "- First point" in all_md
    )


def test_the_macro_witness_reads_labels_apart_from_the_filter(arxiv_pair, tmp_path):
    """`benchmarks/latex_markdown.py`'s residue witness (markdown-it's prose of the label, Tesseract's reading of
    the page image; no code shared with `source=arxiv`'s filter) finds nothing in a kept label, and finds a macro
    name planted into it that the page does not show."""
    from benchmarks.latex_markdown import residue

    build("source=arxiv", f"input={arxiv_pair}", f"output={tmp_path / 'out'}", "workers=1")
    sample = next(s for s in read_shards(tmp_path / "out").values() if "md" in s)
    md = sample["md"].decode()
    assert residue(md, sample["png"]) == []
    planted = md + "\n\nThe reader calls \\brandnewmacro before each line, and `\\incode` is code."
    assert residue(planted, sample["png"]) == ["\\brandnewmacro"]


LATEX_BODY = r"""\documentclass{article}
\begin{document}
\section{Reading pages}
The reader \brand{} takes a page image and writes its text lines in reading order, with a box for every
line, so that a layout model learns where the words of a page are drawn and what they say. Tables keep
their rows and columns, and headings keep their level, so that the markdown task learns structure too.
\end{document}
"""
OTHER_WORDS = (
    "Gardens, rivers, mountains, harbours, fishermen, nets, boats, weather, mornings, villages, orchards, "
    "meadows, lanterns, bridges, windmills, shepherds, valleys, lighthouses, cottages, vineyards."
)


def test_arxiv_single_file_sources_drop_unexpanded_macros_and_count_failures(tmp_path):
    """TeX Live's documentation ships `X.pdf` beside one `X.tex.gz`. A macro the converter cannot expand (the
    PDF was typeset where it was defined empty) never reaches the label and is counted; a source that does
    not match its PDF at all is a failed conversion, and its page keeps its layout."""
    import gzip

    inp, work = tmp_path / "in", tmp_path / "work"
    inp.mkdir()
    work.mkdir()
    for name, body in (
        ("reader", LATEX_BODY.replace("\\begin{document}", "\\newcommand{\\brand}{}\n\\begin{document}")),
        ("other", LATEX_BODY.replace("The reader", OTHER_WORDS + "\n\\end{document}")),
    ):
        (work / f"{name}.tex").write_text(body)
        subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", f"{name}.tex"], cwd=work, capture_output=True, check=True
        )
        shutil.copy(work / f"{name}.pdf", inp / f"{name}.pdf")
    (inp / "reader.tex.gz").write_bytes(gzip.compress(LATEX_BODY.encode()))  # \brand used, never defined
    (inp / "other.tex").write_text(LATEX_BODY)  # the reader's text beside a PDF that shows other words
    s = summary(build("source=arxiv", f"input={inp}", f"output={tmp_path / 'out'}", "workers=1"))
    samples = read_shards(tmp_path / "out")
    assert s["skips"].get("latex_macros_dropped") == 1 and s["skips"].get("latex_conversion_failed") == 1
    md = samples["arxiv/reader/00000"]["md"].decode()
    assert "brand" not in md and "The reader takes a page image" in md
    assert "md" not in samples["arxiv/other/00000"] and "layout.json" in samples["arxiv/other/00000"]


def test_a_label_naming_a_macro_the_page_does_not_show_is_caught():
    """l3doc's `\\cs` comes out of LaTeXML without expl3's underscores: the label would name a macro the page
    does not show. Names the page shows (the text layer may put a space after the backslash, or a
    ligature), and names inside code or math, are not flagged."""
    from data_pipeline.sources.arxiv import macros_not_shown

    page = "Use \\tl_upper_case:n and \\ \ufb01le here; $\\alpha$."
    assert macros_not_shown("Use `\\tluppercase:n` and \\tluppercase:n here.", page) == ["\\tluppercase"]
    assert macros_not_shown("Use \\tl_upper_case:n and \\file here; $\\beta$ `\\gamma`.", page) == []


def test_html_to_markdown_keeps_structure_and_drops_chrome():
    html = """<html><head><style>p{}</style><script>x()</script></head><body>
    <nav>Home | About</nav><h1>Title</h1><p>Some <em>emphasis</em>, a <a href="/x">link</a> and <code>code()</code>.</p>
    <ul><li>one<ol><li>nested</li></ol></li><li>two</li></ul>
    <pre>def f():\n    return 1</pre>
    <table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>x|y</td></tr></table>
    <p style="display: none">hidden text</p><div hidden>also hidden</div>
    <p>Inline <math alttext="a^2"><mi>a</mi></math> and display</p><math display="block" alttext="\\frac{1}{2}"></math>
    </body></html>"""
    md = html_to_markdown(html)
    assert md == (
        "# Title\n\nSome *emphasis*, a link and `code()`.\n\n- one\n  1. nested\n- two\n\n"
        "```\ndef f():\n    return 1\n```\n\n| A | B |\n|---|---|\n| 1 | x\\|y |\n\n"
        "Inline $a^2$ and display\n\n$$\\frac{1}{2}$$\n"
    )


def test_math_keeps_what_is_drawn_not_how_it_was_spaced():
    """A logo typeset in math (LaTeXML's alttext of the NTS logo) keeps its letters and drops TeX's
    spacing and box primitives, which the page does not show."""
    md = html_to_markdown(
        '<p>The <math alttext="\\cal N\\kern-3.50006pt\\lower 2.15277pt\\hbox{$\\cal T$}\\kern-1.99997ptS">'
        '</math> Team; <math alttext="x^{2}\\quad\\hbox{if } y"></math></p>'
    )
    assert md == "The $\\cal N \\cal T S$ Team; $x^{2}\\quad if y$\n"


def test_a_list_item_cut_by_a_page_break_is_cut_between_its_lines():
    """A list item holding a command and its arguments, the command at the foot of one page and the
    arguments at the top of the next: each page's label has the lines that page shows."""
    md = (
        "Intro words on the first page of this manual come here.\n\n"
        "- \\diffdef {}\n  {\n  key-one = value-one,\n  key-two = value-two\n  }\n\n"
        "The key value list is a comma separated list of settings.\n"
    )
    pages = [
        "Intro words on the first page of this manual come here.\n\\diffdef {}\n",
        "{\nkey-one = value-one,\nkey-two = value-two\n}\nThe key value list is a comma separated list of settings.\n",
    ]
    first, second = split_markdown_by_pages(md, pages)
    assert "\\diffdef" in first and "\\diffdef" not in second
    assert "key-one = value-one" in second and "key-one" not in first


def test_list_items_that_begin_with_a_number_keep_it():
    """A table of contents item "1. Install" keeps its number (escaped, so it is no nested list); only
    LaTeXML's marker span, a copy of the list's own marker, is dropped."""
    md = html_to_markdown(
        '<ul><li><a href="#i">1. Install</a></li></ul>'
        '<ul><li><span class="ltx_tag ltx_tag_item">1.</span> LaTeX item</li></ul>'
    )
    assert md == "- 1\\. Install\n\n- LaTeX item\n"
    assert markdown_words(md) == ["1", "install", "latex", "item"]
