"""`tasks` (fine-tuning data): image + prompt → target samples, from

- JSONL, one sample a line: `{"image": path, "prompt": str, "target": str}` (optional `"answers": [str]`, the
  answers a prediction is scored against, default `[target]`, and `"id"`);
- DocVQA-style question files (`.json`): `{"data": [{"questionId", "question", "image", "answers": [...]}]}`, the
  prompt made from `source.prompt_template` with the question, the target the first answer.

Image paths are relative to the file's folder and must stay inside it; a missing or unreadable image is skipped
and counted (`missing_image`, `bad_image`), as is a line that is not a sample (`bad_line`). A document is one file;
a page is one sample (its line or entry number)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_pipeline.schema import DocumentError, Sample, Skip

EXTENSIONS = (".jsonl", ".json")


def _entries(path: Path, template: str) -> Iterator[tuple[int, dict | str]]:
    """(index, {"image", "prompt", "target", "answers", "id"}) per sample, or (index, why it is not one)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DocumentError("bad_task_file", f"{path}: not a DocVQA-style question file ({e})") from e
        for i, q in enumerate(data):
            try:
                answers = [str(a) for a in q["answers"]]
                yield (
                    i,
                    {
                        "image": q["image"],
                        "prompt": template.format(question=q["question"]),
                        "target": answers[0],
                        "answers": answers,
                        "id": str(q.get("questionId", i)),
                    },
                )
            except (KeyError, IndexError, TypeError):
                yield i, f"entry {i}: needs question, image and at least one answer"
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entry = {"image": row["image"], "prompt": str(row["prompt"]), "target": str(row["target"])}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            yield i, f"line {i + 1}: not an {{image, prompt, target}} object ({e})"
            continue
        entry["answers"] = [str(a) for a in row.get("answers") or [entry["target"]]]
        entry["id"] = str(row.get("id", i))
        yield i, entry


def build(path: Path, doc_id: str, cfg) -> Iterator[Sample | Skip]:
    folder = path.parent.resolve()
    for index, entry in _entries(path, str(cfg.prompt_template)):
        if isinstance(entry, str):
            yield Skip("bad_line", detail=f"{path}: {entry}", error=True)
            continue
        image_path = (folder / str(entry["image"])).resolve()
        if not image_path.is_relative_to(folder):  # a sample reads only its own file's folder
            yield Skip("image_outside_folder", detail=f"{path}: {entry['image']}", error=True)
            continue
        if not image_path.is_file():
            yield Skip("missing_image", detail=f"{path}: {entry['image']}", error=True)
            continue
        try:
            with Image.open(image_path) as im:
                if im.width * im.height > cfg.max_page_pixels:
                    yield Skip("pixel_cap", detail=f"{image_path}: {im.width}x{im.height}")
                    continue
                image = im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")
        except (UnidentifiedImageError, OSError) as e:
            yield Skip("bad_image", detail=f"{image_path}: {e}", error=True)
            continue
        yield Sample(
            "tasks",
            doc_id,
            index,
            image,
            str(image_path),
            prompt=entry["prompt"],
            target=entry["target"],
            answers=entry["answers"],
            meta={"id": entry["id"]},
        )
