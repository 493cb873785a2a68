"""Loader throughput: samples/s of one loader process from shards to collated batches (image decode, patches,
tokenisation, collation), against a plain `webdataset.WebDataset` pipeline doing the same decoding, processing,
tokenisation and collation on the same shards in the same run (turns alternate, medians of the rounds); and
how many such workers each GPU needs to feed the 1.3B preset.

    python -m benchmarks.loader [--shards <build output>] [--tokenizer <dir>] [--batches 20] [--rounds 3] [--mfu 0.4]

Without `--shards`, synthetic pages are built first. The need per GPU comes from `estimate_flops` of the
`kosmos-2.5` preset at the given MFU on an H100, the same arithmetic as `launch.plan`.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
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
from train.loader import BatchStream, make_loader
from train.metrics import PEAK_FLOPS
from train.samples import SourceSpec


def our_rate(shards: str, fmt, processor, micro: int, batches: int) -> float:
    ds = BatchStream(
        [SourceSpec("s", shards, 1.0, "ocr")], fmt, processor, micro, seed=0, rank=0, world=1, workers=0
    )
    it = make_loader(ds)
    next(it)  # warm-up: the slots open their shards
    t = time.perf_counter()
    n = sum(len(b["keys"]) for b in itertools.islice(it, batches))
    return n / (time.perf_counter() - t)


def webdataset_rate(shards: str, fmt, processor, micro: int, batches: int) -> float:
    """The same work through webdataset's own pipeline: shards in manifest order, samples decoded and
    encoded by the same `Encoder`, collated in fours."""
    import webdataset as wds

    from data_pipeline.manifest import read_manifest
    from train.samples import Encoder, collate

    manifest = read_manifest(shards)
    spec = SourceSpec("s", shards, 1.0, "ocr")
    encode = Encoder(fmt, processor)
    urls = [manifest.url(i) for i in range(len(manifest))]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .repeat()
        .map(lambda sample: encode(spec, sample))
        .select(lambda out: not isinstance(out, str))
        .batched(micro, collation_fn=lambda items: collate(items, fmt.tok.pad_id))
    )
    it = iter(pipeline)
    next(it)
    t = time.perf_counter()
    n = sum(len(b["keys"]) for b in itertools.islice(it, batches))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards")
    ap.add_argument("--tokenizer")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--rounds", type=int, default=3)
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
        processor = ImageProcessor(full.max_patches)
        ours, plain = [], []
        for r in range(args.rounds):  # the sides take turns going first
            if r % 2 == 0:
                plain.append(webdataset_rate(args.shards, fmt, processor, 4, args.batches))
            ours.append(our_rate(args.shards, fmt, processor, 4, args.batches))
            if r % 2 == 1:
                plain.append(webdataset_rate(args.shards, fmt, processor, 4, args.batches))
        rate, ref = statistics.median(ours), statistics.median(plain)
        print(
            f"plain webdataset.WebDataset pipeline: {ref:.1f} samples/s; ours: {rate:.1f} samples/s; "
            f"ratio {rate / ref:.2f} (rounds: {', '.join(f'{o / p:.2f}' for o, p in zip(ours, plain, strict=True))})"
        )
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
