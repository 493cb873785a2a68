"""A source's samples → model inputs: `SourceSpec` (a build and the task its samples train), `Encoder` (a raw
shard sample decoded, its image processed and its label serialised, or the reason it is skipped), `label_size`
(a target's length from the label alone), `collate` (right-padded batches) and `micro_batches` (a rank's
samples of a step cut by length). The loader (`train/loader.py`) runs the encoder in its workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from PIL import UnidentifiedImageError

from data_pipeline.schema import StoredSample, decode_sample
from model.kosmos import IGNORE_INDEX
from model.processor import ImageProcessor
from model.task_format import LayoutError, PromptError, TaskFormat
from train.batch_plan import cut


@dataclass
class SourceSpec:
    name: str
    root: str  # a build's output folder or URL (manifest.json inside): see data_pipeline/storage.py
    weight: float
    task: str  # "ocr", "md" or "prompt" (fine-tuning): which target a sample of this source is trained on

    def __post_init__(self):
        self.root = str(self.root)


class Encoder:
    """A raw shard sample → model inputs (image processing + task serialisation), or a skip reason."""

    def __init__(self, fmt: TaskFormat, processor: ImageProcessor, patch_dtype: torch.dtype = torch.float32):
        self.fmt, self.processor, self.patch_dtype = fmt, processor, patch_dtype

    def __call__(self, spec: SourceSpec, members: dict) -> dict | str:
        return self.encode(spec, decode_sample(members))

    def encode(self, spec: SourceSpec, sample: StoredSample) -> dict | str:
        """A decoded sample (`decode_sample`'s, or a `DrawnSample`) → model inputs, or a skip reason."""
        if sample.image_key is None:
            return "no_image"
        try:
            image = sample.image()
        except (UnidentifiedImageError, OSError, SyntaxError):
            return "bad_image"
        try:
            page = self.processor(image)
        except ValueError:
            return "bad_image"
        try:
            if spec.task == "ocr":
                if sample.layout is None:
                    return "no_layout"
                enc = self.fmt.encode_layout(
                    sample.lines, (image.width, image.height), (page.width, page.height)
                )
            elif spec.task == "prompt":  # a fine-tuning task: prompt.txt and target.txt
                if sample.prompt is None or sample.target is None:
                    return "no_prompt"
                enc = self.fmt.encode_prompted(sample.prompt, sample.target)
            else:
                if sample.md is None:
                    return "no_markdown"
                enc = self.fmt.encode_markdown(sample.md)
        except PromptError:
            return "prompt_too_long"
        except (LayoutError, json.JSONDecodeError, UnicodeDecodeError, KeyError):
            return "bad_label"
        return {
            "key": sample.key,
            "source": spec.name,
            "task": enc.task,
            "truncated": enc.truncated,
            "flattened_patches": page.flattened_patches.to(self.patch_dtype),  # cast here, in the worker
            **enc.tensors(),
        }


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-padded batch: no attention mask is needed under the causal mask (see model/decoder.py)."""
    n = max(len(it["input_ids"]) for it in items)

    def pad(key, value):
        return torch.stack(
            [torch.nn.functional.pad(it[key], (0, n - len(it[key])), value=value) for it in items]
        )

    return {
        "flattened_patches": torch.stack([it["flattened_patches"] for it in items]),
        "input_ids": pad("input_ids", pad_id),
        "labels": pad("labels", IGNORE_INDEX),
        "image_embeds_position_mask": pad("image_embeds_position_mask", 0),
        "lengths": [len(it["input_ids"]) for it in items],  # real positions (the rest is padding)
        "patches": [int((it["flattened_patches"].sum(dim=-1) != 0).sum()) for it in items],  # real patches
        "keys": [it["key"] for it in items],
        "sources": [it["source"] for it in items],
        "tasks": [it["task"] for it in items],
    }


def label_size(fmt: TaskFormat, spec: SourceSpec, members: dict) -> int:
    """A sample's target length in tokens, known without decoding its image (0 when its label is bad: the
    encoder counts it when its turn comes)."""
    sample = decode_sample(members)
    try:
        if spec.task == "ocr":
            layout = sample.layout
            size = (int(layout.get("width") or 1), int(layout.get("height") or 1))
            return len(fmt.encode_layout(layout["lines"], size, size).tensors()["input_ids"])
        if spec.task == "prompt":
            return len(fmt.encode_prompted(sample.prompt, sample.target).input_ids)
        return len(fmt.encode_markdown(sample.md).tensors()["input_ids"])
    except (KeyError, ValueError, TypeError, AttributeError, LayoutError, UnicodeDecodeError):
        return 0


def micro_batches(
    items: list[dict], accumulation: int, pad_id: int, template: dict | None = None
) -> list[dict]:
    """A rank's samples of a step, ordered by target length (ties by slot), cut into `accumulation`
    consecutive micro batches of near-equal size: neighbours in length share a batch, so little is padded.
    A rank with fewer samples than micro batches (uneven ranks, micro batch 1) runs its missing ones on a
    copy of a sample with no target token: nothing is learned from it, the ranks stay in step."""
    items = sorted(items, key=lambda it: (len(it["input_ids"]), it["order"]))
    out = []
    for chunk in cut(items, accumulation):
        if not chunk:
            like = items[0] if items else template
            if like is None:
                raise RuntimeError(
                    "a step without a single readable sample: check the sources and their tasks"
                )
            blank = dict(like, labels=torch.full_like(like["labels"], IGNORE_INDEX))
            batch = collate([blank], pad_id)
            batch.update(keys=[], lengths=[], patches=[])  # nothing of it is a sample
        else:
            batch = collate(chunk, pad_id)
        out.append(batch)
    return out
