"""`pip install .` is the model library alone; data building and training are extras."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"deepspeed", "playwright", "pymupdf", "wandb", "hydra-core", "webdataset", "ray", "transformers"}


def _resolve(tmp_path: Path, target: str) -> set[str]:
    """The distributions pip would install for `target` into a fresh virtual environment (its resolver, the
    project's metadata, nothing installed)."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    report = tmp_path / "report.json"
    r = subprocess.run(
        [tmp_path / "venv" / "bin" / "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report",
         str(report), target],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


def test_the_base_install_is_the_model_library(tmp_path):
    names = _resolve(tmp_path, ".")
    assert {"torch", "safetensors", "sentencepiece", "pillow", "numpy", "literate"} <= names
    assert not names & HEAVY, names & HEAVY


def test_the_model_imports_and_runs_without_the_extras(tokenizer):
    """With deepspeed, playwright, pymupdf, hydra, omegaconf, wandb and webdataset made unimportable, the model,
    its processor, tokenizer and task format import and run a forward pass."""
    blocked = [
        "deepspeed",
        "playwright",
        "fitz",
        "pymupdf",
        "hydra",
        "omegaconf",
        "wandb",
        "webdataset",
        "ray",
    ]
    script = textwrap.dedent(
        f"""
        import sys
        BLOCKED = {blocked!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed")

        sys.meta_path.insert(0, Block())
        import torch
        from PIL import Image
        import model.kosmos, model.processor, model.tokenizer, model.task_format, model.hf
        from model.config import get_config
        tok = model.tokenizer.Tokenizer({str(tokenizer.path)!r})
        cfg = get_config("tiny", text={{"vocab_size": tok.vocab_size}})
        net = model.kosmos.Kosmos25(cfg).eval()
        page = model.processor.ImageProcessor(cfg.max_patches)(Image.new("RGB", (64, 48), "white"))
        fmt = model.task_format.TaskFormat(tok, cfg.latent_query_num, 256)
        with torch.no_grad():
            out = net(**fmt.prompt_batch("ocr", 1), flattened_patches=page.flattened_patches[None])
        print(sorted(m for m in BLOCKED if m in sys.modules), tuple(out.logits.shape))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("[] (")
