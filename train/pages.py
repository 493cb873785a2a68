"""Labelled pages to evaluate on, from wherever they are: a build's shards (through its manifest, dedup drops
left out), a glob of shards, the trainer's sources JSON (each entry on its own task), a folder of images with
labels beside them (`page.png` + `page.layout.json` and/or `page.md`), or an OCREval subset in its own layout
(`load_pages`).

OCREval subsets (`format=funsd|sroie|cord`, or `format=auto` to recognise them):

- FUNSD: `annotations/<name>.json` (`{"form": [{"box": [x0, y0, x1, y1], "text": ..., "words": [...]}]}`) beside
  `images/<name>.png`; a form entity is a line.
- SROIE (task 1): `<name>.txt` with lines `x1,y1,x2,y2,x3,y3,x4,y4,text` (the text may hold commas) beside
  `<name>.jpg`; a line is a line.
- CORD: `json/<name>.json` (`{"valid_line": [{"words": [{"quad": {"x1": ..., "y4": ...}, "text": ...}]}]}`) beside
  `image/<name>.png`; a valid line is a line, its words joined by spaces, its box the words' union.

Boxes are axis-aligned (a quadrilateral's bounds). A file that does not parse is named and skipped.
"""

from __future__ import annotations

import glob
import json
import posixpath
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from PIL import Image

from data_pipeline.manifest import Manifest, read_manifest
from data_pipeline.schema import decode_sample
from data_pipeline.storage import UnreadableShard, is_remote, iter_samples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


@dataclass
class EvalPage:
    key: str
    source: str
    image: Image.Image
    lines: list[dict] | None = None  # layout label, boxes in `image` pixels
    markdown: str | None = None
    prompt: str | None = (
        None  # a prompted task (fine-tuning): the prompt, its target, the answers scored against
    )
    target: str | None = None
    answers: list[str] | None = None

    def tasks(self) -> list[str]:
        labels = (("ocr", self.lines), ("md", self.markdown), ("prompt", self.prompt))
        return [t for t, label in labels if label is not None]


def _page_from_sample(members: dict, source: str) -> EvalPage | None:
    sample = decode_sample(members)
    if sample.image_key is None:
        return None
    page = EvalPage(sample.key, source, sample.image().convert("RGB"), sample.lines, sample.md)
    if sample.prompt is not None:
        page.prompt, page.target, page.answers = sample.prompt, sample.target, sample.answers
    return page


def iter_shard_pages(shards, source: str | None, manifest: Manifest | None = None) -> Iterator[EvalPage]:
    """The labelled pages of the shards (paths or URLs) in order, each decoded as it is reached; `manifest`:
    leave out the keys its dedup pass dropped. An unreadable shard is named and passed over."""
    for shard in shards:
        try:
            for sample in iter_samples(shard):
                if manifest is not None and manifest.dropped(sample["__key__"]):
                    continue
                name = (
                    source
                    or json.loads(sample.get("meta.json", b"{}") or b"{}").get("source")
                    or posixpath.basename(posixpath.dirname(str(shard)))
                )
                try:
                    page = _page_from_sample(sample, name)
                except (OSError, ValueError, KeyError) as e:
                    print(f"warning: {shard}: sample {sample['__key__']}: {e}; skipped", file=sys.stderr)
                    continue
                if page is not None:
                    yield page
        except UnreadableShard as e:
            print(f"warning: {e.url}: unreadable shard ({e.reason}); skipped", file=sys.stderr)


def shard_pages(shards, source: str | None, n: int, manifest: Manifest | None = None) -> list[EvalPage]:
    """Up to `n` labelled pages from the shards in order (`iter_shard_pages`)."""
    return list(islice(iter_shard_pages(shards, source, manifest), n))


def line_crops(
    pages: Iterable[EvalPage],
    words: tuple[int, int] = (1, 3),
    margin: float = 0.25,
    count: int | None = None,
    charset: set[str] | None = None,
) -> list[EvalPage]:
    """Crops of the pages' labelled lines holding `words[0]`..`words[1]` words (split on white space), each a
    one-line EvalPage with its box moved into the crop: real text for a reader of snippets. `pages` may be an
    iterator (`iter_pages`): only the crops are kept, never the pages. `margin` pads each
    side by that fraction of the line's height (within the page); a line with a character outside `charset`, or a
    box under 6 px high, is left out. `count` keeps an even sample of the qualifying lines, in page order."""
    crops = []
    for page in pages:
        for i, line in enumerate(page.lines or []):
            text, (x0, y0, x1, y1) = line["text"].strip(), line["bbox"]
            if not words[0] <= len(text.split()) <= words[1] or y1 - y0 < 6 or x1 <= x0:
                continue
            if charset is not None and not set(text) <= charset:
                continue
            pad = margin * (y1 - y0)
            box = (
                max(0, int(x0 - pad)),
                max(0, int(y0 - pad)),
                min(page.image.width, int(x1 + pad + 1)),
                min(page.image.height, int(y1 + pad + 1)),
            )
            moved = [x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1]]
            image = page.image.crop(box)
            crops.append(EvalPage(f"{page.key}/{i}", page.source, image, [{"text": text, "bbox": moved}]))
    if count is not None and len(crops) > count:
        crops = [crops[i * len(crops) // count] for i in range(count)]
    return crops


def iter_manifest_pages(root: str, source: str | None) -> Iterator[EvalPage]:
    """The labelled pages of the build at `root` (a folder or a URL), one at a time."""
    manifest = read_manifest(root)
    shards = (manifest.url(i) for i in range(len(manifest)))
    return iter_shard_pages(shards, source or manifest.source, manifest)


def manifest_pages(root: str, source: str | None, n: int) -> list[EvalPage]:
    """Up to `n` labelled pages of the build at `root` (a folder or a URL)."""
    return list(islice(iter_manifest_pages(root, source), n))


def _folder_pages(folder: Path, n: int) -> list[EvalPage]:
    pages = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        layout, md = path.with_suffix(".layout.json"), path.with_suffix(".md")
        if not layout.exists() and not md.exists():
            continue
        image = Image.open(path).convert("RGB")
        lines = json.loads(layout.read_text())["lines"] if layout.exists() else None
        pages.append(EvalPage(path.stem, folder.name, image, lines, md.read_text() if md.exists() else None))
        if len(pages) >= n:
            break
    return pages


def load_pages(data: str, n: int, fmt: str = "auto") -> list[EvalPage]:
    """Up to `n` labelled pages per source from shards, a build folder, a sources JSON, an image folder or an
    OCREval subset in its own layout (`fmt`: funsd, sroie, cord, or auto to recognise them)."""
    path = Path(data)
    kind = detect_ocreval(path) if fmt == "auto" and path.is_dir() else (None if fmt == "auto" else fmt)
    if kind is not None:
        return ocreval_pages(path, kind, n)
    if path.suffix == ".json" and path.is_file():  # the trainer's sources: each entry scored on its own task
        pages = []
        for entry in json.loads(path.read_text()):
            for page in manifest_pages(entry["root"], entry["name"], n):
                task = entry.get("task")
                page.lines = page.lines if task == "ocr" else None
                page.markdown = page.markdown if task == "md" else None
                page.prompt = page.prompt if task == "prompt" else None
                if page.tasks():
                    pages.append(page)
        return pages
    if _is_build(data):
        return manifest_pages(data, None, n)
    if path.is_dir():
        pages = _folder_pages(path, n)
        if not pages:
            raise FileNotFoundError(f"{path}: no labelled images (page.png with page.layout.json or page.md)")
        return pages
    by_source: dict[str, list[EvalPage]] = defaultdict(list)
    for page in iter_shard_pages(_shards(data), None):
        if len(by_source[page.source]) < n:
            by_source[page.source].append(page)
    return [p for group in by_source.values() for p in group]


def iter_pages(data: str, fmt: str = "auto") -> Iterator[EvalPage]:
    """Every labelled page of `data` (as `load_pages` reads it), one at a time: a build's or shards' pages are
    decoded as they are reached, so a caller that keeps parts of them (`line_crops`) holds no more than those.
    A missing shard or folder is refused before the first page."""
    path = Path(data)
    if fmt == "auto" and _is_build(data):
        return iter_manifest_pages(data, None)
    if fmt == "auto" and not path.is_dir() and not (path.suffix == ".json" and path.is_file()):
        return iter_shard_pages(_shards(data), None)
    return iter(load_pages(data, 10**9, fmt))  # a folder, an OCREval subset, a sources JSON: read whole


def _is_build(data: str) -> bool:
    path = Path(data)
    return (is_remote(data) and not data.endswith(".tar")) or (
        path.is_dir() and (path / "manifest.json").exists()
    )


def _shards(data: str) -> list[str]:
    """The shards a path, a glob or a URL names; missing ones refused, by name."""
    if is_remote(data):
        return [data]
    shards = sorted(glob.glob(data)) if any(c in data for c in "*?[") else [data]
    missing = [s for s in shards if not Path(s).exists()]
    if not shards or missing:
        raise FileNotFoundError(f"{data}: no such shard, folder or file {' '.join(missing[:3])}".rstrip())
    return shards


# ------------------------------------------------------------ OCREval


FORMATS = ("funsd", "sroie", "cord")


def detect_ocreval(folder: Path) -> str | None:
    """The OCREval layout of `folder`, or None."""
    if (folder / "annotations").is_dir() and (folder / "images").is_dir():
        return "funsd"
    if (folder / "json").is_dir() and (folder / "image").is_dir():
        return "cord"
    if any(p.with_suffix(".jpg").exists() for p in folder.glob("*.txt")):
        return "sroie"
    return None


def _image(folder: Path, stem: str) -> Path | None:
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


def ocreval_pages(folder: Path, kind: str, n: int) -> list[EvalPage]:
    """Up to `n` pages of an OCREval subset in its own layout."""
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
