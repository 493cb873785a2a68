"""Export a finished run to the Hugging Face format:

    python -m model.export checkpoint=<run dir> out=<dir>

Reads the run's `config.yaml` and its consolidated `model.pt` (written at the end of training, ZeRO shards
gathered) and writes a directory that `Kosmos2_5ForConditionalGeneration.from_pretrained` loads, with the
run's tokenizer files beside it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model.config import config_from_dict
from model.hf import save_hf
from model.kosmos import Kosmos25
from model.tokenizer import Tokenizer


def export(run_dir: Path, out: Path) -> Path:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    weights = run_dir / "model.pt"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no consolidated weights (the run has not finished)")
    tok = Tokenizer(cfg.tokenizer)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.setdefault("text", {})["vocab_size"] = tok.vocab_size
    model = Kosmos25(config_from_dict(model_cfg))
    model.load_full_state_dict(torch.load(weights, map_location="cpu", weights_only=True), str(weights))
    save_hf(model, out)
    for f in tok.path.glob("tokenizer.*"):
        shutil.copy(f, out / f.name)
    return out


def main(argv: list[str]) -> int:
    from model.config import compose_app

    try:
        cfg = compose_app("export", argv)
        out = export(Path(cfg.checkpoint), Path(cfg.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}\nusage: python -m model.export checkpoint=<run dir> out=<dir>", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
