"""The whole framework on one machine (`make demo`):

    python -m train.demo [--out runs/demo] [--reading demo] [--layout-steps 600] [--mixed-steps 500] [--ranks 2]

demo corpus → shards with every builder (training and held-out documents) → tokenizer → the reading warm-up
(`benchmarks.learning --recipe demo`: snippets drawn as the synthetic source draws them, held-out ones read as it
goes) → stage `layout` then stage `mixed` of the `reader` model from the warm-up's weights, through the
`deepspeed` launcher → evaluation on the held-out pages → `<out>/report.md` with sample counts, the reading
curve and held-out snippets read, loss curves, validation loss at the start and end per task, the image-shuffle
check, the metric tables, pages with predicted boxes and their text beside the truth, and the W&B offline runs.

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

from configs.compose import recipe_stages
from train.demo_report import write_report

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
        f"stage={stage}", f"model={args.model}", f"tokenizer={tokenizer}", f"data.sources_file={train}",
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


def reading_warmup(out: Path, args, tokenizer: Path) -> Path:
    """The reading recipe's stages (`benchmarks.learning --recipe`) with the demo's model and tokenizer, into
    `<out>/reading/<stage>/`; returns the last stage's folder, whose model.pt starts the page stages."""
    stages = [s["name"] for s in recipe_stages(args.reading)]
    last = out / "reading" / stages[-1]
    if (last / "model.pt").exists():
        print(f"{last}/model.pt exists: the reading warm-up already trained")
        return last
    cmd = [
        sys.executable, "-m", "benchmarks.learning", "--recipe", args.reading, "--threads", str(args.ranks),
        f"model={args.model}", f"tokenizer={tokenizer}", f"out={out / 'reading'}", *args.reading_overrides.split(),
    ]  # fmt: skip
    _run(cmd, out / "logs" / "reading.log")
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--model", default="reader", help="model preset (model/config.py)")
    parser.add_argument(
        "--reading",
        default="demo",
        help="reading warm-up recipe (configs/tools/recipes/<name>.yaml: demo ~8 minutes, reading ~2 hours) run "
        "before the page stages, which start from its weights; none: no warm-up",
    )
    parser.add_argument(
        "--reading-overrides",
        default="",
        help="key=value overrides of every warm-up stage (configs/tools/learning.yaml)",
    )
    parser.add_argument("--layout-steps", type=int, default=600)
    parser.add_argument("--mixed-steps", type=int, default=500)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the training documents")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-warmup", type=int, default=30, help="learning-rate warm-up steps of each stage")
    parser.add_argument(
        "--image-lr-scale",
        type=float,
        default=None,
        help="lr multiplier of the vision encoder and resampler (default: 1 after a reading warm-up, else 10)",
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
    if args.reading != "none":
        try:
            recipe_stages(args.reading)
        except ValueError as e:
            parser.error(str(e))
    if args.image_lr_scale is None:
        args.image_lr_scale = 1.0 if args.reading != "none" else 10.0
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
    init = timed("reading warm-up", reading_warmup, out, args, tokenizer) if args.reading != "none" else None
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
            init,
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
    report = write_report(out, counts, timings, stages, args, SOURCES)
    _phase("done")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
