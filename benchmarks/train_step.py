"""Training-step throughput and peak memory: our model vs Hugging Face's `Kosmos2_5ForConditionalGeneration`.

    python -m benchmarks.train_step [--preset small] [--batch 2] [--steps 3] [--target-len 256] [--compile]

Both models get the same weights and the same pages of mixed sizes, each through its own image processor,
and the same token ids (prompt with image slots, then `--target-len` target tokens). A step is forward +
backward in training mode. Each side runs in its own process so peak memory is its own: we report the
growth of the process's peak resident set over the steps (activations, gradients, temporaries).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_pipeline.synthetic import render_text_page
from model.config import get_config
from model.hf import save_hf
from model.kosmos import IGNORE_INDEX, Kosmos25
from model.processor import ImageProcessor

PAGE_SIZES = [
    (850, 1100),
    (1920, 1080),
    (600, 1800),
    (1240, 1754),
    (1000, 700),
    (700, 1000),
    (1600, 900),
    (800, 2400),
]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _batch(impl: str, cfg, batch: int, target_len: int, step: int) -> dict[str, torch.Tensor]:
    pages = [
        render_text_page(*PAGE_SIZES[(step * batch + i) % len(PAGE_SIZES)], seed=i)[0] for i in range(batch)
    ]
    if impl == "hf":
        from transformers import Kosmos2_5ImageProcessor

        patches = Kosmos2_5ImageProcessor(max_patches=cfg.max_patches)(pages, return_tensors="pt")[
            "flattened_patches"
        ]
    else:
        patches = ImageProcessor(max_patches=cfg.max_patches).batch(pages)["flattened_patches"]
    q = cfg.latent_query_num
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(10, cfg.text.vocab_size, (batch, q + 3 + target_len), generator=g)
    ids[:, 0] = 0
    ids[:, 2 : 2 + q] = 0
    mask = torch.zeros_like(ids)
    mask[:, 1], mask[:, 2 : 2 + q], mask[:, 2 + q] = -1, 1, -1
    labels = ids.clone()
    labels[:, : q + 3] = IGNORE_INDEX
    return {
        "flattened_patches": patches,
        "input_ids": ids,
        "image_embeds_position_mask": mask,
        "labels": labels,
    }


def worker(
    impl: str, weights: str, preset: str, batch: int, steps: int, target_len: int, compile_: bool
) -> dict:
    """Run `steps` timed training steps (after one warm-up) of one implementation; returns its figures."""
    torch.manual_seed(0)
    cfg = get_config(preset, compile=compile_)
    if impl == "hf":
        from transformers import Kosmos2_5ForConditionalGeneration

        model = Kosmos2_5ForConditionalGeneration.from_pretrained(weights)
    else:
        from model.hf import load_hf

        model = load_hf(weights, compile=compile_)
    model.train()
    batches = [_batch(impl, cfg, batch, target_len, s) for s in range(steps + 1)]
    extra = {} if impl == "hf" else {"compute_logits": False}

    def step(b):
        out = model(**b, **extra)
        out.loss.backward()
        model.zero_grad(set_to_none=False)  # gradients stay allocated, as in a real loop
        return out.loss.item()

    step(batches[0])  # warm-up (allocates gradients, compiles if asked)
    base = _rss_bytes()
    t = time.perf_counter()
    losses = [step(b) for b in batches[1:]]
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "samples_per_s": steps * batch / seconds,
        "peak_step_mb": max(peak - base, 0) / 2**20,
        "peak_rss_mb": peak / 2**20,
        "loss": losses[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--target-len", type=int, default=256)
    ap.add_argument("--compile", action="store_true", help="torch.compile our layers (model.compile=true)")
    ap.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        r = worker(
            args.worker, args.weights, args.preset, args.batch, args.steps, args.target_len, args.compile
        )
        print(json.dumps(r))
        return
    torch.manual_seed(0)
    cfg = get_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(Kosmos25(cfg), Path(tmp) / "w")
        results = {}
        for impl in ("hf", "ours"):
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.train_step",
                "--worker",
                impl,
                "--weights",
                str(Path(tmp) / "w"),
                "--preset",
                args.preset,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--target-len",
                str(args.target_len),
            ] + (["--compile"] if args.compile else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[impl] = json.loads(out.strip().splitlines()[-1])
    n_params = sum(p.numel() for p in Kosmos25(cfg).parameters())
    print(
        f"preset={args.preset} ({n_params / 1e6:.1f}M params)  batch={args.batch}  steps={args.steps}  "
        f"max_patches={cfg.max_patches}  latent={cfg.latent_query_num}  target_len={args.target_len}  "
        f"threads={torch.get_num_threads()}  compile={args.compile}"
    )
    for impl, r in results.items():
        print(
            f"{impl:5s} {r['samples_per_s']:7.3f} samples/s   peak step memory {r['peak_step_mb']:8.1f} MB   "
            f"(peak RSS {r['peak_rss_mb']:.0f} MB, loss {r['loss']:.3f})"
        )
    speed = results["ours"]["samples_per_s"] / results["hf"]["samples_per_s"]
    mem = results["ours"]["peak_step_mb"] / max(results["hf"]["peak_step_mb"], 1e-9)
    print(f"ratio ours/hf: {speed:.2f}x samples/s, {mem:.2f}x peak step memory")


if __name__ == "__main__":
    main()
