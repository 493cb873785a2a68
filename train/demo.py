"""The whole framework on one machine (`make demo`):

    python -m train.demo [--out runs/demo] [--layout-steps 300] [--mixed-steps 200] [--ranks 2]

demo corpus → shards with every builder (training and held-out documents) → tokenizer → stage `layout` then
stage `mixed` of the tiny model through the `deepspeed` launcher → evaluation on the held-out pages →
`<out>/report.md` with sample counts, loss curves, validation loss at the start and end per task, the
image-shuffle check, the metric tables, pages with predicted boxes and the W&B offline runs.

Every phase is skipped when its output is already there, so an interrupted demo continues where it stopped
(delete `<out>` to start afresh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# builder → (corpus folder, task trained on, mixture weight); `latex` is the arXiv build's markdown side.
SOURCES = {
    "synthetic": ("synthetic", "ocr", 3.0),
    "pdf": ("pdf", "ocr", 1.0),
    "scan": ("scan", "ocr", 1.0),
    "powerpoint": ("powerpoint", "ocr", 0.5),
    "arxiv": ("arxiv", "ocr", 0.5),
    "web": ("web", "ocr", 0.5),
    "readme": ("readme", "md", 1.0),
    "docx": ("docx", "md", 1.0),
    "html": ("web", "md", 1.0),
}
MARKDOWN_FROM_ARXIV = ("latex", "arxiv", "md", 0.5)


def _phase(name: str) -> None:
    print(f"\n=== {name} " + "=" * max(0, 70 - len(name)), flush=True)


def _run(cmd: list[str], log: Path | None = None, env: dict | None = None) -> None:
    """Run a command with its output shown (and kept in `log`); a failure stops the demo with its tail."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    with subprocess.Popen(
        [str(c) for c in cmd],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        lines = []
        with open(log, "a") if log else open(os.devnull, "w") as f:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
                lines.append(line)
        if proc.wait():
            raise SystemExit(
                f"demo: command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{''.join(lines[-30:])}"
            )


def build_shards(out: Path, python: str) -> dict[str, dict[str, int]]:
    corpus = out / "corpus"
    if not (corpus / ".done").exists():
        _run([python, "-m", "data_pipeline.demo_corpus", corpus])
        (corpus / ".done").touch()
    counts: dict[str, dict[str, int]] = {}
    for name, (folder, _, _) in SOURCES.items():
        for split in ("train", "val"):
            target = out / "shards" / split / name
            if not (target / "manifest.json").exists():
                cmd = [
                    python, "-m", "data_pipeline.build", f"source={name}", f"input={corpus / folder / split}",
                    f"output={target}", "workers=2", "filters.languages=all",
                ]  # fmt: skip
                _run(cmd, out / "logs" / f"build-{name}-{split}.log")
            manifest = json.loads((target / "manifest.json").read_text())
            counts.setdefault(name, {})[split] = manifest["totals"]["samples"]
    return counts


def sources_files(out: Path) -> tuple[Path, Path]:
    files = []
    for split in ("train", "val"):
        entries = [
            {"name": name, "root": str(out / "shards" / split / name), "weight": w, "task": task}
            for name, (_, task, w) in SOURCES.items()
        ]
        name, build, task, w = MARKDOWN_FROM_ARXIV
        entries.append({"name": name, "root": str(out / "shards" / split / build), "weight": w, "task": task})
        path = out / f"sources-{split}.json"
        path.write_text(json.dumps(entries, indent=1))
        files.append(path)
    return files[0], files[1]


def train_stage(out: Path, stage: str, steps: int, args, tokenizer: Path, train: Path, val: Path) -> Path:
    run_dir = out / stage
    if (run_dir / "model.pt").exists():
        print(f"{run_dir}/model.pt exists: stage {stage} already trained")
        return run_dir
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    overrides = [
        f"stage={stage}", "model=tiny", f"tokenizer={tokenizer}", f"data.sources_file={train}",
        f"data.val_sources_file={val}", "data.workers=1", f"trainer.max_steps={steps}",
        f"trainer.train_batch_size={args.batch}", f"trainer.micro_batch_size={args.batch // (2 * args.ranks)}",
        f"trainer.max_length={args.max_length}", f"optim.lr={args.lr}", f"optim.warmup_steps={args.warmup}",
        "trainer.dropout=0", f"trainer.checkpoint_every={max(steps // 2, 1)}", "trainer.keep_checkpoints=1",
        f"run_dir={run_dir}", f"run_name=demo-{stage}", "wandb.mode=offline", "eval.tasks=[ocr,md]",
        f"eval.every={args.eval_every}", "eval.samples_per_source=8", "eval.predictions=2", "eval.max_new_tokens=160",
    ]  # fmt: skip
    if stage == "mixed":
        overrides.append(f"stage.init_from_dir={out / 'layout'}")
    cmd = [
        deepspeed, "--num_accelerators", str(args.ranks), "--no_local_rank", "--master_port", str(args.port),
        "--module", "train.pretrain", *overrides,
    ]  # fmt: skip
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    _run(cmd, out / "logs" / f"train-{stage}.log", env)
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_curves(out: Path, layout_steps: int) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = {s: _jsonl(out / s / "metrics.jsonl") for s in ("layout", "mixed")}
    evals = {s: _jsonl(out / s / "eval.jsonl") for s in ("layout", "mixed")}
    offset = {"layout": 0, "mixed": layout_steps}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("loss/ocr", "layout task (<ocr>)"), ("loss/md", "markdown task (<md>)")):
        xs = [r["step"] + offset[s] for s in train for r in train[s] if key in r]
        ys = [r[key] for s in train for r in train[s] if key in r]
        ax.plot(xs, ys, label=label, linewidth=1)
    ax.axvline(layout_steps, color="grey", linestyle="--", linewidth=1)
    ax.text(layout_steps, ax.get_ylim()[1] * 0.95, " mixed stage", color="grey")
    ax.set(xlabel="step", ylabel="training loss (nats/token)", title="Training loss per task")
    ax.legend()
    ax.grid(alpha=0.3)
    train_png = out / "loss_train.png"
    fig.tight_layout()
    fig.savefig(train_png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, colour in (("ocr", "tab:blue"), ("md", "tab:orange")):
        for kind, style in (("val/loss", "-"), ("val/loss_shuffled_images", ":")):
            key = f"{kind}/{task}"
            xs = [r["step"] + offset[s] for s in evals for r in evals[s] if key in r]
            ys = [r[key] for s in evals for r in evals[s] if key in r]
            label = f"<{task}> " + ("own images" if kind == "val/loss" else "images shuffled across pages")
            ax.plot(xs, ys, style, color=colour, marker="o", markersize=3, label=label)
    ax.axvline(layout_steps, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="step", ylabel="validation loss (nats/token)", title="Held-out pages")
    ax.legend()
    ax.grid(alpha=0.3)
    val_png = out / "loss_val.png"
    fig.tight_layout()
    fig.savefig(val_png, dpi=110)
    plt.close(fig)
    return train_png, val_png


def write_report(out: Path, counts: dict, timings: dict, layout_steps: int, args) -> Path:
    train_png, val_png = plot_curves(out, layout_steps)
    evals = _jsonl(out / "layout" / "eval.jsonl") + _jsonl(out / "mixed" / "eval.jsonl")
    start, end = evals[0], evals[-1]
    result = json.loads((out / "eval" / "metrics.json").read_text())
    own, shuffled = result["val_loss"], result["val_loss_shuffled_images"]
    lines = [
        "# Literate demo report",
        "",
        f"The tiny model ({args.params / 1e6:.1f}M parameters) trained on CPU through the `deepspeed` launcher with "
        f"{args.ranks} ranks (gloo): stage `layout` for {args.layout_steps} steps, then stage `mixed` for "
        f"{args.mixed_steps} steps from its weights; global batch {args.batch}, lr {args.lr}, warm-up {args.warmup}.",
        "",
        "## Time",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()],
        "",
        "## Samples per source",
        "",
        "| source | task | training samples | held-out samples |",
        "|---|---|---:|---:|",
        *[f"| {n} | {SOURCES[n][1]} | {c['train']} | {c['val']} |" for n, c in counts.items()],
        f"| latex (arXiv markdown) | md | {counts['arxiv']['train']} | {counts['arxiv']['val']} |",
        "",
        "## Loss curves",
        "",
        f"![training loss]({train_png.name})",
        "",
        f"![validation loss]({val_png.name})",
        "",
        "## Validation loss, start and end (held-out pages)",
        "",
        "| task | start (step 0) | end | end / start |",
        "|---|---:|---:|---:|",
    ]
    for task in ("ocr", "md"):
        a, b = start.get(f"val/loss/{task}"), end.get(f"val/loss/{task}")
        if a is not None and b is not None:
            lines.append(f"| {task} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    lines += [
        "",
        "## Does the model read the image?",
        "",
        "Validation loss of the final model on the held-out pages with each page's own image, and with the images "
        "shuffled across pages (same targets):",
        "",
        "| task | own image | shuffled images | own / shuffled |",
        "|---|---:|---:|---:|",
    ]
    for task in ("ocr", "md", "all"):
        if task in own:
            lines.append(
                f"| {task} | {own[task]:.3f} | {shuffled[task]:.3f} | {own[task] / shuffled[task]:.2f} |"
            )
    lines += ["", "## Metrics on held-out pages", "", (out / "eval" / "metrics.md").read_text(), ""]
    pages = sorted((out / "eval" / "pages").glob("*.png"))
    if pages:
        lines += ["## Pages with predicted boxes", "", "Red: predicted lines; green: reference lines.", ""]
        lines += [f"![{p.stem}](eval/pages/{p.name})" for p in pages[:6]]
        lines.append("")
    lines += ["## Weights & Biases", ""]
    for stage in ("layout", "mixed"):
        runs = sorted((out / stage / "wandb").glob("offline-run-*"))
        if runs:
            lines += [f"- {stage}: `{runs[-1]}`; upload with `wandb sync {runs[-1]}`"]
    lines += [
        "",
        "## Files",
        "",
        f"- shards: `{out / 'shards'}`; tokenizer: `{out / 'tokenizer'}`",
        f"- runs: `{out / 'layout'}`, `{out / 'mixed'}` (config, metrics.jsonl, eval.jsonl, checkpoints, model.pt)",
        f"- evaluation: `{out / 'eval'}` (metrics.json, metrics.md, predictions.jsonl, pages/)",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--layout-steps", type=int, default=300)
    parser.add_argument("--mixed-steps", type=int, default=200)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=640)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--port", type=int, default=29710)
    args = parser.parse_args(argv)
    if args.batch % (2 * args.ranks):
        parser.error(f"--batch {args.batch} must be a multiple of 2 x {args.ranks} ranks")
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    python = sys.executable
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        _phase(name)
        result = fn(*a)
        timings[name] = time.perf_counter() - t
        return result

    counts = timed("corpus and shards (every builder)", build_shards, out, python)
    train, val = sources_files(out)
    tokenizer = out / "tokenizer"

    def make_tokenizer():
        if not (tokenizer / "tokenizer.model").exists():
            shards = [str(p) for p in sorted((out / "shards" / "train").glob("*/shard-*.tar"))]
            _run([python, "-m", "model.tokenizer", "--input", *shards, "--out", tokenizer, "--vocab-size", "1600",
                  "--coord-bins", "512"])  # fmt: skip

    timed("tokenizer", make_tokenizer)
    timed("stage layout", train_stage, out, "layout", args.layout_steps, args, tokenizer, train, val)
    timed("stage mixed", train_stage, out, "mixed", args.mixed_steps, args, tokenizer, train, val)

    def evaluate():
        if (out / "eval" / "metrics.json").exists():
            return
        _run([python, "-m", "train.evaluate", f"checkpoint={out / 'mixed'}", f"data={val}", f"out={out / 'eval'}",
              "n=8", "max_new_tokens=200", "draw=6", f"max_length={args.max_length}"])  # fmt: skip

    timed("evaluation", evaluate)
    from train.evaluate import load_model

    args.params = load_model(str(out / "mixed"))[0].num_parameters()
    report = write_report(out, counts, timings, args.layout_steps, args)
    _phase("done")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
