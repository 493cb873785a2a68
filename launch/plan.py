"""Capacity planner for the paper's recipe.

    python -m launch.plan model=kosmos-2.5 gpus=128 gpu=h100 [mfu=0.4] [text_len=2560] [bytes_per_page=250000]
                          [loader_samples_per_s=20]

Prints FLOPs per training sample (from `estimate_flops`), the step time of a 1024-sample global batch and the
days each stage takes at the assumed MFU, the checkpoint size (bf16 weights + fp32 master weights + AdamW
moments), the corpus's storage in shards, and the loader worker processes each GPU needs.
"""

from __future__ import annotations

import sys

import torch

from model.config import get_config
from model.kosmos import Kosmos25
from train.metrics import PEAK_FLOPS

STAGES = {"warmup": 20_000, "layout": 100_000, "mixed": 140_000}
CORPUS_PAGES = 357_400_000
GLOBAL_BATCH = 1024


def plan(
    model: str, gpus: int, gpu: str, mfu: float, text_len: int, bytes_per_page: float, loader_rate: float
) -> str:
    if gpu not in PEAK_FLOPS:
        raise ValueError(f"gpu={gpu!r}: choose from {', '.join(PEAK_FLOPS)}")
    with torch.device("meta"):
        m = Kosmos25(get_config(model))
    params = m.num_parameters()
    flops = m.estimate_flops(text_len=text_len)
    step = flops * GLOBAL_BATCH / (gpus * PEAK_FLOPS[gpu] * mfu)
    per_gpu = GLOBAL_BATCH / step / gpus
    lines = [
        f"model {model}: {params / 1e9:.2f}B parameters; {flops / 1e12:.1f} TFLOPs per training sample "
        f"({m.config.max_patches} patches, {text_len} decoder positions)",
        f"{gpus} x {gpu} at {mfu:.0%} MFU: {step:.2f} s per step of {GLOBAL_BATCH} samples, {per_gpu:.1f} samples/s per GPU",
    ]
    lines += [
        f"  stage {name:7s} {steps:>7,} steps: {steps * step / 86400:6.1f} days"
        for name, steps in STAGES.items()
    ]
    ckpt = params * (2 + 4 + 8)
    lines.append(f"checkpoint: {ckpt / 1e9:.1f} GB (bf16 weights, fp32 master weights, AdamW moments)")
    lines.append(
        f"corpus: {CORPUS_PAGES / 1e6:.1f}M pages x {bytes_per_page / 1e3:.0f} KB = "
        f"{CORPUS_PAGES * bytes_per_page / 1e12:.0f} TB of shards"
    )
    lines.append(
        f"loader: {per_gpu / loader_rate:.1f} worker processes per GPU at {loader_rate:g} samples/s each"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    try:
        print(
            plan(
                args.get("model", "kosmos-2.5"),
                int(args.get("gpus", 128)),
                args.get("gpu", "h100"),
                float(args.get("mfu", 0.4)),
                int(args.get("text_len", 2048 + 3 + 1024)),
                float(args.get("bytes_per_page", 250_000)),
                float(args.get("loader_samples_per_s", 20)),
            )
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
