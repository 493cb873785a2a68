"""The corpus from where it lives: open page corpora imported from their own webdataset layout."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_pipeline.demo_corpus import make_arxiv_pair, make_pdf
from data_pipeline.fixtures import corpus_json, pdf_page_lines, pixparse_tar, write_tar
from tests.test_build_pdf import build, pixels, png_difference, read_shards, summary


@pytest.mark.parametrize(
    "source,corpus", [("idl_wds", "pixparse/idl-wds"), ("pdfa_wds", "pixparse/pdfa-eng-wds")]
)
def test_a_page_corpus_tar_builds_every_page_with_the_corpus_lines(tmp_path, source, corpus):
    """Three PDFs of four pages in a tar of the corpus's layout: every page is rendered and labelled with the
    corpus's lines as written (order, text, boxes scaled to the rendering, inside the page); the page without a
    text layer gets the corpus's OCR line and no agreement figure, the others agree with their text layer
    exactly; an empty line, a box off the page, a sample without its PDF and one with broken JSON are counted."""
    src, truth, pdf = tmp_path / "in", {}, b""
    documents = {}
    for i in range(3):
        pdf = make_pdf(tmp_path / f"d{i}.pdf", seed=40 + i).read_bytes()
        pages = pdf_page_lines(pdf)
        assert [bool(p) for p in pages] == [True, True, True, False]  # the last page is an image only
        pages[3] = [{"text": "words a scanner read", "bbox": [0.1, 0.2, 0.5, 0.04]}]
        truth[f"{i:07d}"] = [[dict(ln) for ln in p] for p in pages]
        if i == 0:
            pages[0].insert(1, {"text": "  ", "bbox": [0.1, 0.1, 0.2, 0.02]})
            pages[0].append({"text": "beyond the page", "bbox": [1.05, 0.5, 0.2, 0.02]})
        documents[f"{i:07d}"] = (pdf, corpus_json(pages))
    documents["0000007"] = (None, corpus_json([[{"text": "no pdf", "bbox": [0, 0, 1, 1]}]]))
    documents["0000008"] = (pdf, b'{"pages": [')
    pixparse_tar(src / "shard-00000.tar", documents)

    out = tmp_path / "out"
    opts = [
        f"source={source}",
        f"input={src}",
        f"output={out}",
        "workers=1",
        "filters.languages=all",
        "dedup=false",
        "max_error_rate=0.5",  # 2 broken samples of 14 pages, on purpose
    ]
    s = summary(build(*opts))
    assert s["samples"] == 12, s
    assert s["errors"] == {"corpus_incomplete": 1, "corpus_bad_json": 1}, s
    assert s["skips"] == {"corpus_empty_line": 1, "corpus_box_outside": 1}, s
    samples = read_shards(out)
    assert len(samples) == 12
    for key, sample in samples.items():
        assert key.startswith(f"{source}/shard-00000/"), key
        corpus_id, page = key.split("/")[-2], int(key.split("/")[-1])
        meta, layout = json.loads(sample["meta.json"]), json.loads(sample["layout.json"])
        width, height = Image.open(io.BytesIO(sample["png"])).size
        assert (layout["width"], layout["height"]) == (width, height)
        assert meta["corpus"] == corpus and meta["corpus_id"] == corpus_id and meta["licence"]
        expected = truth[corpus_id][page]
        assert [ln["text"] for ln in layout["lines"]] == [" ".join(ln["text"].split()) for ln in expected]
        for got, want in zip(layout["lines"], expected, strict=True):
            x0, y0, x1, y1 = got["bbox"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, got
            left, top, w, h = want["bbox"]
            scaled = [left * width, top * height, (left + w) * width, (top + h) * height]
            assert all(abs(a - b) <= 1.0 for a, b in zip(got["bbox"], scaled, strict=True)), (got, scaled)
        assert meta["text_layer_iou"] == (None if page == 3 else 1.0), (key, meta["text_layer_iou"])


def _gz_tar(folder: Path) -> bytes:
    """A paper's source folder as arXiv stores a multi-file submission: a gzipped tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in (".tex", ".bib"):
                tar.add(f, arcname=str(f.relative_to(folder)))
    return raw.getvalue()


@pytest.mark.slow
def test_arxiv_bulk_tars_build_what_the_folder_layout_builds(tmp_path):
    """A month of arXiv's bulk data (a PDF tar with two versions of one paper and a paper without source; a
    source tar with that paper's gzipped tar and a source without PDF) builds the samples the same papers build
    from the folder layout (`<id>.pdf` beside `<id>.gz`), the newest version's, without unpacking the tars; the
    missing sides are counted."""
    work = tmp_path / "work"
    first = make_arxiv_pair(work, seed=5)
    second = make_arxiv_pair(work, seed=6)
    source = _gz_tar(work / "paper5")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "1501.00001.pdf").write_bytes(first.read_bytes())
    (folder / "1501.00001.gz").write_bytes(source)
    (folder / "1501.00002.pdf").write_bytes(second.read_bytes())
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    write_tar(bulk / "arXiv_pdf_1501_001.tar", {
        "1501/1501.00001v1.pdf": second.read_bytes(),  # an older version: not built
        "1501/1501.00001v2.pdf": first.read_bytes(),
        "1501/1501.00002v1.pdf": second.read_bytes(),
    })  # fmt: skip
    write_tar(bulk / "arXiv_src_1501_001.tar", {
        "1501/1501.00001.gz": source,
        "1501/1501.00003.gz": gzip.compress(b"\\documentclass{article}\\begin{document}x\\end{document}"),
    })  # fmt: skip
    opts = ["source=arxiv", "workers=1", "filters.languages=all", "dedup=false"]
    want = summary(build(*opts, f"input={folder}", f"output={tmp_path / 'want'}"))
    got = summary(build(*opts, f"input={bulk}", f"output={tmp_path / 'got'}"))
    assert got["samples"] == want["samples"] > 0 and got["skips"]["no_pdf"] == 1, (got, want)
    assert got["skips"]["no_latex_source"] == want["skips"]["no_latex_source"] == 1
    a, b = read_shards(tmp_path / "want"), read_shards(tmp_path / "got")
    assert sorted(a) == sorted(b)
    for key, sample in a.items():
        assert pixels(sample["png"]) == pixels(b[key]["png"]), png_difference(
            key, sample["png"], b[key]["png"]
        )
        for ext in ("layout.json", "md"):
            assert sample.get(ext) == b[key].get(ext), (key, ext)
        meta = json.loads(b[key]["meta.json"])
        assert meta["origin"].startswith(f"{bulk / 'arXiv_pdf_1501_001.tar'}#1501/1501.0000"), meta
    assert any("md" in s for s in b.values())
    versions = {
        json.loads(s["meta.json"])["arxiv_id"]: json.loads(s["meta.json"])["arxiv_version"]
        for s in b.values()
    }
    assert versions == {"1501.00001": 2, "1501.00002": 1}


SITE_CSS = b"body { font-family: 'DejaVu Serif'; margin: 40px; } h1 { color: #a33; font-size: 40px; }"
SITE_PAGES = {
    "a.html": "<h1>Harbour notes</h1><p>Boats leave the harbour at dawn and the nets come in by noon.</p>"
    '<img src="pic.png" width="120" height="60"><p>The market opens when the first boat is back.</p>',
    "b.html": "<h1>Orchard notes</h1><p>Apples ripen in the valley before the hills.</p>"
    '<img src="gone.png" width="50" height="50"><p>The press runs through October.</p>',
}


def _site_page(body: str) -> bytes:
    return f'<!doctype html><html><head><link rel="stylesheet" href="style.css"></head><body>{body}</body></html>'.encode()


def _warc(path: Path, records: list[tuple[str, str, bytes, str]]) -> None:
    """A gzipped WARC of HTTP responses (url, status line, body, content type), as a crawler writes them."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, status, body, kind in records:
            headers = StatusAndHeaders(
                status, [("Content-Type", kind), ("Content-Length", str(len(body)))], protocol="HTTP/1.1"
            )
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


@pytest.mark.slow
def test_web_pages_from_a_warc_build_what_the_same_pages_build_from_a_folder(tmp_path):
    """Two pages with a stylesheet and an image, in a folder and in a WARC (with a 404 and a non-HTML record):
    the archive's pages give the folder's tiles and labels, their sub-resources answered from the archive; the
    image the archive lacks is counted as `blocked_network`; a CDX index picks which pages are built."""
    picture = io.BytesIO()
    Image.new("RGB", (120, 60), (40, 90, 160)).save(picture, format="PNG")
    site = tmp_path / "site"
    site.mkdir()
    (site / "style.css").write_bytes(SITE_CSS)
    (site / "pic.png").write_bytes(picture.getvalue())
    for name, body in SITE_PAGES.items():
        (site / name).write_bytes(_site_page(body))
    archive = tmp_path / "warc" / "crawl-00000.warc.gz"
    archive.parent.mkdir()
    origin = "https://example.org/notes/"
    _warc(archive, [
        *((origin + name, "200 OK", _site_page(body), "text/html; charset=utf-8") for name, body in SITE_PAGES.items()),
        (origin + "style.css", "200 OK", SITE_CSS, "text/css"),
        (origin + "pic.png", "200 OK", picture.getvalue(), "image/png"),
        (origin + "missing.html", "404 Not Found", b"<h1>Not found</h1>", "text/html"),
    ])  # fmt: skip
    opts = ["source=web", "workers=1", "filters.languages=all", "dedup=false"]
    want = summary(build(*opts, f"input={site}", f"output={tmp_path / 'want'}"))
    got = summary(build(*opts, f"input={archive.parent}", f"output={tmp_path / 'got'}"))
    assert got["samples"] == want["samples"] == 2 and got["skips"] == {"blocked_network": 1}, (got, want)
    a, b = read_shards(tmp_path / "want"), read_shards(tmp_path / "got")
    assert sorted((pixels(s["png"]), s["layout.json"]) for s in a.values()) == sorted(
        (pixels(s["png"]), s["layout.json"]) for s in b.values()
    )
    assert sorted(json.loads(s["meta.json"])["origin"] for s in b.values()) == [
        origin + "a.html",
        origin + "b.html",
    ]

    cdx = tmp_path / "pick.cdx"
    cdx.write_text(
        f"org,example)/notes/b.html 20260101000000 {origin}b.html text/html 200 - - - 0 crawl-00000.warc.gz\n"
    )
    picked = summary(
        build(*opts, f"input={archive.parent}", f"output={tmp_path / 'picked'}", f"source.warc_urls={cdx}")
    )
    assert picked["samples"] == 1
    assert [json.loads(s["meta.json"])["origin"] for s in read_shards(tmp_path / "picked").values()] == [
        origin + "b.html"
    ]


def test_the_corpus_is_priced_per_source_with_where_each_rate_comes_from(capsys):
    """`launch.corpus`: pages are the mixture's share of 357.4M unless given; core-hours only where a benchmark
    measured the rate; the importers price the scans at rendering speed instead of Tesseract's."""
    from configs.compose import compose_app
    from launch.corpus import main, price

    rows = {r["source"]: r for r in price(compose_app("corpus", ["sources.scans.pages=27600000"]))}
    assert rows["scans"]["pages"] == 27_600_000 and rows["general_pdf"]["pages"] == 0.20 * 357_400_000
    assert abs(sum(r["pages"] for r in rows.values()) - 357_400_000 - (27_600_000 - 35_740_000)) < 1
    assert rows["scans"]["core_hours"] == 27_600_000 / 1.15 / 3600
    assert rows["scans"]["import_core_hours"] == 27_600_000 / (160 * 1.12) / 3600  # source=pdf's rate x 1.12
    assert (
        price(compose_app("corpus", ["importer_pages_per_s=100"]))[0]["import_core_hours"]
        == 35_740_000 / 360000
    )
    assert rows["math"]["core_hours"] is None and rows["math"]["measured"] is None  # no builder
    assert rows["docx_md"]["core_hours"] == rows["docx_md"]["pages"] / 3.07 / 3600
    assert main(["cores=512"]) == 0
    out = capsys.readouterr().out
    assert "not measured" in out and "days on 512 cores" in out and "benchmarks/scan_source.py" in out
    assert main(["bogus=1"]) == 2


def test_source_rates_measures_a_core_s_pages_per_second_of_a_builder(capsys):
    """`benchmarks.source_rates`: the README builder over demo documents through run_task prints its pages
    and samples per second and the row for the price table; an unknown source is refused before any work."""
    from benchmarks.source_rates import main

    assert main(["--sources", "readme", "--docs", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("readme "))
    assert int(row[1]) == 1 and int(row[3]) >= 1 and float(row[5]) > 0 and row[6] == "-", out
    assert f"readme_md: pages_per_s: {row[5]}" in out
    assert main(["--sources", "readme,bogus"]) == 2
    assert main(["--sources", "readme", "--input", "docx=/tmp"]) == 2
