"""`pip install .` is the model library alone; data building and training are extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"deepspeed", "playwright", "pymupdf", "wandb", "hydra-core", "webdataset", "ray", "transformers"}


def _resolve(requirements: list[str], project: dict) -> set[str]:
    """The distributions `requirements` pull in, resolved against the installed ones' metadata (offline: each
    requirement's own requirements, markers evaluated for this interpreter and the extras asked for); the
    project's own extras (`literate[train]`) from `project`, its pyproject table."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        extras = set(req.extras)
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in names:
            continue
        names.add(key)
        if name == project["name"]:
            todo += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req} is required and not installed") from None
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(sub)
    return {key.split("[")[0] for key in names}


def test_the_base_install_is_the_model_library():
    """`pip install .` (the project's dependencies without extras, resolved offline against what is installed)
    brings the model's libraries and none of the heavy ones."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _resolve(project["dependencies"], project)
    assert {"torch", "safetensors", "sentencepiece", "pillow", "numpy"} <= names
    assert not names & HEAVY, names & HEAVY
    everything = _resolve([f"literate[{extra}]" for extra in project["optional-dependencies"]], project)
    assert everything >= HEAVY, (
        HEAVY - everything
    )  # the resolver sees the extras' packages: the check can fail


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
