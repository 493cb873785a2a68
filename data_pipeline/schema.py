"""The sample contract (DESIGN.md): keys, the page image, `layout.json`, `md`, `meta.json`.

Builders yield `Sample`s (or `Skip`s); `encode_sample` turns one into the members of a webdataset tar and
`decode_sample` reads those members back (every reader of shards goes through it: the loader, evaluation,
inspection, the tokenizer's trainer, dedup and the planner).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from data_pipeline.imageio import PageImage, encode_image, image_size, resize_long_side, to_array

BUILDER_VERSION = "0.1.0"
IMAGE_KEYS = ("png", "jpg", "webp")  # the members a page image may be stored as, in order of preference
TEXT_KEYS = ("layout.json", "md")  # the members that hold a page's text
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


@dataclass
class Sample:
    """One page: its image and a layout (`lines`), a markdown (`md`), or both."""

    source: str
    doc_id: str
    page: int
    image: PageImage  # PIL image, or uint8 array (H, W) grey / (H, W, 3) RGB
    origin: str
    lines: list[dict] | None = None  # [{"text", "bbox": [x0, y0, x1, y1]}] in pixels of `image`
    md: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # a fine-tuning sample: the prompt after the image, the target, and the answers
    target: str | None = None  # a prediction is scored against (`data_pipeline/sources/tasks.py`)
    answers: list[str] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return image_size(self.image)

    @property
    def key(self) -> str:
        return make_key(self.source, self.doc_id, self.page)

    def text(self) -> str:
        """The page's text, for filters: layout lines joined, else the markdown."""
        if self.lines is not None:
            return "\n".join(line["text"] for line in self.lines)
        if self.prompt is not None:
            return f"{self.prompt}\n{self.target}"
        return self.md or ""


@dataclass
class Skip:
    """A page (or a whole document when `page` is None) that is counted but not written."""

    reason: str
    pages: int = 1  # pages it stands for; 0 = part of a page that is still written (e.g. its markdown)
    detail: str = ""
    error: bool = False  # True: a failure that counts against the error cap; False: a policy skip


class DocumentError(Exception):
    """A document that cannot be built at all; `reason` is the counted kind."""

    def __init__(self, reason: str, detail: str = "", pages: int = 1):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.pages = reason, detail, pages


def compact_json(obj: Any) -> bytes:
    """`obj` as compact UTF-8 JSON: the bytes of `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`
    for everything a sample holds, written by orjson in an eighth of the time. What orjson refuses (a lone
    surrogate, an integer over 64 bits) is written by `json` with non-ASCII characters escaped, so the bytes
    are always valid UTF-8."""
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, separators=(",", ":")).encode()


def make_key(source: str, doc_id: str, page: int) -> str:
    """`{source}/{doc_id}/{page:05d}` made safe for tar and webdataset: no `.` anywhere, no `..`, no leading
    `/`. When sanitising changes the doc id, a short hash of the original keeps distinct ids distinct."""
    safe = _UNSAFE.sub("_", doc_id).strip("/")
    safe = re.sub(r"/+", "/", safe)
    if safe != doc_id:
        safe = f"{safe}_{hashlib.sha1(doc_id.encode()).hexdigest()[:8]}"
    return f"{_UNSAFE.sub('_', source)}/{safe}/{page:05d}"


def clean_lines(lines: list[dict], width: int, height: int) -> list[dict]:
    """Clamp boxes into the image and drop lines without text or with a non-finite coordinate. A box with no
    area (a zero-width glyph such as U+200C, a combining mark on its own) is widened to one pixel rather than
    losing its text."""
    texts = [" ".join(str(line["text"]).split()) for line in lines]
    kept = [i for i, text in enumerate(texts) if text]
    if not kept:
        return []
    boxes = np.array([lines[i]["bbox"] for i in kept], dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():  # a NaN or infinite coordinate places the line nowhere: dropped
        kept, boxes = [i for i, ok in zip(kept, finite, strict=True) if ok], boxes[finite]
    xs, ys = np.sort(boxes[:, 0::2], axis=1), np.sort(boxes[:, 1::2], axis=1)  # (x0, x1) and (y0, y1) pairs
    for span, size in ((xs, float(width)), (ys, float(height))):
        np.clip(span, 0.0, size, out=span)
        thin = span[:, 1] - span[:, 0] < 1.0
        if thin.any():
            low = np.minimum(span[thin, 0], max(size - 1.0, 0.0))
            span[thin, 0], span[thin, 1] = low, np.minimum(low + 1.0, size)
    rounded = np.round(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1), 2).tolist()
    return [{"text": texts[i], "bbox": box} for i, box in zip(kept, rounded, strict=True)]


def encode_sample(
    sample: Sample, image_format: str = "png", quality: int = 90, max_side: int = 2048, png_level: int = 1
) -> dict[str, Any]:
    """The tar members of a sample. The image's long side is capped at `max_side` (boxes scaled along);
    grey pages stay 8-bit grey. PNG deflates at `png_level` (see `data_pipeline.imageio`)."""
    img = resize_long_side(sample.image, max_side)
    return {
        "__key__": sample.key,
        image_format: encode_image(img, image_format, quality, png_level),
        **label_members(sample, img),
    }


def label_members(sample: Sample, img: PageImage) -> dict[str, Any]:
    """Every member of `encode_sample` but the key and the image, for `img` (the sample's image, resized)."""
    (width, height), (w0, h0) = image_size(img), image_size(sample.image)
    members: dict[str, Any] = {}
    if sample.lines is not None:
        sx, sy = width / w0, height / h0
        scaled = (
            sample.lines
            if sx == sy == 1.0
            else [
                {
                    "text": ln["text"],
                    "bbox": [ln["bbox"][0] * sx, ln["bbox"][1] * sy, ln["bbox"][2] * sx, ln["bbox"][3] * sy],
                }
                for ln in sample.lines
            ]
        )
        layout = {"width": width, "height": height, "lines": clean_lines(scaled, width, height)}
        members["layout.json"] = compact_json(layout)
    if sample.md is not None:
        members["md"] = sample.md.encode()
    if sample.prompt is not None:
        members["prompt.txt"] = sample.prompt.encode()
        members["target.txt"] = (sample.target or "").encode()
        members["answers.json"] = compact_json(sample.answers or [sample.target or ""])
    members["meta.json"] = compact_json(sample_meta(sample))
    return members


def sample_meta(sample: Sample) -> dict[str, Any]:
    """The contents of a sample's `meta.json`."""
    return {
        "source": sample.source,
        "doc_id": sample.doc_id,
        "page": sample.page,
        "origin": sample.origin,
        "builder_version": BUILDER_VERSION,
        "lang": sample.meta.get("lang"),
        **{k: v for k, v in sample.meta.items() if k != "lang"},
    }


def text_member(ext: str) -> bool:
    """`iter_samples(..., wanted=text_member)`: read a page's text members, skip its image."""
    return ext in TEXT_KEYS


def label_member(ext: str) -> bool:
    """`iter_samples(..., wanted=label_member)`: read every member but the image."""
    return ext not in IMAGE_KEYS


class StoredSample:
    """A sample read back from a shard's members (`decode_sample`). Each member is decoded on first use, so
    a reader pays only for what it reads and a bad member raises where it is read: `json.JSONDecodeError`
    or `UnicodeDecodeError` (with `errors="strict"`, the default), or PIL's errors for the image."""

    def __init__(self, members: dict[str, Any], errors: str = "strict"):
        self.members, self.errors = members, errors
        self.key: str = members.get("__key__", "")
        self.image_key: str | None = next((k for k in IMAGE_KEYS if k in members), None)

    def _text(self, name: str) -> str | None:
        data = self.members.get(name)
        return None if data is None else data.decode("utf-8", errors=self.errors)

    def image(self):
        """The page image as PIL opened and loaded it (None when the sample has no image member)."""
        if self.image_key is None:
            return None
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(self.members[self.image_key]))
        image.load()
        return image

    @cached_property
    def layout(self) -> dict | None:
        """`layout.json`: {"width", "height", "lines": [{"text", "bbox"}]} in pixels of the stored image."""
        data = self.members.get("layout.json")
        return None if data is None else json.loads(data)

    @property
    def lines(self) -> list[dict] | None:
        return None if self.layout is None else self.layout["lines"]

    @cached_property
    def md(self) -> str | None:
        return self._text("md")

    @cached_property
    def prompt(self) -> str | None:
        return self._text("prompt.txt")

    @cached_property
    def target(self) -> str | None:
        return self._text("target.txt")

    @cached_property
    def answers(self) -> list[str] | None:
        """The answers a prediction is scored against: `answers.json`, else the target alone."""
        data = self.members.get("answers.json")
        if data is not None:
            return json.loads(data)
        return None if self.target is None else [self.target]

    @cached_property
    def meta(self) -> dict:
        data = self.members.get("meta.json")
        return {} if data is None else json.loads(data)

    def text(self) -> str:
        """The page's text as `Sample.text` gives it: layout lines joined, else prompt and target, else the
        markdown."""
        if self.layout is not None:
            return "\n".join(line["text"] for line in self.lines)
        if self.prompt is not None:
            return f"{self.prompt}\n{self.target}"
        return self.md or ""

    def texts(self) -> list[str]:
        """The page's text as lines: its layout lines' texts, then its markdown's lines."""
        out = [line["text"] for line in self.layout.get("lines", [])] if self.layout is not None else []
        return out + (self.md.splitlines() if self.md is not None else [])


def decode_sample(members: dict[str, Any], errors: str = "strict") -> StoredSample:
    """The members of a sample as webdataset yields them (`__key__` and raw bytes per extension), decoded on
    use; the inverse of `encode_sample`."""
    return StoredSample(members, errors)


class DrawnSample(StoredSample):
    """`decode_sample(encode_sample(sample))` without encoding the image and decoding it again: the same label
    members and the same pixels (a PNG member's: 8-bit grey or RGB, the long side capped at `max_side`), for a
    stream that draws samples and trains on them at once (`benchmarks/learning.py`'s training batches)."""

    def __init__(self, sample: Sample, max_side: int = 2048):
        img = resize_long_side(sample.image, max_side)
        super().__init__({"__key__": sample.key, **label_members(sample, img)})
        self.image_key = "png"
        self.pixels = to_array(img)

    def image(self):
        from PIL import Image

        return Image.fromarray(self.pixels)
