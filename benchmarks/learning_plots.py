"""The learning benchmark's figures drawn: a run's table and curve, and runs compared against training FLOPs
(`python -m benchmarks.learning --compare RUN ...`)."""

from __future__ import annotations

import json
from pathlib import Path


def table(curve: list[dict]) -> str:
    head = (
        "| step | min | train FLOPs | train loss | val loss (own / shuffled) | CER | exact | word F1 | box IoU "
        "| lines | control CER | control exact | control word F1 |"
    )
    rows = [head, "|" + "---|" * 13]
    for r in curve:
        loss = "" if r["loss"] is None else f"{r['loss']:.3f}"
        f1, iou, control_f1 = (
            f"{100 * r[k]:.1f}" if k in r else "" for k in ("word_f1", "iou", "control_word_f1")
        )
        rows.append(
            f"| {r['step']} | {r['minutes']:.1f} | {r.get('flops', 0):.3g} | {loss} | {r['val_loss']:.3f} / {r['val_loss_shuffled']:.3f} | "
            f"{r['cer']:.3f} | {100 * r['em']:.1f}% | {f1} | {iou} | {r['lines']:.2f} | {r['control_cer']:.3f} | "
            f"{100 * r['control_em']:.1f}% | {control_f1} |"
        )
    return "\n".join(rows) + "\n"


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, [100 * r["em"] for r in curve], "o-", label="held out")
    left.plot(steps, [100 * r["control_em"] for r in curve], "x--", label="control (images shuffled)")
    left.set(xlabel="step", ylabel="exact match (%)", ylim=(0, 100), title="Held-out snippets read exactly")
    right.plot(steps, [r["cer"] for r in curve], "o-", label="held out")
    right.plot(steps, [r["control_cer"] for r in curve], "x--", label="control")
    right.set(xlabel="step", ylabel="character error rate", ylim=(0, None), title="Character errors")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(runs: list[str], out: Path) -> str:
    """Validation loss and exact match against training FLOPs of finished runs (their `curve.jsonl` and
    `summary.json`): a PNG and a table of each run's figures at the FLOPs where each run's curve was taken
    (the nearest evaluation at or before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for run_dir in map(Path, runs):
        rows = [json.loads(x) for x in (run_dir / "curve.jsonl").read_text().splitlines() if x.strip()]
        if not rows or "flops" not in rows[-1]:
            raise ValueError(f"{run_dir}: no curve with training FLOPs (curve.jsonl from this version)")
        params = json.loads((run_dir / "summary.json").read_text())["parameters"]
        curves[f"{run_dir.name} ({params / 1e6:.2f}M)"] = [r for r in rows if r["flops"] > 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in curves.items():
        left.plot([r["flops"] for r in rows], [r["val_loss"] for r in rows], "o-", ms=3, label=name)
        right.plot([r["flops"] for r in rows], [100 * r["em"] for r in rows], "o-", ms=3, label=name)
    left.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss", title="Loss")
    right.set(
        xscale="log", xlabel="training FLOPs", ylabel="exact match (%)", ylim=(0, 100), title="Read exactly"
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    budgets = sorted(
        {rows[-1]["flops"] for rows in curves.values()} | {min(r[-1]["flops"] for r in curves.values()) / 4}
    )
    head = "| run | " + " | ".join(f"{b:.2g} FLOPs" for b in budgets) + " |"
    lines = [head, "|---|" + "---|" * len(budgets)]
    for name, rows in curves.items():
        cells = []
        for b in budgets:
            at = [r for r in rows if r["flops"] <= b * 1.001]
            cells.append(
                f"{at[-1]['val_loss']:.3f} / {100 * at[-1]['em']:.1f}% (step {at[-1]['step']})" if at else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
