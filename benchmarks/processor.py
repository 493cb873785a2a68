"""Image processor throughput: ours vs Hugging Face's `Kosmos2_5ImageProcessor`, same pages, same run.

    python -m benchmarks.processor [--max-patches 4096] [--repeats 3]

One thread each. Prints images/s of both, the ratio, and the largest value difference.
"""

from __future__ import annotations

import argparse
import time

import torch

from data_pipeline.synthetic import render_text_page
from model.processor import ImageProcessor

# (width, height): letter page, A4 at 200 dpi, a wide slide, a tall receipt, a small crop, a huge scan.
PAGE_SIZES = [(850, 1100), (1654, 2339), (1920, 1080), (600, 2400), (320, 200), (5100, 6600)]


def _hf_processor(max_patches: int):
    from transformers import Kosmos2_5ImageProcessor

    return Kosmos2_5ImageProcessor(max_patches=max_patches)


def run(max_patches: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    pages = [render_text_page(w, h, seed=i)[0] for i, (w, h) in enumerate(PAGE_SIZES)]
    ours = ImageProcessor(max_patches=max_patches)
    hf = _hf_processor(max_patches)
    worst = 0.0
    for page in pages:  # warm-up and parity
        a = hf(page, return_tensors="pt")["flattened_patches"][0]
        worst = max(worst, (a - ours(page).flattened_patches).abs().max().item())
    times = {"ours": 0.0, "hf": 0.0}
    for _ in range(repeats):
        for name, fn in (("hf", lambda p: hf(p, return_tensors="pt")), ("ours", ours)):
            t = time.perf_counter()
            for page in pages:
                fn(page)
            times[name] += time.perf_counter() - t
    n = repeats * len(pages)
    rate = {k: n / v for k, v in times.items()}
    return {
        "ours_images_per_s": rate["ours"],
        "hf_images_per_s": rate["hf"],
        "ratio": rate["ours"] / rate["hf"],
        "max_abs_diff": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-patches", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    r = run(args.max_patches, args.repeats)
    print(f"pages: {PAGE_SIZES}  max_patches={args.max_patches}  threads=1")
    print(f"ours  {r['ours_images_per_s']:8.2f} images/s")
    print(f"hf    {r['hf_images_per_s']:8.2f} images/s")
    print(f"ratio ours/hf = {r['ratio']:.2f}x   max |ours - hf| = {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
