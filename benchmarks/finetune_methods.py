"""Fine-tuning methods side by side: full fine-tuning, LoRA and PeriodicLoRA on a new prompted task.

    python -m benchmarks.finetune_methods [--out DIR] [--pretrain-steps 400] [--steps 240] [--rank 4]

The tiny preset is first pre-trained on the layout task (reading) over made-up invoices
(`data_pipeline.synthetic.invoice_page`, layout shards built by `source=scan` from exact-OCR sidecars), then
taught a task it never saw: "What is the total?" -> the invoice's total (shards built by `source=tasks`). LoRA and
PeriodicLoRA get the same data, steps, rank and learning rate; full fine-tuning (the vision encoder frozen) is the
upper line. Every run goes through `train.finetune` (the real trainer, one process). Reported per method:
trainable parameters, peak resident memory, wall time, held-out loss and ANLS over the run (the trainer's own
validation), and the rank of the accumulated update W_end - W_start of each adapted layer (numerical rank:
singular values above 1e-4 of the largest).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def make_data(root: Path, n_train: int, n_held: int) -> tuple[Path, Path, Path, Path]:
    """Invoices as scan pages with Azure-style OCR sidecars (layout) and as question lines (tasks)."""
    from data_pipeline.synthetic import invoice_page

    out = {}
    for split, n, seed in (("train", n_train, 0), ("held", n_held, 1)):
        rng = random.Random(seed)
        scans, tasks = root / split / "scans", root / split / "tasks"
        scans.mkdir(parents=True, exist_ok=True)
        (tasks / "pages").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            image, lines, total = invoice_page(rng)
            image.save(scans / f"{i}.png")
            image.save(tasks / "pages" / f"{i}.png")
            read = [
                {"text": ln["text"], "boundingBox": [b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]}
                for ln in lines
                for b in [ln["bbox"]]
            ]
            page = {"width": image.width, "height": image.height, "lines": read}
            (scans / f"{i}.json").write_text(json.dumps({"analyzeResult": {"readResults": [page]}}))
            rows.append({"image": f"pages/{i}.png", "prompt": "What is the total?", "target": total})
        (tasks / "questions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        for kind, source in (("scans", "scan"), ("tasks", "tasks")):
            shards = root / split / f"{kind}_shards"
            subprocess.run(
                [sys.executable, "-m", "data_pipeline.build", f"source={source}", f"input={root / split / kind}",
                 f"output={shards}", "workers=2", "dedup=false", "filters.languages=all", "docs_per_shard=32"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            out[(split, kind)] = shards
    files = []
    for split, kind, task, name in (
        ("train", "scans", "ocr", "invoices"),
        ("train", "tasks", "prompt", "invoices"),
        ("held", "tasks", "prompt", "held"),
    ):
        path = root / f"{split}_{kind}.json"
        path.write_text(json.dumps([{"name": name, "root": str(out[(split, kind)]), "task": task}]))
        files.append(path)
    tok = root / "tokenizer"
    from data_pipeline.synthetic import WORDS
    from model.tokenizer import train_tokenizer

    rng = random.Random(2)
    texts = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(2000)]
    texts += [f"TOTAL {rng.randint(1, 400)}.{rng.randint(0, 99):02d} INVOICE Date 2026-" for _ in range(500)]
    train_tokenizer(texts + ["What is the total?"] * 20, tok, vocab_size=1200, coord_bins=256)
    return files[0], files[1], files[2], tok


def _run(module: str, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", module, *args], env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{module} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r, time.perf_counter() - t0


def update_ranks(start: dict, end: dict, targets: tuple[str, ...]) -> list[int]:
    ranks = []
    for key, w0 in start.items():
        if key.endswith(".weight") and key.rsplit(".", 2)[-2] in targets and w0.ndim == 2:
            s = torch.linalg.svdvals(end[key].double() - w0.double())
            ranks.append(int((s > 1e-4 * s.max()).sum()) if s.max() > 0 else 0)
    return ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--train-pages", type=int, default=512)
    ap.add_argument("--held-pages", type=int, default=48)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--interval", type=int, default=40, help="PeriodicLoRA's stage, in steps")
    ap.add_argument("--momentum", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=2e-3, help="LoRA and PeriodicLoRA")
    ap.add_argument("--full-lr", type=float, default=5e-4)
    ap.add_argument("--eval-every", type=int, default=40)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="finetune-methods-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"workdir {root}", flush=True)
    ocr, qa, held, tok = make_data(root, args.train_pages, args.held_pages)
    common = ["model=tiny", f"tokenizer={tok}", "data.workers=1", "trainer.train_batch_size=16",
              "trainer.micro_batch_size=8", "trainer.max_length=160", "trainer.dropout=0", "wandb.mode=disabled",
              "trainer.checkpoint_every=100000"]  # fmt: skip
    pre = root / "pretrained"
    _, seconds = _run(
        "train.pretrain",
        [*common, "stage=layout", f"data.sources_file={ocr}", f"trainer.max_steps={args.pretrain_steps}",
         "optim.lr=2e-3", "optim.warmup_steps=20", "model.image_proj_init_std=1.0", "optim.image_lr_scale=10",
         "eval.every=0", f"run_dir={pre}"],
    )  # fmt: skip
    first = json.loads((pre / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    last = json.loads((pre / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    print(
        f"pre-training (layout task, {args.pretrain_steps} steps): loss {first:.3f} -> {last:.3f}, {seconds:.0f} s"
    )
    start = torch.load(pre / "model.pt", weights_only=True)
    targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    rows = {}
    for method in ("full", "lora", "plora"):
        run = root / method
        lr = args.full_lr if method == "full" else args.lr
        r, seconds = _run(
            "train.finetune",
            [*[c for c in common if not c.startswith(("model=", "tokenizer="))], f"init={pre}",
             f"data.sources_file={qa}", f"data.val_sources_file={held}", f"method={method}", f"run_dir={run}",
             f"trainer.max_steps={args.steps}", f"optim.lr={lr}", "optim.warmup_steps=10",
             f"eval.every={args.eval_every}", f"eval.samples_per_source={args.held_pages}",
             f"eval.predictions={args.held_pages}", "eval.max_new_tokens=8", "eval.shuffled_images=false",
             f"lora.r={args.rank}", f"lora.alpha={2 * args.rank}", f"plora.interval={args.interval}",
             f"plora.momentum={args.momentum}"],
        )  # fmt: skip
        trainable = next(line for line in r.stdout.splitlines() if line.startswith("fine-tuning:"))
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
        ranks = update_ranks(start, torch.load(run / "model.pt", weights_only=True), targets)
        rows[method] = {
            "trainable": trainable.split(", ", 1)[1],
            "peak_mb": max(m["max_rss_mb"] for m in metrics),
            "seconds": seconds,
            "curve": [
                (e["step"], e["val/loss/prompt"], e.get("val/prompt/anls", float("nan"))) for e in evals
            ],
            "ranks": ranks,
        }
    print(f"\n{args.steps} steps, batch 16, held-out {args.held_pages} questions; LoRA rank {args.rank}, "
          f"PeriodicLoRA every {args.interval} steps, momentum {args.momentum}")  # fmt: skip
    print(
        "| method | trainable | peak MiB | s | held-out loss by step | ANLS by step | update rank (min/median/max) |"
    )
    print("|---|---|---:|---:|---|---|---|")
    for method, row in rows.items():
        curve = " ".join(f"{s}:{loss:.3f}" for s, loss, _ in row["curve"])
        anls = " ".join(f"{s}:{a:.2f}" for s, _, a in row["curve"])
        r = sorted(row["ranks"])
        print(f"| {method} | {row['trainable']} | {row['peak_mb']:.0f} | {row['seconds']:.0f} | {curve} | {anls} | "
              f"{r[0]}/{r[len(r) // 2]}/{r[-1]} |")  # fmt: skip
    ratio = rows["plora"]["peak_mb"] / rows["lora"]["peak_mb"]
    print(
        f"\nPeriodicLoRA / LoRA peak memory: {ratio:.3f}; accumulated update rank above r={args.rank} in "
        f"{sum(x > args.rank for x in rows['plora']['ranks'])} of {len(rows['plora']['ranks'])} layers "
        f"(LoRA: {sum(x > args.rank for x in rows['lora']['ranks'])})"
    )
    (root / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
