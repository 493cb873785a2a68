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


def build_shards(out: Path, python: str, scale: float = 1.0) -> dict[str, dict[str, int]]:
    corpus = out / "corpus"
    if not (corpus / ".done").exists():
        _run([python, "-m", "data_pipeline.demo_corpus", corpus, "--scale", str(scale)])
        (corpus / ".done").touch()
    counts: dict[str, dict[str, int]] = {}
    for name, (folder, _, _) in SOURCES.items():
        for split in ("train", "val"):
            target = out / "shards" / split / name
            if not (target / "manifest.json").exists():
                cmd = [
                    python, "-m", "data_pipeline.build", f"source={name}", f"input={corpus / folder / split}",
                    f"output={target}", "workers=2", "filters.languages=all", "image.max_side=1024",
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


def train_stage(
    out: Path, stage: str, steps: int, args, tokenizer: Path, train: Path, val: Path, init: Path | None
) -> Path:
    run_dir = out / stage
    if (run_dir / "model.pt").exists():
        print(f"{run_dir}/model.pt exists: stage {stage} already trained")
        return run_dir
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    overrides = [
        f"stage={stage}", "model=tiny", f"tokenizer={tokenizer}", f"data.sources_file={train}",
        f"data.val_sources_file={val}", "data.workers=1", f"trainer.max_steps={steps}",
        f"trainer.train_batch_size={args.batch}", f"trainer.micro_batch_size={args.batch // (2 * args.ranks)}",
        f"trainer.max_length={args.max_length}", f"optim.lr={args.lr}", f"optim.warmup_steps={args.lr_warmup}",
        f"optim.image_lr_scale={args.image_lr_scale}", f"model.image_proj_init_std={args.image_proj_init_std}",
        f"trainer.dropout={args.dropout}", f"trainer.checkpoint_every={max(steps // 2, 1)}", "trainer.keep_checkpoints=1",
        f"run_dir={run_dir}", f"run_name=demo-{stage}", "wandb.mode=offline", "eval.tasks=[ocr,md]",
        f"eval.every={args.eval_every}", "eval.samples_per_source=8", "eval.predictions=2", "eval.max_new_tokens=160",
    ]  # fmt: skip
    overrides.append(f"stage.init_from_dir={init}" if init else "stage.init_from=null")
    cmd = [
        deepspeed, "--num_accelerators", str(args.ranks), "--no_local_rank", "--master_port", str(args.port),
        "--module", "train.pretrain", *overrides,
    ]  # fmt: skip
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    _run(cmd, out / "logs" / f"train-{stage}.log", env)
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_curves(out: Path, stages: list[tuple[str, int]]) -> tuple[Path, Path]:
    """Training loss per task and validation loss per task (own and shuffled images) over the stages, one
    step axis with the stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset, total = {}, 0
    for name, steps in stages:
        offset[name], total = total, total + steps
    train = {s: _jsonl(out / s / "metrics.jsonl") for s, _ in stages}
    evals = {s: _jsonl(out / s / "eval.jsonl") for s, _ in stages}

    def boundaries(ax):
        for name, _ in stages:
            ax.axvline(offset[name], color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f" {name}", (offset[name], 1.0), xycoords=("data", "axes fraction"), va="top", color="grey"
            )

    paths = []
    for title, ylabel, series, file in (
        (
            "Training loss per task",
            "training loss (nats/token)",
            [(train, "loss/ocr", "<ocr>", "tab:blue", "-"), (train, "loss/md", "<md>", "tab:orange", "-")],
            "loss_train.png",
        ),
        (
            "Validation loss on held-out pages: own images (solid) and images shuffled across pages (dotted)",
            "validation loss (nats/token)",
            [
                (evals, f"{kind}/{task}", f"<{task}> {label}", colour, style)
                for task, colour in (("ocr", "tab:blue"), ("md", "tab:orange"))
                for kind, label, style in (
                    ("val/loss", "own", "-"),
                    ("val/loss_shuffled_images", "shuffled", ":"),
                )
            ],
            "loss_val.png",
        ),
    ):
        fig, ax = plt.subplots(figsize=(9, 4.8))
        for records, key, label, colour, style in series:
            points = [(r["step"] + offset[s], r[key]) for s in records for r in records[s] if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    style,
                    color=colour,
                    label=label,
                    linewidth=1,
                    marker="o" if records is evals else None,
                    markersize=3,
                )
        boundaries(ax)
        ax.set(xlabel="step (all stages)", ylabel=ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        paths.append(out / file)
    return paths[0], paths[1]


def write_report(out: Path, counts: dict, timings: dict, stages: list[tuple[str, int]], args) -> Path:
    train_png, val_png = plot_curves(out, stages)
    evals = [r for s, _ in stages for r in _jsonl(out / s / "eval.jsonl")]
    start, end = evals[0], evals[-1]
    result = json.loads((out / "eval" / "metrics.json").read_text())
    own, shuffled = result["val_loss"], result["val_loss_shuffled_images"]
    recipe = ", then ".join(f"stage `{name}` for {steps} steps" for name, steps in stages)
    lines = [
        "# Literate demo report",
        "",
        f"The tiny model ({args.params / 1e6:.1f}M parameters) trained on CPU through the `deepspeed` launcher with "
        f"{args.ranks} ranks (gloo): {recipe}, each from the previous one's weights; global batch {args.batch}, "
        f"lr {args.lr} (x{args.image_lr_scale} for the vision encoder and resampler), lr warm-up {args.lr_warmup} "
        "steps per stage. Both tasks are evaluated on the held-out pages from the first step on.",
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
    parser.add_argument("--layout-steps", type=int, default=600)
    parser.add_argument("--mixed-steps", type=int, default=500)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the training documents")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-warmup", type=int, default=30, help="learning-rate warm-up steps of each stage")
    parser.add_argument(
        "--image-lr-scale", type=float, default=10.0, help="lr multiplier of the vision encoder and resampler"
    )
    parser.add_argument(
        "--image-proj-init-std",
        type=float,
        default=1.0,
        help="initial std of the resampler's input projection (the reference's 0.02 starts the model blind)",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=0, help="steps of the synthetic warm-up stage (0: none)"
    )
    parser.add_argument("--max-length", type=int, default=640)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
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

    counts = timed("corpus and shards (every builder)", build_shards, out, python, args.scale)
    train, val = sources_files(out)
    tokenizer = out / "tokenizer"

    def make_tokenizer():
        if not (tokenizer / "tokenizer.model").exists():
            shards = [str(p) for p in sorted((out / "shards" / "train").glob("*/shard-*.tar"))]
            _run([python, "-m", "model.tokenizer", "--input", *shards, "--out", tokenizer, "--vocab-size", "1600",
                  "--coord-bins", "512"])  # fmt: skip

    timed("tokenizer", make_tokenizer)
    init = None
    if args.warmup_steps:  # the v2 warm-up: synthetic pages only, where the text can only come from the image
        synthetic = out / "sources-warmup.json"
        synthetic.write_text(
            json.dumps([e for e in json.loads(train.read_text()) if e["name"] == "synthetic"])
        )
        init = timed(
            "stage warmup",
            train_stage,
            out,
            "warmup",
            args.warmup_steps,
            args,
            tokenizer,
            synthetic,
            val,
            None,
        )
    layout = timed(
        "stage layout", train_stage, out, "layout", args.layout_steps, args, tokenizer, train, val, init
    )
    timed("stage mixed", train_stage, out, "mixed", args.mixed_steps, args, tokenizer, train, val, layout)

    def evaluate():
        if (out / "eval" / "metrics.json").exists():
            return
        _run([python, "-m", "train.evaluate", f"checkpoint={out / 'mixed'}", f"data={val}", f"out={out / 'eval'}",
              "n=8", "max_new_tokens=200", "draw=6", f"max_length={args.max_length}"])  # fmt: skip

    timed("evaluation", evaluate)
    from train.checkpoint import load_run

    args.params = load_run(out / "mixed")[0].num_parameters()
    stages = [("warmup", args.warmup_steps)] if args.warmup_steps else []
    stages += [("layout", args.layout_steps), ("mixed", args.mixed_steps)]
    report = write_report(out, counts, timings, stages, args)
    _phase("done")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
