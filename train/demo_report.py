"""`make demo`'s report: `<out>/report.md` from what the demo's phases wrote (the reading warm-up's curves and
held-out snippets, the stages' metrics and evaluations, the final evaluation's metrics and predictions), and the
loss curves' PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from configs.compose import recipe_stages


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


def reading_section(out: Path, args, shown: int = 12) -> list[str]:
    """The warm-up's figures per stage, its curves and held-out snippets with what the model read."""
    lines = [
        "## Reading warm-up",
        "",
        f"Recipe `{args.reading}` (`configs/tools/recipes/{args.reading}.yaml`, run by `python -m benchmarks.learning "
        "--recipe`): snippets drawn by the synthetic source's snippet mode, each stage from the weights of the one "
        "before; every few hundred steps the held-out snippets (another seed; held-out words where a stage reads "
        "words) are read by greedy generation, and read again with each image swapped for another snippet's (the "
        "control: what the model writes without reading).",
        "",
        "| stage | steps | minutes | held-out exact | character error | control exact |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    stages = [s["name"] for s in recipe_stages(args.reading)]
    for name in stages:
        summary = out / "reading" / name / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            f = s["final"]
            lines.append(
                f"| {name} | {s['steps']} | {s['minutes']:.1f} | {100 * f['em']:.1f}% | {f['cer']:.3f} | "
                f"{100 * f['control_em']:.1f}% |"
            )
    lines.append("")
    for name in stages:
        if (out / "reading" / name / "curve.png").exists():
            lines += [f"![reading curve, stage {name}](reading/{name}/curve.png)", ""]
    examples = _jsonl(out / "reading" / stages[-1] / "predictions.jsonl")[:shown]
    if examples:
        lines += [f"Held-out snippets after stage `{stages[-1]}` (the first {len(examples)}):", ""]
        lines += ["| truth | read | |", "|---|---|---|"]
        lines += [
            f"| {_cell(e['truth'])} | {_cell(e['read'])} | {'=' if e['read'] == e['truth'] else ''} |"
            for e in examples
        ]
        lines.append("")
    return lines


def pages_text_section(out: Path, pages: int = 3, rows: int = 8) -> list[str]:
    """Held-out pages' predicted text beside the truth: lines of the layout task, the start of the markdown."""
    predictions = _jsonl(out / "eval" / "predictions.jsonl")
    lines = ["## Held-out pages: predicted text beside the truth", ""]
    seen: set[str] = set()
    for p in (p for p in predictions if p["task"] == "ocr" and "truth" in p):
        if p["source"] in seen or len(seen) == pages:
            continue
        seen.add(p["source"])
        truth = p["truth"].splitlines()[:rows]
        read = [ln["text"] for ln in p.get("lines") or []][:rows]
        lines += [f"`{p['key']}` ({p['source']}, `<ocr>`; the first {rows} lines in reading order):", ""]
        lines += ["| truth | predicted |", "|---|---|"]
        for i in range(max(len(truth), len(read))):
            cell = [_cell(x[i]) if i < len(x) else "" for x in (truth, read)]
            lines.append(f"| {cell[0]} | {cell[1]} |")
        lines.append("")
    md = next((p for p in predictions if p["task"] == "md" and "truth" in p), None)
    if md:
        lines += [f"`{md['key']}` ({md['source']}, `<md>`; the first 300 characters):", ""]
        for title, text in (("truth", md["truth"]), ("predicted", md["text"])):
            lines += [f"{title}:", "", "````", text[:300], "````", ""]
    return lines


def _cell(text: str) -> str:
    """Text in a table cell: code-quoted, `|` escaped, 90 characters at most."""
    text = " ".join(text[:90].split())  # a table row is one line
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else ""


def write_report(
    out: Path, counts: dict, timings: dict, stages: list[tuple[str, int]], args, sources: dict
) -> Path:
    """`<out>/report.md` from what the demo's phases left in `out`; `sources`: builder → (folder, task, weight)."""
    train_png, val_png = plot_curves(out, stages)
    evals = [r for s, _ in stages for r in _jsonl(out / s / "eval.jsonl")]
    start, end = evals[0], evals[-1]
    result = json.loads((out / "eval" / "metrics.json").read_text())
    own, shuffled = result["val_loss"], result["val_loss_shuffled_images"]
    recipe = ", then ".join(f"stage `{name}` for {steps} steps" for name, steps in stages)
    lines = [
        "# Literate demo report",
        "",
        f"The `{args.model}` model ({args.params / 1e6:.1f}M parameters) trained on CPU through the `deepspeed` "
        f"launcher with {args.ranks} ranks (gloo): "
        + (f"the reading warm-up `{args.reading}`, then " if args.reading != "none" else "")
        + f"{recipe}, each from the previous one's weights; global batch {args.batch}, "
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
        *[f"| {n} | {sources[n][1]} | {c['train']} | {c['val']} |" for n, c in counts.items()],
        f"| latex (arXiv markdown) | md | {counts['arxiv']['train']} | {counts['arxiv']['val']} |",
        "",
        *(reading_section(out, args) if args.reading != "none" else []),
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
    lines += pages_text_section(out)
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
