"""Evaluation with the paper's metrics:

    python -m train.evaluate checkpoint=<run dir, checkpoint or Hugging Face directory> data=<shards or image folder> out=<dir>
        [n=64] [max_new_tokens=512] [batch=4] [num_beams=1] [tasks=[ocr,md]] [tokenizer=<dir>] [draw=8] [device=cpu]

Keys and defaults are in `configs/tools/evaluate.yaml`; they are Hydra overrides, as for training.

`checkpoint`: a run directory (its consolidated `model.pt`, or else its latest DeepSpeed checkpoint), one
checkpoint folder of a run (`runs/x/checkpoints/step0001000`), or a Hugging Face `save_pretrained`
directory (weights by `model.hf.load_hf`, `max_patches` from its `preprocessor_config.json`, the tokenizer
from the directory or `tokenizer=`).
`data`: a build's output folder (`manifest.json`), a shard, a glob of shards, a sources JSON as the trainer
takes, or a folder of images with labels beside them (`page.png` + `page.layout.json` and/or `page.md`).

Each held-out page is scored on every task it has a label for: text recognition (`ocr`: word P/R/F1, IoU of
matched boxes, NED) and image to markdown (`md`: NED, NTED). The validation loss is measured twice, with each
page's own image and with the images shuffled across pages (same targets): the gap shows how much the model
reads the image. Writes `metrics.json`, `metrics.md`, `predictions.jsonl` and `pages/*.png` (predicted boxes
in red over the reference boxes in green).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from model.kosmos import Kosmos25
from model.processor import ImageProcessor
from model.task_format import LayoutError, PromptError, TaskFormat
from model.tokenizer import Tokenizer
from train.checkpoint import load_run
from train.pages import EvalPage, load_pages
from train.samples import collate
from train.scoring import anls, exact_match, layout_scores, markdown_scores

METRICS = {
    "ocr": ("precision", "recall", "f1", "iou", "ned"),
    "md": ("ned", "nted"),
    "prompt": ("anls", "em"),
}
TASK_TITLES = (("ocr", "Text recognition"), ("md", "Image to markdown"), ("prompt", "Prompted tasks"))


# ---------------------------------------------------------------- evaluator


def draw_layout(image: Image.Image, pred: list[dict], ref: list[dict] | None = None) -> Image.Image:
    """The page with reference boxes (green) and predicted boxes (red) drawn."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 500))
    for line in ref or []:
        draw.rectangle(line["bbox"], outline=(0, 170, 0), width=width)
    for line in pred:
        x0, y0, x1, y1 = line["bbox"]
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=(220, 0, 0), width=width)
    return out


class Evaluator:
    """Validation loss and generated predictions for a fixed list of held-out pages.

    `forward` runs the model's forward with keyword inputs (the model itself, or a DeepSpeed engine so that
    every rank takes part under ZeRO-3); `rank`/`world` split the loss batches between data-parallel ranks."""

    def __init__(self, model: Kosmos25, tok: Tokenizer, max_length: int, batch: int = 4, num_beams: int = 1):
        self.model, self.tok, self.batch, self.num_beams = model, tok, batch, num_beams
        self.fmt = TaskFormat(tok, model.config.latent_query_num, max_length)
        self.processor = ImageProcessor(model.config.max_patches)
        self.items: list[dict] = []  # one per (page, task)
        self.skipped: dict[str, int] = defaultdict(int)

    def prepare(self, pages: list[EvalPage], tasks: tuple[str, ...] = ("ocr", "md", "prompt")) -> None:
        for page in pages:
            processed = self.processor(page.image)
            size, resized = (page.image.width, page.image.height), (processed.width, processed.height)
            for task in page.tasks():
                if task not in tasks:
                    continue
                try:
                    if task == "ocr":
                        enc = self.fmt.encode_layout(page.lines, size, resized)
                    elif task == "md":
                        enc = self.fmt.encode_markdown(page.markdown)
                    else:
                        enc = self.fmt.encode_prompted(page.prompt, page.target)
                except (LayoutError, PromptError) as e:
                    self.skipped[f"bad_label:{page.source}"] += 1
                    print(f"warning: {page.source}/{page.key}: {e}; skipped", file=sys.stderr)
                    continue
                self.items.append(
                    {
                        "key": page.key,
                        "source": page.source,
                        "task": task,
                        "page": page,
                        "resized": resized,
                        "flattened_patches": processed.flattened_patches,
                        **enc.tensors(),
                    }
                )

    def groups(self) -> list[tuple[str, str]]:
        return sorted({(it["source"], it["task"]) for it in self.items})

    @torch.no_grad()
    def losses(
        self, forward=None, rank: int = 0, world: int = 1, shuffle_images: bool = False, seed: int = 0
    ):
        """Token-weighted validation loss per (source, task), per task and over all tasks ("all"), summed over
        all ranks.

        `shuffle_images`: each target is scored with another page's image (a derangement within its task),
        which measures how much of the loss the image explains."""
        forward = forward or self.model
        device = next(self.model.parameters()).device
        patches = [it["flattened_patches"] for it in self.items]
        if shuffle_images:
            for task in METRICS:
                idx = [i for i, it in enumerate(self.items) if it["task"] == task]
                if len(idx) > 1:
                    shift = random.Random(seed).randrange(1, len(idx))
                    moved = [patches[idx[(k + shift) % len(idx)]] for k in range(len(idx))]
                    for i, p in zip(idx, moved, strict=True):
                        patches[i] = p
        order = list(range(len(self.items)))
        batches = [order[i : i + self.batch] for i in range(0, len(order), self.batch)]
        per_rank = -(-len(batches) // world) if batches else 0
        groups = self.groups()
        index = {g: i for i, g in enumerate(groups)}
        totals = torch.zeros(len(groups), 2, dtype=torch.float64)
        for b in range(per_rank):  # every rank runs the same number of forwards (ZeRO-3 gathers collectively)
            k = rank + b * world
            chosen = batches[k] if k < len(batches) else batches[0]
            weight = 1.0 if k < len(batches) else 0.0
            items = [{**self.items[i], "flattened_patches": patches[i]} for i in chosen]
            batch = collate(items, self.tok.pad_id)
            inputs = {
                key: batch[key].to(device)
                for key in ("flattened_patches", "input_ids", "labels", "image_embeds_position_mask")
            }
            if next(self.model.parameters()).dtype == torch.bfloat16:
                inputs["flattened_patches"] = inputs["flattened_patches"].to(torch.bfloat16)
            out = forward(**inputs, compute_logits=False)
            for j, i in enumerate(chosen):
                g = index[(self.items[i]["source"], self.items[i]["task"])]
                totals[g, 0] += weight * float(out.sample_loss_sums[j])
                totals[g, 1] += weight * float(out.sample_tokens[j])
        if world > 1:
            totals = totals.to(device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        result: dict[str, float] = {}
        by_task: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for (source, task), (s, n) in zip(groups, totals.tolist(), strict=True):
            result[f"{source}/{task}"] = s / max(n, 1.0)
            by_task[task][0] += s
            by_task[task][1] += n
        for task, (s, n) in by_task.items():
            result[task] = s / max(n, 1.0)
        if len(by_task) > 1:
            result["all"] = sum(s for s, _ in by_task.values()) / max(
                sum(n for _, n in by_task.values()), 1.0
            )
        return result

    @torch.no_grad()
    def predict(self, items: list[dict] | None = None, max_new_tokens: int = 512) -> list[dict]:
        """Greedy generation (beam search with `num_beams` > 1) for each item; layout predictions parsed into
        lines in the page's pixels."""
        items = self.items if items is None else items
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        out = []
        for task in METRICS:
            chosen = [it for it in items if it["task"] == task]
            size = 1 if task == "prompt" else self.batch  # prompts differ in length: one at a time
            for i in range(0, len(chosen), size):
                group = chosen[i : i + size]
                if task == "prompt":
                    ids, mask = self.fmt.text_prompt(group[0]["page"].prompt)
                    prompt = {
                        "input_ids": torch.tensor([ids]),
                        "image_embeds_position_mask": torch.tensor([mask]),
                    }
                else:
                    prompt = self.fmt.prompt_batch(task, len(group))
                ids = self.model.generate(
                    torch.stack([it["flattened_patches"] for it in group]).to(device, dtype),
                    prompt["input_ids"].to(device),
                    prompt["image_embeds_position_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=self.tok.eos_id,
                    logits_processor=self.fmt.layout_grammar() if task == "ocr" else None,
                    num_beams=self.num_beams,
                )
                for it, row in zip(group, ids.tolist(), strict=True):
                    text = self.tok.decode(row)
                    page = it["page"]
                    truth = (
                        "\n".join(ln["text"] for ln in page.lines)
                        if task == "ocr"
                        else (page.markdown if task == "md" else page.target)
                    )
                    record = {
                        "key": it["key"],
                        "source": it["source"],
                        "task": task,
                        "text": text,
                        "truth": truth,
                    }
                    if task == "ocr":
                        image_size = (page.image.width, page.image.height)
                        record["lines"] = self.fmt.parse_layout(row, it["resized"], image_size)
                    out.append(record)
        return out

    def score(self, predictions: list[dict]) -> dict:
        """Per-source and overall means of the page scores."""
        refs = {(it["key"], it["source"], it["task"]): it["page"] for it in self.items}
        scores: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for p in predictions:
            page = refs[(p["key"], p["source"], p["task"])]
            if p["task"] == "ocr":
                s = layout_scores(p["lines"], page.lines)
            elif p["task"] == "md":
                s = markdown_scores(p["text"], page.markdown)
            else:
                s = {"anls": anls(p["text"], page.answers), "em": exact_match(p["text"], page.answers)}
            p["scores"] = s
            scores[(p["source"], p["task"])].append(s)
            scores[("overall", p["task"])].append(s)
        table: dict[str, dict[str, dict]] = defaultdict(dict)
        for (source, task), rows in sorted(scores.items()):
            table[source][task] = {
                "pages": len(rows),
                **{m: sum(r[m] for r in rows) / len(rows) for m in METRICS[task]},
            }
        return dict(table)


def markdown_table(metrics: dict, losses: dict, shuffled: dict) -> str:
    out = []
    for task, title in TASK_TITLES:
        rows = [(src, t[task]) for src, t in metrics.items() if task in t]
        if not rows:
            continue
        names = METRICS[task]
        out += [
            f"### {title} (`<{task}>`)",
            "",
            "| source | pages | "
            + " | ".join(n.upper() if n != "f1" else "F1" for n in names)
            + " | val loss | val loss, shuffled images |",
            "|---|---:|" + "---:|" * (len(names) + 2),
        ]
        for src, row in sorted(rows, key=lambda r: (r[0] == "overall", r[0])):
            key = task if src == "overall" else f"{src}/{task}"
            cells = " | ".join(f"{100 * row[n]:.1f}" for n in names)
            loss = f"{losses.get(key, float('nan')):.3f} | {shuffled.get(key, float('nan')):.3f}"
            name = f"**{src}**" if src == "overall" else src
            out.append(f"| {name} | {row['pages']} | {cells} | {loss} |")
        out.append("")
    return "\n".join(out)


def evaluate(
    checkpoint: str,
    data: str,
    out: Path,
    n: int = 64,
    max_new_tokens: int = 512,
    batch: int = 4,
    tasks: tuple[str, ...] = ("ocr", "md", "prompt"),
    tokenizer: str | None = None,
    draw: int = 8,
    device: str = "cpu",
    max_length: int = 4096,
    fmt: str = "auto",
    num_beams: int = 1,
) -> dict:
    from tqdm import tqdm

    model, tok = load_run(checkpoint, tokenizer)
    model.to(device)
    pages = load_pages(data, n, fmt)
    ev = Evaluator(model, tok, min(max_length, model.config.text.max_position_embeddings), batch, num_beams)
    ev.prepare(pages, tasks)
    if not ev.items:
        raise ValueError(f"{data}: no page has a label for tasks {list(tasks)}")
    print(f"evaluating {len(ev.items)} (page, task) pairs from {len(pages)} pages", flush=True)
    losses = ev.losses()
    shuffled = ev.losses(shuffle_images=True)
    predictions = []
    for i in tqdm(range(0, len(ev.items), batch), desc="generating", unit="batch"):
        predictions += ev.predict(ev.items[i : i + batch], max_new_tokens)
    metrics = ev.score(predictions)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "pages": len(pages),
        "metrics": metrics,
        "val_loss": losses,
        "val_loss_shuffled_images": shuffled,
        "skipped": dict(ev.skipped),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "metrics.md").write_text(markdown_table(metrics, losses, shuffled))
    with open(out / "predictions.jsonl", "w") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    drawn = out / "pages"
    drawn.mkdir(exist_ok=True)
    refs = {(it["key"], it["source"]): it["page"] for it in ev.items}
    by_source: dict[str, list[dict]] = defaultdict(list)
    for p in predictions:
        if p["task"] == "ocr":
            by_source[p["source"]].append(p)
    # pages of every source in turn, so a few drawings show the sources' variety
    turns = [
        group[i]
        for i in range(max(map(len, by_source.values()), default=0))
        for group in by_source.values()
        if i < len(group)
    ]
    for p in turns[:draw]:
        page = refs[(p["key"], p["source"])]
        name = f"{p['source']}-{p['key']}".replace("/", "_")
        draw_layout(page.image, p["lines"], page.lines).save(drawn / f"{name}.png")
    return result


def main(argv: list[str]) -> int:
    from configs.compose import answered_help, compose_app

    if answered_help(argv, __doc__, "tools/evaluate.yaml"):
        return 0
    try:
        cfg = compose_app("evaluate", argv)
    except ValueError as e:
        print(
            f"error: {e}\nusage: python -m train.evaluate checkpoint=<run, checkpoint or HF dir> "
            "data=<shards or image folder> out=<dir> [n=64] [max_new_tokens=512] [batch=4] [num_beams=1] "
            "[tasks=[ocr,md]] "
            "[tokenizer=<dir>] [draw=8] [device=cpu] (configs/tools/evaluate.yaml)",
            file=sys.stderr,
        )
        return 2
    out = Path(cfg.out)
    try:
        result = evaluate(
            str(cfg.checkpoint),
            str(cfg.data),
            out,
            n=int(cfg.n),
            max_new_tokens=int(cfg.max_new_tokens),
            batch=int(cfg.batch),
            tasks=tuple(cfg.tasks),
            tokenizer=cfg.tokenizer,
            draw=int(cfg.draw),
            device=str(cfg.device),
            max_length=int(cfg.max_length),
            fmt=str(cfg.format),
            num_beams=int(cfg.num_beams),
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "metrics.md").read_text())
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'predictions.jsonl'}, {out / 'pages'}")
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
