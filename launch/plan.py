"""Capacity planner for the paper's recipe.

    python -m launch.plan model=kosmos-2.5 gpus=128 gpu=h100 [mfu=0.4] [text_len=3075] [bytes_per_page=250000]
                          [loader_samples_per_s=20] [model.text.layers=...]

Keys and defaults are in `configs/tools/plan.yaml`; they are Hydra overrides, as for training (unknown keys refused).

Prints FLOPs per training sample (from `estimate_flops`), the step time of a 1024-sample global batch and the
days each stage takes at the assumed MFU, the checkpoint size (bf16 weights + fp32 master weights + AdamW
moments), the corpus's storage in shards, and the loader worker processes each GPU needs.
"""

from __future__ import annotations

import sys

import torch

from model.config import ModelConfig, compose_app, config_from_dict
from model.kosmos import Kosmos25
from train.metrics import PEAK_FLOPS

STAGES = {"warmup": 20_000, "layout": 100_000, "mixed": 140_000}
CORPUS_PAGES = 357_400_000
GLOBAL_BATCH = 1024


def plan(
    model: ModelConfig,
    gpus: int,
    gpu: str,
    mfu: float,
    text_len: int,
    bytes_per_page: float,
    loader_rate: float,
) -> str:
    if gpu not in PEAK_FLOPS:
        raise ValueError(f"gpu={gpu!r}: choose from {', '.join(PEAK_FLOPS)}")
    with torch.device("meta"):
        m = Kosmos25(model)
    params = m.num_parameters()
    flops = m.estimate_flops(text_len=text_len)
    step = flops * GLOBAL_BATCH / (gpus * PEAK_FLOPS[gpu] * mfu)
    per_gpu = GLOBAL_BATCH / step / gpus
    lines = [
        f"model {model.name}: {params / 1e9:.2f}B parameters; {flops / 1e12:.1f} TFLOPs per training sample "
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
    try:
        cfg = compose_app("plan", argv)
        print(
            plan(
                config_from_dict(cfg.model),
                int(cfg.gpus),
                str(cfg.gpu),
                float(cfg.mfu),
                int(cfg.text_len),
                float(cfg.bytes_per_page),
                float(cfg.loader_samples_per_s),
            )
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
