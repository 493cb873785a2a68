"""`make demo` in miniature: every builder, the tokenizer, the reading warm-up, three stages under the real
`deepspeed` launcher with 2 ranks from the warm-up's weights, the evaluation and the report, with a few steps each
(the full demo's figures are in its report)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves it out

ENV_EXTRA = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def test_demo_end_to_end_in_miniature(tmp_path):
    import os

    out = tmp_path / "demo"
    cmd = [
        sys.executable, "-m", "train.demo", "--out", str(out), "--scale", "0.25", "--warmup-steps", "2",
        "--layout-steps", "3", "--mixed-steps", "3", "--eval-every", "2", "--port", "29720",
        "--reading-overrides", "steps=4 eval.every=2 held_out.count=6",
    ]  # fmt: skip
    r = subprocess.run(cmd, env={**os.environ, **ENV_EXTRA}, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = (out / "report.md").read_text()
    for part in (
        "## Samples per source",
        "loss_train.png",
        "loss_val.png",
        "## Validation loss, start and end",
        "## Reading warm-up",
        "reading/letters/curve.png",
        "## Does the model read the image?",
        "## Held-out pages: predicted text beside the truth",
        "### Text recognition",
        "### Image to markdown",
        "## Pages with predicted boxes",
        "wandb sync",
    ):
        assert part in report, part
    for source in ("pdf", "scan", "powerpoint", "arxiv", "web", "html", "readme", "docx", "synthetic"):
        manifest = json.loads((out / "shards" / "train" / source / "manifest.json").read_text())
        assert manifest["totals"]["samples"] > 0, source
        assert f"| {source} |" in report
    assert (out / "loss_train.png").stat().st_size > 10_000 and (out / "loss_val.png").stat().st_size > 10_000
    assert list((out / "eval" / "pages").glob("*.png"))
    # The warm-up read its held-out snippets, and its weights started the first page stage.
    summary = json.loads((out / "reading" / "letters" / "summary.json").read_text())
    assert summary["steps"] == 4 and "| letters | 4 |" in report
    assert "Held-out snippets after stage `letters` (the first 6)" in report
    log = (out / "logs" / "train-warmup.log").read_text()
    assert f"starting from {out / 'reading' / 'letters' / 'model.pt'}" in log
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"ocr", "md"} <= set(metrics["metrics"]["overall"])
    # A second run finds every phase done and only rewrites the report.
    r = subprocess.run(cmd, env={**os.environ, **ENV_EXTRA}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "already trained" in r.stdout, (r.stdout + r.stderr)[-3000:]
