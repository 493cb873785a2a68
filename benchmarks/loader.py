"""Loader throughput: samples/s of one loader process from shards to collated batches (image decode, patches,
tokenisation, collation), and how many such workers each GPU needs to feed the 1.3B preset.

    python -m benchmarks.loader [--shards <build output>] [--tokenizer <dir>] [--batches 20] [--mfu 0.4]

Without `--shards`, synthetic pages are built first. The need per GPU comes from `estimate_flops` of the
`kosmos-2.5` preset at the given MFU on an H100, the same arithmetic as `launch.plan`.
"""

from __future__ import annotations

import argparse
import itertools
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.config import get_config
from model.kosmos import Kosmos25
from model.processor import ImageProcessor
from model.task_format import TaskFormat
from model.tokenizer import Tokenizer, iter_texts, train_tokenizer
from train.loader import BatchStream, SourceSpec, make_loader
from train.metrics import PEAK_FLOPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards")
    ap.add_argument("--tokenizer")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--mfu", type=float, default=0.4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.shards is None:
            from data_pipeline.synthetic import WORDS

            rng = random.Random(0)
            (tmp / "txt").mkdir()
            for d in range(8):
                (tmp / "txt" / f"{d}.txt").write_text(
                    "\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(120))
                )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "data_pipeline.build",
                    "source=synthetic",
                    f"input={tmp / 'txt'}",
                    f"output={tmp / 'shards'}",
                    "workers=2",
                    "filters.languages=all",
                    "dedup=false",
                ],
                check=True,
                capture_output=True,
            )
            args.shards = str(tmp / "shards")
        tok = (
            Tokenizer(args.tokenizer)
            if args.tokenizer
            else train_tokenizer(iter_texts([args.shards]), tmp / "tok", vocab_size=3000, coord_bins=1024)
        )
        full = get_config("kosmos-2.5")
        fmt = TaskFormat(tok, full.latent_query_num, 4096)
        ds = BatchStream(
            [SourceSpec("s", Path(args.shards), 1.0, "ocr")],
            fmt,
            ImageProcessor(full.max_patches),
            4,
            seed=0,
            rank=0,
            world=1,
            workers=0,
        )
        it = iter(make_loader(ds))
        next(it)  # warm-up
        t = time.perf_counter()
        n = sum(len(b["keys"]) for b in itertools.islice(it, args.batches))
        rate = n / (time.perf_counter() - t)
    with torch.device("meta"):
        model = Kosmos25(full)
    need = PEAK_FLOPS["h100"] * args.mfu / model.estimate_flops(text_len=full.latent_query_num + 3 + 1024)
    print(f"loader, one process, max_patches={full.max_patches}: {rate:.1f} samples/s")
    print(
        f"kosmos-2.5 at {args.mfu:.0%} MFU on an H100 consumes {need:.1f} samples/s per GPU "
        f"-> {need / rate:.1f} loader workers per GPU"
    )


if __name__ == "__main__":
    main()
