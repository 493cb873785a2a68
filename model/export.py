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

from configs.compose import answered_help, compose_app
from model.hf import save_hf
from model.run import load_run


def export(run_dir: Path, out: Path) -> Path:
    weights = run_dir / "model.pt"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no consolidated weights (the run has not finished)")
    model, tok = load_run(run_dir)
    save_hf(model, out)
    for f in tok.path.glob("tokenizer.*"):
        shutil.copy(f, out / f.name)
    return out


def main(argv: list[str]) -> int:
    if answered_help(argv, __doc__, "tools/export.yaml"):
        return 0
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
