"""`scan` (IIT-CDIP style): multi-page TIFF, PNG or JPEG pages → layout samples from Tesseract's lines, or
from ready OCR in the Azure Read API v3 shape (`analyzeResult.readResults[].lines[].{text,boundingBox}`,
what the paper used) when a sidecar `<name>.json` sits beside the image."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from data_pipeline.render.ocr import tesseract_pages
from data_pipeline.schema import DocumentError, Sample, Skip, clean_lines

EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
REQUIRED_TOOLS = ("tesseract",)
GREY_MODES = ("1", "L", "LA")


def azure_lines(page: dict, width: int, height: int) -> list[dict]:
    """One `readResults[]` page → lines with axis-aligned boxes in pixels of a `width` x `height` image."""
    sx, sy = width / float(page["width"]), height / float(page["height"])
    lines = []
    for line in page.get("lines", []):
        xs, ys = line["boundingBox"][0::2], line["boundingBox"][1::2]
        lines.append({"text": line["text"], "bbox": [min(xs) * sx, min(ys) * sy, max(xs) * sx, max(ys) * sy]})
    return lines


def page_image(frame: Image.Image) -> Image.Image:
    """A page as 8-bit grey (grey and bilevel scans: a third of the pixels of RGB to resize, OCR and store)
    or RGB. 16- and 32-bit grey is scaled to 8 bits (PIL's own conversion clips it: a white page)."""
    if frame.mode.startswith("I"):
        levels = np.asarray(frame).astype(np.int64)
        return Image.fromarray((np.clip(levels, 0, 65535) >> 8).astype(np.uint8))
    return frame.convert("L" if frame.mode in GREY_MODES else "RGB")


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
        batch: list[tuple[int, Image.Image]] = []  # pages waiting for one Tesseract run
        for index, frame in enumerate(ImageSequence.Iterator(im)):
            try:
                image = page_image(frame)
            except OSError as e:
                yield Skip("corrupt_page", detail=f"{path} page {index}: {e}", error=True)
                continue
            scale = min(1.0, cfg.max_side / max(image.size))
            if scale < 1.0:
                image = image.resize(
                    (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
                )
            if ready is None:
                batch.append((index, image))
                if len(batch) >= int(cfg.ocr_batch):
                    yield from _ocr_samples(batch, path, doc_id, cfg)
                    batch = []
            elif index >= len(ready):
                yield Skip("ocr_json_missing_page", detail=f"{path} page {index}", error=True)
            else:
                lines = azure_lines(ready[index], image.width, image.height)
                yield _sample(lines, index, image, path, doc_id, "azure-read-v3")
        yield from _ocr_samples(batch, path, doc_id, cfg)


def _ocr_samples(
    batch: list[tuple[int, Image.Image]], path: Path, doc_id: str, cfg
) -> Iterator[Sample | Skip]:
    pages = tesseract_pages(
        [image for _, image in batch], cfg.ocr_lang, cfg.ocr_timeout, threads=int(cfg.ocr_threads)
    )
    for (index, image), lines in zip(batch, pages, strict=True):
        yield _sample(lines, index, image, path, doc_id, "tesseract")


def _sample(
    lines: list[dict], index: int, image: Image.Image, path: Path, doc_id: str, ocr: str
) -> Sample | Skip:
    lines = clean_lines(lines, image.width, image.height)
    if not lines:
        return Skip("no_text_found", detail=f"{path} page {index}")
    return Sample("scan", doc_id, index, image, str(path), lines=lines, meta={"ocr": ocr})
