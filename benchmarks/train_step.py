"""Training-step throughput and peak memory: our model vs Hugging Face's `Kosmos2_5ForConditionalGeneration`.

    python -m benchmarks.train_step [--preset small] [--batch 2] [--steps 3] [--target-len 256] [--rounds 3] [--compile]

Two comparisons, both printed: like for like (`ours, full logits`: both sides compute the logits of every
position and the loss from them) and our training path (`ours`: `compute_logits=False`, logits made only where
labels are, as `train.step` runs it) against the same Hugging Face step. The sides take turns: each round runs
the three in another order, and every round's ratios are printed with the medians.

Both models get the same weights and the same pages of mixed sizes, each through its own image processor,
and the same token ids (prompt with image slots, then `--target-len` target tokens). A step is forward +
backward in training mode. Each side runs in its own process so peak memory is its own: we report the
growth of the process's peak resident set over the steps (activations, gradients, temporaries).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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
    impl: str,
    weights: str,
    preset: str,
    batch: int,
    steps: int,
    target_len: int,
    compile_: bool,
    full_logits: bool = False,
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
    extra = {} if impl == "hf" or full_logits else {"compute_logits": False}

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
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three sides, each in another order")
    ap.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--full-logits", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        r = worker(
            args.worker,
            args.weights,
            args.preset,
            args.batch,
            args.steps,
            args.target_len,
            args.compile,
            args.full_logits,
        )
        print(json.dumps(r))
        return
    torch.manual_seed(0)
    cfg = get_config(args.preset)
    sides = {"hf": ["--worker", "hf"], "ours, full logits": ["--worker", "ours", "--full-logits"],
             "ours": ["--worker", "ours"]}  # fmt: skip
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(Kosmos25(cfg), Path(tmp) / "w")
        common = ["--weights", str(Path(tmp) / "w"), "--preset", args.preset, "--batch", str(args.batch),
                  "--steps", str(args.steps), "--target-len", str(args.target_len)]  # fmt: skip
        common += ["--compile"] if args.compile else []
        names = list(sides)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            results = {}
            for name in order:
                cmd = [sys.executable, "-m", "benchmarks.train_step", *sides[name], *common]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[name] = json.loads(out.strip().splitlines()[-1])
            rounds.append(results)
            print(
                f"round {r} ({', '.join(order)}): " + "  ".join(
                    f"{name} {results[name]['samples_per_s']:.3f}/s ({results[name]['samples_per_s'] / results['hf']['samples_per_s']:.2f}x, "
                    f"memory {results[name]['peak_step_mb'] / max(results['hf']['peak_step_mb'], 1e-9):.2f}x)"
                    for name in ("ours, full logits", "ours")
                ),
                flush=True,
            )  # fmt: skip
    n_params = sum(p.numel() for p in Kosmos25(cfg).parameters())
    print(
        f"preset={args.preset} ({n_params / 1e6:.1f}M params)  batch={args.batch}  steps={args.steps}  "
        f"max_patches={cfg.max_patches}  latent={cfg.latent_query_num}  target_len={args.target_len}  "
        f"threads={torch.get_num_threads()}  compile={args.compile}  rounds={args.rounds}"
    )

    def median(values):
        return statistics.median(values)

    for name in sides:
        rate = median([r[name]["samples_per_s"] for r in rounds])
        step_mb = median([r[name]["peak_step_mb"] for r in rounds])
        print(f"{name:18s} {rate:7.3f} samples/s   peak step memory {step_mb:8.1f} MB (medians)")
    for name, what in (("ours, full logits", "like for like"), ("ours", "our training path")):
        speed = median([r[name]["samples_per_s"] / r["hf"]["samples_per_s"] for r in rounds])
        mem = median([r[name]["peak_step_mb"] / max(r["hf"]["peak_step_mb"], 1e-9) for r in rounds])
        print(
            f"ratio {name}/hf ({what}): {speed:.2f}x samples/s, {mem:.2f}x peak step memory (median of rounds)"
        )


if __name__ == "__main__":
    main()
