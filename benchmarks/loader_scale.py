"""The loader's start-up at the paper's scale: a generated manifest of millions of shards, read by 1, 8 and 64
data slots in one process; time to the first batch and the memory it adds, each in a fresh process.

    python -m benchmarks.loader_scale [--shards 2500000] [--slots 1,8,64] [--micro 8]

The manifest names `--shards` shards of 140 samples (the paper's 357M pages); their URLs need not exist
until read: the build's root is `pipe:cat <one real shard> # {}`, so whichever shard a slot reads first, the
shell serves the same real 140-sample shard (built here from synthetic pages). Reported per slot count:
seconds from an empty process (imports done) to the first micro batch, and the resident memory that adds
(VmRSS after minus before; VmHWM, the peak, too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES_PER_SHARD = 140


def _memory_kb() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    field = {
        line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")
    }
    return field["VmRSS"], field["VmHWM"]


def child(root: str, tokenizer: str, slots: int, micro: int) -> None:
    """One measurement, in its own process."""
    import itertools

    import torch

    from model.processor import ImageProcessor
    from model.task_format import TaskFormat
    from model.tokenizer import Tokenizer
    from train.loader import BatchStream, make_loader
    from train.samples import SourceSpec

    torch.set_num_threads(1)
    fmt = TaskFormat(Tokenizer(tokenizer), 64, 1024)
    processor = ImageProcessor(256)
    rss0, _ = _memory_kb()
    t = time.perf_counter()
    # one step takes a sample from every slot: the first micro batch comes once all the slots have started
    spec = SourceSpec("pdf", root, 1.0, "ocr")
    ds = BatchStream([spec], fmt, processor, micro, 0, 0, 1, 0, None, slots, max(slots, micro))
    batch = next(itertools.islice(iter(make_loader(ds)), 1))
    seconds = time.perf_counter() - t
    rss1, hwm = _memory_kb()
    print(json.dumps({"slots": slots, "seconds": seconds, "rss_mb": (rss1 - rss0) / 1024,
                      "peak_mb": (hwm - rss0) / 1024, "keys": len(batch["keys"])}))  # fmt: skip


def _one_shard(tmp: Path) -> tuple[Path, Path]:
    """A real shard of 140 synthetic pages, and a tokenizer trained on it."""
    from data_pipeline.synthetic import WORDS
    from model.tokenizer import iter_texts, train_tokenizer

    rng = random.Random(0)
    (tmp / "txt").mkdir()
    for d in range(SAMPLES_PER_SHARD // 4):
        (tmp / "txt" / f"{d}.txt").write_text(
            "\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(24))
        )
    subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", "source=synthetic", f"input={tmp / 'txt'}",
         f"output={tmp / 'built'}", "workers=2", "docs_per_shard=1000", "filters.languages=all", "dedup=false",
         "source.snippets_per_page=6"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    shard = tmp / "built" / "shard-00000.tar"
    train_tokenizer(iter_texts([str(tmp / "built")]), tmp / "tok", vocab_size=1200, coord_bins=256)
    return shard, tmp / "tok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2_500_000)
    ap.add_argument("--slots", default="1,8,64")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, tok, slots, micro = args.child
        child(root, tok, int(slots), int(micro))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard, tok = _one_shard(tmp)
        count = int(json.loads((tmp / "built" / "manifest.json").read_text())["shardlist"][0]["nsamples"])
        folder = tmp / "manifest"
        folder.mkdir()
        t = time.perf_counter()
        with open(folder / "manifest.json", "w") as f:
            f.write(
                '{"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "pdf", "source": "pdf",\n "shardlist": [\n'
            )
            f.write(
                ",\n".join(
                    f'  {{"url": "shard-{i:07d}.tar", "nsamples": {count}}}' for i in range(args.shards)
                )
            )
            f.write("\n ]\n}\n")
        size = (folder / "manifest.json").stat().st_size
        print(
            f"manifest: {args.shards:,} shards of {count} samples, {size / 2**20:.0f} MB ({time.perf_counter() - t:.1f} s to write)"
        )
        # Every shard URL is served by the shell from the one real shard (the manifest is read from the folder).
        root = f"pipe:cat {folder}/{{}} 2>/dev/null || cat {shard}"
        for slots in map(int, args.slots.split(",")):
            r = subprocess.run(
                [sys.executable, "-m", "benchmarks.loader_scale", "--child", root, str(tok), str(slots), str(args.micro)],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(
                f"{m['slots']:>3} slots: first batch of {m['keys']} after {m['seconds']:.1f} s; "
                f"memory added {m['rss_mb']:.0f} MB resident ({m['peak_mb']:.0f} MB at its peak)"
            )


if __name__ == "__main__":
    main()
