"""The one place that knows the token format of the tasks (KOSMOS-2.5 v2, Table 1, and fine-tuning prompts).

    layout:   <s><image> [N image slots] </image><ocr> <bbox><x_a><y_b><x_c><y_d></bbox>text\\n ... </s>
    markdown: <s><image> [N image slots] </image><md> markdown </s>
    prompt:   <s><image> [N image slots] </image> prompt target </s>     (fine-tuning: any text-image task)

A fine-tuning prompt is free text after the image; `<md>` or `<ocr>` in it are the task tokens (the chat
variant prompts `<md>A chat between a curious user and ... USER: {question} ASSISTANT:`). The target follows
the prompt directly. A prompt that leaves no room for a target raises `PromptError`.

Image slots carry the `<s>` id and are replaced by the resampler's output inside the model;
`image_embeds_position_mask` is 1 on slots, -1 on `<image>`/`</image>`, 0 elsewhere (Hugging Face's
processor makes the same). Coordinates are integer pixels of the resized image the vision encoder sees,
rounded down and clamped to `[0, L-1]`. Labels are -100 on the prompt; loss falls on targets only.

Layout lines are checked: a box partly outside the image is clamped into it; a box with x0 > x1 or
y0 > y1, a box entirely outside the image, or a non-finite coordinate raises `LayoutError` naming the
line. Lines with empty text are skipped, and newlines inside a line's text become spaces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from model.kosmos import IGNORE_INDEX
from model.tokenizer import Tokenizer

TASKS = ("ocr", "md")


class LayoutError(ValueError):
    """A layout line that cannot be serialised."""


class PromptError(ValueError):
    """A fine-tuning prompt too long for `max_length`."""


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    image_embeds_position_mask: list[int]
    task: str
    truncated: bool = False  # the target was cut to fit max_length

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.tensor(self.input_ids),
            "labels": torch.tensor(self.labels),
            "image_embeds_position_mask": torch.tensor(self.image_embeds_position_mask),
        }


class TaskFormat:
    def __init__(self, tokenizer: Tokenizer, num_image_tokens: int, max_length: int = 4096):
        self.tok = tokenizer
        self.num_image_tokens = num_image_tokens
        self.coord_bins = tokenizer.coord_bins
        self.max_length = max_length
        self.newline_id = tokenizer.token_id("\n")
        self.bbox_id, self.ebbox_id = tokenizer.token_id("<bbox>"), tokenizer.token_id("</bbox>")
        if max_length <= num_image_tokens + 4:
            raise ValueError(f"max_length={max_length} leaves no room after {num_image_tokens} image slots")

    # ---------------------------------------------------------------- prompt
    def prompt(self, task: str) -> tuple[list[int], list[int]]:
        """Input ids and image-slot mask of the prompt that precedes a target."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        t = self.tok
        n = self.num_image_tokens
        ids = [
            t.bos_id,
            t.token_id("<image>"),
            *([t.bos_id] * n),
            t.token_id("</image>"),
            t.token_id(f"<{task}>"),
        ]
        mask = [0, -1, *([1] * n), -1, 0]
        return ids, mask

    def text_prompt(self, prompt: str) -> tuple[list[int], list[int]]:
        """Input ids and image-slot mask of a fine-tuning prompt: the image, then the prompt's text."""
        t, n = self.tok, self.num_image_tokens
        text = t.encode(prompt)
        ids = [t.bos_id, t.token_id("<image>"), *([t.bos_id] * n), t.token_id("</image>"), *text]
        return ids, [0, -1, *([1] * n), -1, *([0] * len(text))]

    def encode_prompted(self, prompt: str, target: str) -> EncodedSample:
        """A fine-tuning sample: loss on the target (and its `</s>`) only; a target too long is cut."""
        ids, _ = self.text_prompt(prompt)
        if len(ids) + 2 > self.max_length:
            raise PromptError(
                f"the prompt takes {len(ids)} positions with the image; max_length {self.max_length} leaves no "
                "room for a target"
            )
        tokens = self.tok.encode(target)
        return self._assemble("prompt", tokens, list(range(1, len(tokens) + 1)), prompt)

    def prompt_batch(self, task: str, batch: int) -> dict[str, torch.Tensor]:
        ids, mask = self.prompt(task)
        return {
            "input_ids": torch.tensor([ids] * batch),
            "image_embeds_position_mask": torch.tensor([mask] * batch),
        }

    # ---------------------------------------------------------------- encode
    def to_resized(
        self, bbox, image_size: tuple[int, int], resized_size: tuple[int, int], index: int = 0
    ) -> list[int]:
        """A box in stored-image pixels → clamped integer pixels of the resized image."""
        w, h = image_size
        rw, rh = resized_size
        if len(bbox) != 4:
            raise LayoutError(f"line {index}: bbox must have 4 numbers, got {bbox!r}")
        x0, y0, x1, y1 = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise LayoutError(f"line {index}: non-finite bbox {bbox!r}")
        if x0 > x1 or y0 > y1:
            raise LayoutError(f"line {index}: inverted bbox {bbox!r} (needs x0 <= x1 and y0 <= y1)")
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise LayoutError(f"line {index}: bbox {bbox!r} lies outside the {w}x{h} image")
        top = self.coord_bins - 1
        return [
            min(max(math.floor(v * scale), 0), top)
            for v, scale in ((x0, rw / w), (y0, rh / h), (x1, rw / w), (y1, rh / h))
        ]

    def encode_layout(
        self, lines: list[dict], image_size: tuple[int, int], resized_size: tuple[int, int]
    ) -> EncodedSample:
        """`lines` as in `layout.json` (`{"text", "bbox"}` in pixels of the `image_size` image)."""
        t = self.tok
        target: list[int] = []
        cuts: list[int] = []  # target length after each whole line, for truncation at a line boundary
        for i, line in enumerate(lines):
            text = str(line.get("text", "")).replace("\r", " ").replace("\n", " ")
            if not text.strip():
                continue
            x0, y0, x1, y1 = self.to_resized(line.get("bbox", ()), image_size, resized_size, i)
            target += [self.bbox_id, t.x_ids[x0], t.y_ids[y0], t.x_ids[x1], t.y_ids[y1], self.ebbox_id]
            target += [*t.encode(text), self.newline_id]
            cuts.append(len(target))
        return self._assemble("ocr", target, cuts)

    def encode_markdown(self, markdown: str) -> EncodedSample:
        target = self.tok.encode(markdown)
        return self._assemble("md", target, list(range(1, len(target) + 1)))

    def _assemble(
        self, task: str, target: list[int], cuts: list[int], prompt: str | None = None
    ) -> EncodedSample:
        ids, mask = self.prompt(task) if prompt is None else self.text_prompt(prompt)
        room = self.max_length - len(ids)
        truncated = len(target) + 1 > room
        if truncated:
            fitting = [c for c in cuts if c <= room]
            target = target[: fitting[-1] if fitting else room]
        else:
            target = [*target, self.tok.eos_id]
        return EncodedSample(
            input_ids=ids + target,
            labels=[IGNORE_INDEX] * len(ids) + target,
            image_embeds_position_mask=mask + [0] * len(target),
            task=task,
            truncated=truncated,
        )

    def layout_grammar(self):
        """A `logits_processor` for `Kosmos25.generate` that keeps layout output well formed: after `<bbox>`
        come exactly x0, y0, x1, y1 (with x1 >= x0 and y1 >= y0), then `</bbox>`; coordinates and `</bbox>`
        appear nowhere else, and a line's text is not empty. A weak model otherwise tends to close a box
        early, because `</bbox>` is likelier than any single coordinate bin."""
        x_ids = torch.tensor(self.tok.x_ids)
        y_ids = torch.tensor(self.tok.y_ids)
        coords = torch.cat([x_ids, y_ids])
        x_index = {int(t): i for i, t in enumerate(x_ids)}
        y_index = {int(t): i for i, t in enumerate(y_ids)}
        bbox, ebbox = self.bbox_id, self.ebbox_id
        stops = (self.newline_id, self.tok.eos_id, bbox)

        def process(generated: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            for row, ids in enumerate(generated.tolist()):
                opened = max((i for i, t in enumerate(ids) if t == bbox), default=-1)
                closed = max((i for i, t in enumerate(ids) if t == ebbox), default=-1)
                if opened > closed:  # inside a box: the k-th coordinate, then the closing token
                    box = ids[opened + 1 :]
                    k = len(box)
                    if k == 4:
                        allowed[row, ebbox] = True
                    elif k in (0, 2):
                        low = x_index.get(box[0], 0) if k == 2 else 0
                        allowed[row, x_ids[low:].to(logits.device)] = True
                    else:
                        low = y_index.get(box[1], 0) if k == 3 else 0
                        allowed[row, y_ids[low:].to(logits.device)] = True
                else:
                    allowed[row] = True
                    allowed[row, coords.to(logits.device)] = False
                    allowed[row, ebbox] = False
                    if ids and ids[-1] == ebbox:  # a line has text
                        allowed[row, list(stops)] = False
            return logits.masked_fill(~allowed, float("-inf"))

        return process

    # ----------------------------------------------------------------- parse
    def parse_layout(
        self, generated: str | list[int], resized_size: tuple[int, int], image_size: tuple[int, int]
    ) -> list[dict]:
        """Generated layout text (or ids) → `[{"text", "bbox"}]` with boxes in `image_size` pixels.

        Malformed pieces (a `<bbox>` without four coordinates) are skipped."""
        text = generated if isinstance(generated, str) else self.tok.decode(generated)
        rw, rh = resized_size
        w, h = image_size
        out = []
        for m in _LINE.finditer(text):
            x0, y0, x1, y1 = (int(g) for g in m.group(1, 2, 3, 4))
            # A coordinate was rounded down: the centre of its resized pixel is the closest estimate.
            box = [(x0 + 0.5) * w / rw, (y0 + 0.5) * h / rh, (x1 + 0.5) * w / rw, (y1 + 0.5) * h / rh]
            limits = (w, h, w, h)
            out.append(
                {
                    "text": m.group(5).rstrip("\n"),
                    "bbox": [min(v, lim) for v, lim in zip(box, limits, strict=True)],
                }
            )
        return out


_LINE = re.compile(r"<bbox><x_(\d+)><y_(\d+)><x_(\d+)><y_(\d+)></bbox>(.*?)(?=<bbox>|$)", re.DOTALL)
