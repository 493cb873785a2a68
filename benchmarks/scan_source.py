"""`source=scan` pages/s per worker against a bare `tesseract` loop on the same pages, same run.

    python -m benchmarks.scan_source [--pdfs <dir|glob|list>] [--docs 6] [--pages 4] [--rounds 2] [--check]

Pages: real PDF pages (texlive documentation by default) drawn at 200 dpi in grey and degraded like a scan
(slight rotation, blur, sensor noise), `--pages` to a multi-page TIFF, `--docs` TIFFs. Reference: one
`tesseract <tiff> stdout tsv` per document with one OpenMP thread (one thread per core: what a machine
running one worker per core can give each page), one after another. Ours: the builder's task function on
the same documents in one process (decode, resize, OCR, filters, PNG, tar), the sides taking turns per
document over `--rounds` rounds (medians). Then Tesseract's default threading (every core) on the first
two pages, as the builder ran it before `ocr_threads`, and the build CLI with every core against as many
bare loops in parallel. `--check`: word F1 of the OCR against the PDF's own text, per page.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageFilter

from benchmarks.common import build_config
from data_pipeline.documents import list_inputs
from data_pipeline.task import Task, run_task

DEFAULT_PDFS = "/usr/share/doc/texlive-doc/latex/**/*.pdf"
PAPER_SCAN_PAGES = 27_600_000


def make_scans(pdfs: list[str], out: Path, docs: int, pages: int) -> dict[str, list[str]]:
    """TIFFs of degraded 200-dpi renderings of PDF pages with enough text; returns each TIFF's page texts."""
    rng = np.random.default_rng(0)
    truth: dict[str, list[str]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for path in pdfs:
        with pymupdf.open(path) as doc:
            chosen = [p for p in doc if len(p.get_text().split()) >= 150][:pages]
            if len(chosen) < pages:
                continue
            frames, texts = [], []
            for page in chosen:
                pix = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY)
                img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
                img = img.rotate(float(rng.uniform(-1.2, 1.2)), Image.Resampling.BICUBIC, fillcolor=255)
                img = img.filter(ImageFilter.GaussianBlur(0.6))
                noisy = np.asarray(img, np.float32) + rng.normal(0, 12, (img.height, img.width))
                frames.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
                texts.append(page.get_text())
        tiff = out / f"{len(truth):03d}-{Path(path).stem}.tif"
        frames[0].save(
            tiff, save_all=True, append_images=frames[1:], compression="tiff_deflate", dpi=(200, 200)
        )
        truth[str(tiff)] = texts
        if len(truth) == docs:
            break
    return truth


def bare_tesseract(tiff: str, threads: int = 1, first_page_only: bool = False) -> tuple[float, str]:
    """Seconds and TSV output of one `tesseract` run over a TIFF (all its pages)."""
    env = {**os.environ, "OMP_THREAD_LIMIT": str(threads)} if threads else dict(os.environ)
    src = tiff
    if first_page_only:
        src = tiff + ".p0.pgm"
        with Image.open(tiff) as im:
            im.save(src)
    t = time.perf_counter()
    r = subprocess.run(
        ["tesseract", src, "stdout", "tsv"], env=env, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - t, r.stdout


def tsv_pages(tsv: str) -> dict[int, list[dict]]:
    """Tesseract's TSV words as one line per page (page index from 0), for word F1."""
    pages: dict[int, list[dict]] = {}
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) == 12 and cols[0] == "5" and cols[11].strip():
            pages.setdefault(int(cols[1]) - 1, []).append({"text": cols[11]})
    return pages


def word_f1(
    out: Path, truth: dict[str, list[str]], bare: dict[str, dict[int, list[dict]]]
) -> tuple[list, list]:
    """Word F1 against the PDF's text of each page: (ours, the bare Tesseract run's)."""
    import webdataset as wds

    from train.scoring import word_prf

    ours, reference = [], []
    for tar in sorted(out.glob("shard-*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            meta, layout = json.loads(s["meta.json"]), json.loads(s["layout.json"])
            ref = [{"text": line} for line in truth[meta["origin"]][meta["page"]].splitlines()]
            ours.append(word_prf(layout["lines"], ref)[2])
            reference.append(word_prf(bare[meta["origin"]].get(meta["page"], []), ref)[2])
    return ours, reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pdfs", default=DEFAULT_PDFS)
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--pages", type=int, default=4, help="pages per document")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pdfs = sorted(glob.glob(args.pdfs, recursive=True)) or [d.path for d in list_inputs(args.pdfs, (".pdf",))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = make_scans(pdfs, tmp / "scans", args.docs, args.pages)
        docs = list_inputs(str(tmp / "scans"), (".tif",))
        n_pages = len(docs) * args.pages
        print(f"{len(docs)} documents, {n_pages} pages (200 dpi, grey, degraded)")
        rates: dict[str, list[float]] = {"bare": [], "ours": []}
        bare_lines: dict[str, dict[int, list[dict]]] = {}
        for r in range(args.rounds):
            times = {"bare": 0.0, "ours": 0.0}
            cfg = build_config("scan", tmp / f"ours{r}", source__ocr_threads=1)
            for i, doc in enumerate(docs):
                for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
                    if side == "bare":
                        seconds, tsv = bare_tesseract(doc.path)
                        times["bare"] += seconds
                        bare_lines[doc.path] = tsv_pages(tsv)
                    else:
                        t = time.perf_counter()
                        run_task(Task(i, (doc,)), cfg)
                        times["ours"] += time.perf_counter() - t
            for k in rates:
                rates[k].append(n_pages / times[k])
            print(
                f"round {r}: bare tesseract {rates['bare'][-1]:.3f} pages/s, source=scan {rates['ours'][-1]:.3f}"
                f" pages/s, ratio {rates['ours'][-1] / rates['bare'][-1]:.2f}",
                file=sys.stderr,
            )
        bare, ours = statistics.median(rates["bare"]), statistics.median(rates["ours"])
        ratio = statistics.median(o / b for o, b in zip(rates["ours"], rates["bare"], strict=True))
        print(f"bare tesseract, 1 thread          {bare:6.3f} pages/s")
        print(f"source=scan, one worker           {ours:6.3f} pages/s   ratio {ratio:.2f}")
        # Tesseract's default threading, as the builder ran it before: on one page, it is that slow.
        first = docs[0].path
        default_s = bare_tesseract(first, threads=0, first_page_only=True)[0]
        one_s = bare_tesseract(first, threads=1, first_page_only=True)[0]
        print(
            f"one page, Tesseract's default threads: {default_s:.2f} s, one thread: {one_s:.2f} s "
            f"({default_s / one_s:.1f}x); source=scan is {ours * default_s:.1f}x the default's pages/s"
        )
        workers = os.cpu_count() or 1
        (tmp / "list.txt").write_text("\n".join(d.path for d in docs))
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "data_pipeline.build",
                "source=scan",
                f"input={tmp / 'list.txt'}",
                f"output={tmp / 'cli'}",
                f"workers={workers}",
                "docs_per_shard=1",
                "filters.languages=all",
                "dedup=false",
            ],
            check=True,
            capture_output=True,
        )
        cli = n_pages / (time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(bare_tesseract, [d.path for d in docs]))  # (seconds, output) each
        parallel = n_pages / (time.perf_counter() - t)
        print(
            f"{workers} workers (CLI, start-up included) {cli:.3f} pages/s; {workers} bare loops in parallel "
            f"{parallel:.3f} pages/s; ratio {cli / parallel:.2f}"
        )
        print(
            f"paper's {PAPER_SCAN_PAGES / 1e6:.1f}M scan pages at one-worker speed: "
            f"{PAPER_SCAN_PAGES / ours / 3600:,.0f} core-hours"
        )
        if args.check:
            ours_f1, bare_f1 = word_f1(tmp / f"ours{args.rounds - 1}", truth, bare_lines)
            for name, f1 in (("source=scan", ours_f1), ("bare tesseract", bare_f1)):
                print(
                    f"word F1 against the PDFs' text, {name}: mean {statistics.mean(f1):.3f}, median "
                    f"{statistics.median(f1):.3f}, lowest {min(f1):.3f} over {len(f1)} pages"
                )


if __name__ == "__main__":
    main()
