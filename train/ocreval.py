"""The OCREval subsets in their own layouts, as pages with text lines and boxes for `train.evaluate`
(`data=<folder> format=funsd|sroie|cord`, or `format=auto`):

- FUNSD: `annotations/<name>.json` (`{"form": [{"box": [x0, y0, x1, y1], "text": ..., "words": [...]}]}`) beside
  `images/<name>.png`; a form entity is a line.
- SROIE (task 1): `<name>.txt` with lines `x1,y1,x2,y2,x3,y3,x4,y4,text` (the text may hold commas) beside
  `<name>.jpg`; a line is a line.
- CORD: `json/<name>.json` (`{"valid_line": [{"words": [{"quad": {"x1": ..., "y4": ...}, "text": ...}]}]}`) beside
  `image/<name>.png`; a valid line is a line, its words joined by spaces, its box the words' union.

Boxes are axis-aligned (a quadrilateral's bounds). A file that does not parse is named and skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

FORMATS = ("funsd", "sroie", "cord")


def detect(folder: Path) -> str | None:
    """The OCREval layout of `folder`, or None."""
    if (folder / "annotations").is_dir() and (folder / "images").is_dir():
        return "funsd"
    if (folder / "json").is_dir() and (folder / "image").is_dir():
        return "cord"
    if any(p.with_suffix(".jpg").exists() for p in folder.glob("*.txt")):
        return "sroie"
    return None


def _image(folder: Path, stem: str) -> Path | None:
    from train.evaluate import IMAGE_SUFFIXES

    return next((folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").exists()), None)


def _bounds(xs: list[float], ys: list[float]) -> list[float]:
    return [min(xs), min(ys), max(xs), max(ys)]


def funsd_lines(path: Path) -> list[dict]:
    return [
        {"text": " ".join(str(e["text"]).split()), "bbox": [float(v) for v in e["box"]]}
        for e in json.loads(path.read_text())["form"]
        if str(e.get("text", "")).strip()
    ]


def sroie_lines(path: Path) -> list[dict]:
    lines = []
    for row in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = row.split(",", 8)
        if len(parts) < 9 or not parts[8].strip():
            continue
        coords = [float(v) for v in parts[:8]]
        lines.append({"text": parts[8].strip(), "bbox": _bounds(coords[0::2], coords[1::2])})
    return lines


def cord_lines(path: Path) -> list[dict]:
    lines = []
    for line in json.loads(path.read_text())["valid_line"]:
        words = [w for w in line["words"] if str(w.get("text", "")).strip()]
        if not words:
            continue
        xs = [float(w["quad"][f"x{i}"]) for w in words for i in range(1, 5)]
        ys = [float(w["quad"][f"y{i}"]) for w in words for i in range(1, 5)]
        lines.append({"text": " ".join(str(w["text"]) for w in words), "bbox": _bounds(xs, ys)})
    return lines


def pages(folder: Path, kind: str, n: int) -> list:
    """Up to `n` pages of an OCREval subset in its own layout."""
    from train.evaluate import EvalPage

    if kind not in FORMATS:
        raise ValueError(f"format={kind!r}: one of {', '.join(FORMATS)} (or auto)")
    labels, images, read = {
        "funsd": (folder / "annotations", folder / "images", funsd_lines),
        "sroie": (folder, folder, sroie_lines),
        "cord": (folder / "json", folder / "image", cord_lines),
    }[kind]
    out = []
    for label in sorted(labels.glob("*.txt" if kind == "sroie" else "*.json")):
        image = _image(images, label.stem)
        if image is None:
            print(f"warning: {label}: no image {label.stem}.* in {images}; skipped", file=sys.stderr)
            continue
        try:
            lines = read(label)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            print(f"warning: {label}: not a {kind} label ({type(e).__name__}: {e}); skipped", file=sys.stderr)
            continue
        with Image.open(image) as im:
            out.append(EvalPage(label.stem, f"{kind}", im.convert("RGB"), lines))
        if len(out) >= n:
            break
    if not out:
        raise FileNotFoundError(f"{folder}: no {kind} pages (labels in {labels}, images in {images})")
    return out
