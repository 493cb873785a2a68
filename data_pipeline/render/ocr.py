"""Tesseract OCR (Debian `tesseract-ocr`) → text lines with boxes, through its TSV output."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from data_pipeline.schema import DocumentError


def tesseract_pages(
    images: list[Image.Image], lang: str = "eng", timeout: float = 120, psm: int = 3, threads: int = 1
) -> list[list[dict]]:
    """Line-level text and boxes (pixels of each image), in Tesseract's reading order, of several pages
    in one Tesseract run: it loads its model once (0.07 s a run, a tenth of a page's OCR). `timeout` is
    per page.

    Tesseract runs on `threads` OpenMP threads (0: its default, every core). A build runs one worker per
    core, so each Tesseract gets one: left to its default, the workers' threads fight over the cores and a
    200-dpi page takes 8-12 s instead of 0.9 s. Pages are handed over as uncompressed PGM (grey) or PPM
    (colour): no PNG deflate and inflate."""
    exe = shutil.which("tesseract")
    if exe is None:
        raise DocumentError("ocr_unavailable", "tesseract is not installed (Debian package tesseract-ocr)")
    if not images:
        return []
    env = dict(os.environ)
    if threads > 0:
        env["OMP_THREAD_LIMIT"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="literate-ocr-") as tmp:
        listing = []
        for i, image in enumerate(images):
            if image.mode not in ("L", "RGB"):
                image = image.convert("L" if image.mode in ("1", "LA") else "RGB")
            page = Path(tmp) / f"{i:05d}.pnm"
            image.save(page, format="PPM")  # P5 for grey, P6 for RGB
            listing.append(str(page))
        (Path(tmp) / "pages.txt").write_text("\n".join(listing) + "\n")
        limit = timeout * len(images)
        try:
            r = subprocess.run(
                [exe, str(Path(tmp) / "pages.txt"), "stdout", "-l", lang, "--psm", str(psm), "tsv"],
                capture_output=True,
                timeout=limit,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            raise DocumentError("ocr_timeout", f"tesseract took over {limit}s for {len(images)} pages") from e
    if r.returncode != 0:
        raise DocumentError("ocr_failed", r.stderr.decode(errors="replace").strip()[-300:])
    pages: list[dict[tuple[int, int, int], dict]] = [{} for _ in images]
    for row in csv.DictReader(
        io.StringIO(r.stdout.decode("utf-8", errors="replace")), delimiter="\t", quoting=csv.QUOTE_NONE
    ):
        if row.get("level") != "5" or not (row.get("text") or "").strip():
            continue
        key = (int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))
        x, y, w, h = int(row["left"]), int(row["top"]), int(row["width"]), int(row["height"])
        line = pages[int(row["page_num"]) - 1].setdefault(key, {"words": [], "bbox": [x, y, x + w, y + h]})
        line["words"].append(row["text"].strip())
        b = line["bbox"]
        line["bbox"] = [min(b[0], x), min(b[1], y), max(b[2], x + w), max(b[3], y + h)]
    return [[{"text": " ".join(v["words"]), "bbox": v["bbox"]} for v in lines.values()] for lines in pages]


def tesseract_lines(
    image: Image.Image, lang: str = "eng", timeout: float = 120, psm: int = 3, threads: int = 1
) -> list[dict]:
    """`tesseract_pages` of one page."""
    return tesseract_pages([image], lang, timeout, psm, threads)[0]
