"""Tesseract OCR (Debian `tesseract-ocr`) → text lines with boxes, through its TSV output."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from data_pipeline.schema import DocumentError


def tesseract_lines(image: Image.Image, lang: str = "eng", timeout: float = 120, psm: int = 3) -> list[dict]:
    """Line-level text and boxes (pixels of `image`), in Tesseract's reading order."""
    exe = shutil.which("tesseract")
    if exe is None:
        raise DocumentError("ocr_unavailable", "tesseract is not installed (Debian package tesseract-ocr)")
    with tempfile.TemporaryDirectory(prefix="literate-ocr-") as tmp:
        src = Path(tmp) / "page.png"
        image.convert("RGB").save(src)
        try:
            r = subprocess.run(
                [exe, str(src), "stdout", "-l", lang, "--psm", str(psm), "tsv"],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise DocumentError("ocr_timeout", f"tesseract took over {timeout}s") from e
    if r.returncode != 0:
        raise DocumentError("ocr_failed", r.stderr.decode(errors="replace").strip()[-300:])
    lines: dict[tuple[int, int, int, int], dict] = {}
    for row in csv.DictReader(
        io.StringIO(r.stdout.decode("utf-8", errors="replace")), delimiter="\t", quoting=csv.QUOTE_NONE
    ):
        if row.get("level") != "5" or not (row.get("text") or "").strip():
            continue
        key = (int(row["page_num"]), int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))
        x, y, w, h = int(row["left"]), int(row["top"]), int(row["width"]), int(row["height"])
        line = lines.setdefault(key, {"words": [], "bbox": [x, y, x + w, y + h]})
        line["words"].append(row["text"].strip())
        b = line["bbox"]
        line["bbox"] = [min(b[0], x), min(b[1], y), max(b[2], x + w), max(b[3], y + h)]
    return [{"text": " ".join(v["words"]), "bbox": v["bbox"]} for v in lines.values()]
