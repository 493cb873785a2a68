"""`scan` (IIT-CDIP style): multi-page TIFF, PNG or JPEG pages → layout samples from Tesseract's lines, or
from ready OCR in the Azure Read API v3 shape (`analyzeResult.readResults[].lines[].{text,boundingBox}`,
what the paper used) when a sidecar `<name>.json` sits beside the image."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageSequence, UnidentifiedImageError

from data_pipeline.render.ocr import tesseract_lines
from data_pipeline.schema import DocumentError, Sample, Skip, clean_lines

EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
REQUIRED_TOOLS = ("tesseract",)


def azure_lines(page: dict, width: int, height: int) -> list[dict]:
    """One `readResults[]` page → lines with axis-aligned boxes in pixels of a `width` x `height` image."""
    sx, sy = width / float(page["width"]), height / float(page["height"])
    lines = []
    for line in page.get("lines", []):
        xs, ys = line["boundingBox"][0::2], line["boundingBox"][1::2]
        lines.append({"text": line["text"], "bbox": [min(xs) * sx, min(ys) * sy, max(xs) * sx, max(ys) * sy]})
    return lines


def _sidecar(path: Path) -> list[dict] | None:
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.exists():
            try:
                data = json.loads(candidate.read_text())
                return data["analyzeResult"]["readResults"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DocumentError("bad_ocr_json", f"{candidate}: not an Azure Read v3 result ({e})") from e
    return None


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise DocumentError("corrupt_image", f"{path}: {e}") from e
    with im:
        if im.width * im.height > cfg.max_page_pixels:  # checked before decoding: a bomb never unpacks
            raise DocumentError(
                "pixel_cap", f"{path}: {im.width}x{im.height}", pages=getattr(im, "n_frames", 1)
            )
        n = getattr(im, "n_frames", 1)
        if n > cfg.max_pages_per_doc:
            raise DocumentError("too_many_pages", f"{path}: {n} pages", pages=n)
        ready = _sidecar(path)
        for index, frame in enumerate(ImageSequence.Iterator(im)):
            try:
                image = frame.convert("RGB")
            except OSError as e:
                yield Skip("corrupt_page", detail=f"{path} page {index}: {e}", error=True)
                continue
            scale = min(1.0, cfg.max_side / max(image.size))
            if scale < 1.0:
                image = image.resize(
                    (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
                )
            if ready is not None:
                if index >= len(ready):
                    yield Skip("ocr_json_missing_page", detail=f"{path} page {index}", error=True)
                    continue
                lines, meta = azure_lines(ready[index], image.width, image.height), {"ocr": "azure-read-v3"}
            else:
                lines, meta = tesseract_lines(image, cfg.ocr_lang, cfg.ocr_timeout), {"ocr": "tesseract"}
            lines = clean_lines(lines, image.width, image.height)
            if not lines:
                yield Skip("no_text_found", detail=f"{path} page {index}")
                continue
            yield Sample("scan", doc_id, index, image, str(path), lines=lines, meta=meta)
