"""The browser- and office-shaped sources (web, html, readme, docx, synthetic) with real Chromium,
LibreOffice and pandoc, through the real build CLI, on pages and files the tests make."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from data_pipeline.align import markdown_words, token_iou, words
from data_pipeline.demo_corpus import make_docx, make_readme, make_web_page
from data_pipeline.render.browser import Browser
from tests.test_build_pdf import build, read_shards, summary

# A kept markdown label, read against its picture by a witness that shares nothing with the builder's check
# (Tesseract on the tile, upscaled 2x: `benchmarks/label_witness.py`): the share of the label's words the picture
# does not show. Real pages read at under 1% (the README's witness table); the demo page's labels at 3.9%: the
# second line of a box that clips it (`overflow: hidden`) is in the markdown, a known limit (README); a label with
# a sentence its picture lacks reads far above.
PHANTOM = 0.05


def phantom_share(sample: dict) -> float:
    from benchmarks.label_witness import match, ocr_words, words_of

    label = words_of(" ".join(markdown_words(sample["md"].decode())))
    seen, _, _ = ocr_words(sample["png"], json.loads(sample["meta.json"]).get("pictures", []))
    phantom, _ = match(label, seen)
    return sum(phantom.values()) / max(len(label), 1)


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("web")
    for i in range(2):
        make_web_page(d / f"page{i}.html", seed=i)
    return d


def test_web_layout_is_the_visible_text(web_dir, tmp_path):
    s = summary(
        build(
            "source=web",
            f"input={web_dir}",
            f"output={tmp_path / 'out'}",
            "workers=2",
            "filters.languages=all",
        )
    )
    # Offline: the stylesheet, script, font and image of each page are refused and counted, nothing else fails.
    assert s["samples"] == 2 and s["errors"] == {} and s["skips"]["blocked_network"] == 8
    cfg = {
        "viewport_width": 1024,
        "tile_height": 1448,
        "min_tile_height": 64,
        "max_height": 14480,
        "page_timeout": 30,
        "network": "offline",
        "user_agent": "test",
        "respect_robots": True,
        "request_timeout": 5,
        "max_page_bytes": 10**7,
    }
    from omegaconf import OmegaConf

    for key, sample in read_shards(tmp_path / "out").items():
        layout, meta = json.loads(sample["layout.json"]), json.loads(sample["meta.json"])
        texts = [ln["text"] for ln in layout["lines"]]
        for ln in layout["lines"]:
            x0, y0, x1, y1 = ln["bbox"]
            assert 0 <= x0 < x1 <= layout["width"] and 0 <= y0 < y1 <= layout["height"]
        assert not any("must not appear" in t or "never shows" in t for t in texts), (
            key
        )  # hidden, transparent, clipped
        assert "clipped first line" in texts and "Name" in texts and "def total(items):" in texts
        inner = " ".join(
            Browser.shared().render(meta["origin"], OmegaConf.create(cfg), with_text=True).inner_text.split()
        )
        assert all(t in inner for t in texts)
        # Columns: the left column's lines end before the right column's begin.
        left = [ln["bbox"] for ln in layout["lines"][2:7]]
        right = next(i for i, t in enumerate(texts) if t == "Right column")
        assert max(b[2] for b in left) < layout["lines"][right]["bbox"][0]
    Browser.shared().close()


def test_html_markdown_keeps_structure_and_matches_the_tile(web_dir, tmp_path):
    s = summary(
        build(
            "source=html",
            f"input={web_dir}",
            f"output={tmp_path / 'out'}",
            "workers=1",
            "filters.languages=all",
        )
    )
    assert s["samples"] == 2
    for sample in read_shards(tmp_path / "out").values():
        md = sample["md"].decode()
        assert md.startswith("# Demo page") and "## Left column" in md and "| Name | Value |\n|---|---|" in md
        assert "```\ndef total(items):\n    return sum(item.amount for item in items)\n```" in md
        assert "\n  - " in md  # the nested list stays nested
        assert "must not appear" not in md and "Home" not in md and "Footer of demo page" not in md
        assert phantom_share(sample) <= PHANTOM, (phantom_share(sample), md)
    # The witness can fail: the same label with a sentence its picture does not show.
    planted = dict(
        sample,
        md=(md + "\n\nHarbour lanterns glow over quiet orchards while shepherds count windmills.").encode(),
    )
    assert phantom_share(planted) > PHANTOM


def test_pages_stop_moving_once_measured(tmp_path):
    """A capture lays the page out taller than the window for a moment; a page whose scripts react to that (a
    sticky header pinned by an observer, a resize listener) would be drawn in another layout than the one
    measured. Once measured, the page's observers and resize listeners are no longer called."""
    from data_pipeline.render.browser import FREEZE_JS

    page_file = tmp_path / "moving.html"
    page_file.write_text(
        "<html><body><h1>Moving</h1><div style='height:3000px'></div><p id='far'>Far below.</p><script>"
        "window.calls = {resize: 0, observed: 0};"
        "addEventListener('resize', () => window.calls.resize++);"
        "new IntersectionObserver(() => window.calls.observed++).observe(document.getElementById('far'));"
        "</script></body></html>"
    )
    browser = Browser.shared().browser
    context = browser.new_context(viewport={"width": 800, "height": 600})
    try:
        context.add_init_script(FREEZE_JS)
        page = context.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        page.wait_for_function("window.calls.observed >= 1")  # the observer's first call
        page.set_viewport_size({"width": 800, "height": 4000})  # the far paragraph comes into view
        page.wait_for_function("window.calls.resize >= 1 && window.calls.observed >= 2")
        page.evaluate("window.__literateFrozen = true")
        before = page.evaluate("({...window.calls})")
        page.set_viewport_size({"width": 800, "height": 600})
        page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        assert page.evaluate("({...window.calls})") == before
    finally:
        context.close()


def test_code_blocks_are_labelled_as_drawn(tmp_path):
    """A code block's hidden variant (a CJS/ESM toggle) and its copy button are not drawn, nor labelled."""
    page = tmp_path / "in" / "code.html"
    page.parent.mkdir(parents=True)
    page.write_text(
        "<html><body><h1>Code</h1><p>The example below shows the module being loaded.</p>"
        "<pre><code style='display:none'>import hidden from 'variant';\n</code>"
        "<code>const shown = require('variant');</code><button>copy</button></pre></body></html>"
    )
    build("source=html", f"input={page.parent}", f"output={tmp_path / 'out'}", "filters.languages=all")
    (sample,) = read_shards(tmp_path / "out").values()
    md = sample["md"].decode()
    assert "```\nconst shown = require('variant');\n```" in md and "hidden" not in md and "copy" not in md
    assert json.loads(sample["meta.json"])["md_token_iou"] == 1.0


def test_timeouts_and_endless_pages_are_counted_and_no_worker_dies(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "hang.html").write_text("<html><body><p>start</p><script>while (true) {}</script></body></html>")
    (src / "endless.html").write_text(
        "<html><body>" + "".join(f"<p>endless line {i} of text</p>" for i in range(3000)) + "</body></html>"
    )
    make_web_page(src / "ok.html", seed=3)
    r = build(
        "source=web",
        f"input={src}",
        f"output={tmp_path / 'out'}",
        "workers=1",
        "filters.languages=all",
        "browser.page_timeout=3",
        "browser.max_height=2896",
        check=False,
    )
    s = summary(r)
    assert s["errors"] == {"page_timeout": 1} and s["skips"]["height_capped"] == 1 and not s["tasks_failed"]
    keys = sorted(read_shards(tmp_path / "out"))
    assert keys == ["web/endless/00000", "web/endless/00001", "web/ok/00000"]  # capped at two tiles


def test_online_mode_honours_robots_and_byte_caps(tmp_path):
    site = tmp_path / "site"
    (site / "private").mkdir(parents=True)
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (site / "private" / "secret.css").write_text("body { background: red; }")
    (site / "index.html").write_text(
        '<html><head><link rel="stylesheet" href="/private/secret.css"></head>'
        "<body><h1>Served over HTTP</h1><p>A page fetched from a local server.</p></body></html>"
    )
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"http://127.0.0.1:{server.server_port}/index.html\n")
        s = summary(
            build(
                "source=web",
                f"input={urls}",
                f"output={tmp_path / 'out'}",
                "workers=1",
                "filters.languages=all",
                "browser.network=online",
                f"browser.allow_addresses=[127.0.0.1:{server.server_port}]",
            )
        )
        assert s["samples"] == 1 and s["skips"]["blocked_robots"] == 1  # the disallowed stylesheet
        (sample,) = read_shards(tmp_path / "out").values()
        assert next(ln["text"] for ln in json.loads(sample["layout.json"])["lines"]) == "Served over HTTP"
        s = summary(
            build(
                "source=web",
                f"input={urls}",
                f"output={tmp_path / 'out2'}",
                "workers=1",
                "filters.languages=all",
                "browser.network=online",
                f"browser.allow_addresses=[127.0.0.1:{server.server_port}]",
                "browser.max_page_bytes=10",
                check=False,
            )
        )
        assert s["errors"] == {"blocked_bytes": 1}  # the page itself is over the byte cap
    finally:
        server.shutdown()


def test_readme_tiles_carry_the_markdown_they_show(tmp_path):
    readme = make_readme(tmp_path / "in" / "proj" / "README.md", seed=2)
    s = summary(
        build(
            "source=readme",
            f"input={tmp_path / 'in'}",
            f"output={tmp_path / 'out'}",
            "workers=1",
            "filters.languages=all",
        )
    )
    samples = read_shards(tmp_path / "out")
    assert s["samples"] == len(samples) >= 2
    labels = [samples[k]["md"].decode() for k in sorted(samples)]
    source_words = markdown_words(readme.read_text())
    covered = markdown_words("\n".join(labels))
    assert len(set(covered) & set(source_words)) >= 0.95 * len(set(source_words))
    assert labels[0].startswith("# Project 2") and "```\npip install project\n```" in labels[0]
    assert any("| option | meaning |" in lab for lab in labels)


LONG_CODE = "configure(" + ", ".join(f"option_{i}=value_{i}" for i in range(40)) + ")  # ENDOFLINE"


def test_readme_labels_say_exactly_what_the_tile_shows(tmp_path):
    readme = tmp_path / "in" / "proj" / "README.md"
    readme.parent.mkdir(parents=True)
    readme.write_text(
        "# Fidelity\n\nThe server speaks **HTTP/2**, and *streams*; see `serve()`.\n\n"
        "<details>\n<summary>More options</summary>\n\nThe folded paragraph explains retries.\n\n</details>\n\n"
        "Launch day 🚀 arrives.\n\n```python\n" + LONG_CODE + "\n```\n"
    )
    build("source=readme", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "filters.languages=all")
    (sample,) = read_shards(tmp_path / "out").values()
    md, meta = sample["md"].decode(), json.loads(sample["meta.json"])
    # emphasis and code right against the punctuation the page shows after them
    assert "**HTTP/2**, and *streams*; see `serve()`." in md
    # <details> opened before the page was drawn: its content is labelled, and the tile shows it
    assert "More options" in md and "The folded paragraph explains retries." in md
    assert "Launch day 🚀 arrives." in md
    # the long code line wraps on the page instead of running out of the picture, and is labelled whole
    assert LONG_CODE in md
    assert meta["md_token_iou"] == 1.0  # every word of the label is among the words the tile shows


def test_tiles_are_not_cut_through_a_run_of_inline_text(tmp_path):
    """A <div> of text and <br>s is no paragraph, but the markdown gives it whole to the tile of its first line:
    the tile cut goes above it, so the lines below the cut are not drawn in a tile whose label lacks them."""
    readme = tmp_path / "in" / "proj" / "README.md"
    readme.parent.mkdir(parents=True)
    lines = [
        f"sponsor line {w} stays whole" for w in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
    ]
    readme.write_text(
        '# Runs\n\n<div style="height:1260px"></div>\n\n<div align="center">\n<b>'
        + lines[0]
        + "</b><br>\n<sub>"
        + "<br>\n".join(lines[1:])
        + "</sub>\n</div>\n\n"
        + "".join(f"Closing paragraph number {i} says a few more words.\n\n" for i in range(40))
    )
    s = summary(
        build(
            "source=readme", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "filters.languages=all"
        )
    )
    samples = read_shards(tmp_path / "out")
    assert s["skips"].get("md_consistency", 0) == 0 and len(samples) >= 2
    labels = [samples[k]["md"].decode() for k in sorted(samples)]
    holding = [i for i, md in enumerate(labels) if "sponsor line alpha" in md]
    assert len(holding) == 1 and all(line in labels[holding[0]] for line in lines)
    # the tile that holds the run starts above it, so it shows every line of it
    assert phantom_share(samples[sorted(samples)[holding[0]]]) <= PHANTOM


def test_emoji_and_cjk_are_drawn_not_tofu(tmp_path):
    """The fonts the Makefile installs draw emoji (in colour) and CJK; a missing font would draw empty boxes."""
    from omegaconf import OmegaConf
    from PIL import ImageChops

    from data_pipeline.render.tiles import words_to_lines

    page = tmp_path / "glyphs.html"
    page.write_text(
        '<html><body style="font-size:64px"><p>A🚀B</p><p>東京都</p></body></html>',
        encoding="utf-8",
    )
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "browser" / "default.yaml")
    rendered = Browser.shared().render(page.as_uri(), cfg)
    (_, tile), *_ = rendered.tiles
    lines = {ln["text"]: ln["bbox"] for ln in words_to_lines(rendered.words)}
    rocket = np.asarray(tile.crop([round(v) for v in lines["A🚀B"]]).convert("RGB"), dtype=np.int16)
    assert ((rocket.max(axis=2) - rocket.min(axis=2)) > 80).sum() > 100  # the rocket is drawn in colour
    cjk = tile.crop([round(v) for v in lines["東京都"]]).convert("L")
    assert ImageChops.invert(cjk).getbbox() is not None  # something is drawn
    # three different ideographs do not look alike, as three empty boxes would
    w = cjk.width // 3
    glyphs = [cjk.crop((i * w, 0, (i + 1) * w, cjk.height)) for i in range(3)]
    assert ImageChops.difference(glyphs[0], glyphs[1]).getbbox() is not None
    assert ImageChops.difference(glyphs[1], glyphs[2]).getbbox() is not None
    Browser.shared().close()


def test_docx_pages_get_their_markdown(tmp_path):
    docx = make_docx(tmp_path / "in" / "report.docx", seed=4)
    s = summary(
        build(
            "source=docx",
            f"input={docx.parent}",
            f"output={tmp_path / 'out'}",
            "workers=1",
            "filters.languages=all",
        )
    )
    samples = read_shards(tmp_path / "out")
    assert s["samples"] == len(samples) >= 3
    good = 0
    all_md = ""
    for key, sample in samples.items():
        assert "md" in sample, key
        md = sample["md"].decode()
        all_md += md
        layout_text = " ".join(ln["text"] for ln in json.loads(sample["layout.json"])["lines"])
        good += token_iou(markdown_words(md), words(layout_text)) >= 0.9
        assert phantom_share(sample) <= PHANTOM, (key, phantom_share(sample))
    assert good >= 0.9 * len(samples)
    assert (
        "# Section 1" in all_md
        and "| Item | Count | Note |" in all_md
        and "\n- " in all_md
        and "\n1. " in all_md
    )


def test_synthetic_pages_have_exact_boxes(tmp_path):
    """Pages drawn from a `fonts` folder of the job's own (as a cluster job ships one) are alike build after
    build; a folder without fonts is refused before any work."""
    src = tmp_path / "in"
    src.mkdir()
    snippets = [f"snippet number {i} reads text" for i in range(30)]
    (src / "s.txt").write_text("\n".join(snippets))
    fonts = tmp_path / "fonts"
    shutil.copytree("/usr/share/fonts/truetype/dejavu", fonts / "dejavu")
    out = tmp_path / "out"
    opts = [
        "source=synthetic",
        f"input={src}",
        "workers=1",
        "filters.languages=all",
        "source.snippets_per_page=10",
    ]
    s = summary(build(*opts, f"output={out}", f"source.fonts={fonts}"))
    assert s["samples"] == 3
    drawn = [
        ln["text"]
        for k in sorted(read_shards(out))
        for ln in json.loads(read_shards(out)[k]["layout.json"])["lines"]
    ]
    assert drawn and all(any(sn.startswith(t) for sn in snippets) for t in drawn)
    again = tmp_path / "again"
    build(*opts, f"output={again}", f"source.fonts={fonts}")
    first, second = read_shards(out), read_shards(again)
    assert sorted(first) == sorted(second)
    for k in first:  # deterministic: the same fonts, boxes and pixels
        meta = json.loads(first[k]["meta.json"])
        assert meta["fonts"] and json.loads(second[k]["meta.json"]) == meta, k
        assert second[k]["layout.json"] == first[k]["layout.json"], (k, meta["fonts"])
        pixels = [np.asarray(Image.open(io.BytesIO(s[k]["png"]))) for s in (first, second)]
        assert np.array_equal(*pixels), (k, meta["fonts"], int((pixels[0] != pixels[1]).sum()))
        assert second[k]["png"] == first[k]["png"], k  # and the same bytes
    assert {f for k in first for f in json.loads(first[k]["meta.json"])["fonts"]} <= {
        p.name for p in fonts.rglob("*.ttf")
    }
    r = build(*opts, f"output={tmp_path / 'none'}", f"source.fonts={src}", check=False)
    assert r.returncode == 2 and f"source.fonts={src}: no .ttf or .otf font" in r.stderr + r.stdout


def test_pdf_text_of_docx_conversion_is_real(tmp_path):
    """LibreOffice really converts: the PDF it writes has the DOCX's heading on page one."""
    from data_pipeline.render.office import convert_to_pdf

    pdf = convert_to_pdf(make_docx(tmp_path / "r.docx", seed=1), tmp_path, 120)
    assert "Project report 1" in pymupdf.open(pdf)[0].get_text()
