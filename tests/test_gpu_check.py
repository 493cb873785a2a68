"""`benchmarks/gpu_check.py` in its CPU version: the script a GPU session runs cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_its_cpu_version(tokenizer, sources, tmp_path):
    """Three trainer steps of the tiny preset, the attention kernel its forward ran, greedy generation: every
    figure present and plausible."""
    out = tmp_path / "check"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--reduced", f"--out={out}", f"--sources={sources}",
           f"--tokenizer={tokenizer.path}"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    (tiny,) = result["presets"]
    assert result["device"] == "CPU" and tiny["preset"] == "tiny" and tiny["steps"] == 3
    assert tiny["samples_per_s"] > 0 and 0 < tiny["mfu"] <= tiny["hfu"] < 1
    assert tiny["micro_batch"] == 2 and tiny["predicted_peak_gib"] > 0
    assert tiny["sdpa_backends"] != ["none seen"] and tiny["generate_tokens_per_s"] > 0
    assert "tiny         micro 2:" in r.stdout
