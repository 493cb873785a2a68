"""One GPU, one script, the paths a CPU cannot run: bf16 training steps of `small` and `kosmos-2.5` through the
trainer itself (`train.pretrain`: DeepSpeed, ZeRO-2, the micro batch the memory model picks), then the attention
kernel the model's forward actually takes and greedy generation with the KV cache.

    python -m benchmarks.gpu_check [--out runs/gpu_check] [--steps 8]            # on a GPU, in about 8 minutes
    python -m benchmarks.gpu_check --reduced [--sources s.json --tokenizer dir]   # on a CPU: tiny, fp32, 3 steps

For each preset it prints samples/s, MFU and HFU (the trainer's own figures, medians after the first two
steps), the peak of `torch.cuda.max_memory_allocated` against `model/memory.py`'s prediction for the chosen
micro batch (the trainer prints it), the SDPA backend its attention ran (from the profiler's kernel names) and
generation tokens/s; everything also goes to `<out>/gpu_check.json`. Without `--sources`/`--tokenizer` it
builds its own synthetic pages and tokenizer first. `--reduced` is what the test suite runs, so the script
cannot rot on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(work: Path) -> tuple[Path, Path]:
    """Synthetic pages as a training source, and a tokenizer trained on them."""
    from data_pipeline.synthetic import WORDS
    from model.tokenizer import iter_texts, train_tokenizer

    texts = work / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    for d in range(8):
        lines = [" ".join(WORDS[(d * 97 + i * 13 + k) % len(WORDS)] for k in range(6)) for i in range(40)]
        (texts / f"t{d}.txt").write_text("\n".join(lines))
    shards = work / "shards"
    subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", "source=synthetic", f"input={texts}", f"output={shards}",
         "workers=2", "docs_per_shard=1", "filters.languages=all", "dedup=false", "source.snippets_per_page=8"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    tokenizer = work / "tokenizer"
    if not (tokenizer / "tokenizer.model").exists():
        train_tokenizer(iter_texts([str(shards)]), tokenizer, vocab_size=3000, coord_bins=512)
    sources = work / "sources.json"
    sources.write_text(json.dumps([{"name": "synthetic", "root": str(shards), "weight": 1.0, "task": "ocr"}]))
    return sources, tokenizer


def train(preset: str, sources: Path, tokenizer: Path, run: Path, steps: int, reduced: bool) -> dict:
    """A short run of the trainer; its figures."""
    args = [
        "stage=layout", f"model={preset}", f"tokenizer={tokenizer}", f"data.sources_file={sources}",
        f"data.workers={0 if reduced else 2}", f"trainer.train_batch_size={2 if reduced else 16}",
        "trainer.micro_batch_size=auto", f"trainer.max_steps={steps}",
        f"trainer.max_length={256 if reduced else 2048}", "trainer.precision=auto", "optim.warmup_steps=1",
        f"run_dir={run}", "trainer.checkpoint_every=100000", "eval.every=0", "wandb.mode=disabled",
        "trainer.dropout=0",
    ]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if reduced else "cuda")}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "train.pretrain", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1800)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"train.pretrain {preset} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [row for row in rows if "samples_per_s" in row][2:] or [
        row for row in rows if "samples_per_s" in row
    ]
    memory = re.search(
        r"memory: micro batch (\d+), activation checkpointing \w+: ([\d.]+) GiB at the peak", r.stdout
    )
    out = {
        "preset": preset,
        "seconds": round(time.perf_counter() - start, 1),
        "steps": len([row for row in rows if "samples_per_s" in row]),
        "samples_per_s": statistics.median(row["samples_per_s"] for row in steady),
        "mfu": statistics.median(row["mfu"] for row in steady),
        "hfu": statistics.median(row["hfu"] for row in steady),
        "micro_batch": int(memory.group(1)) if memory else None,
        "predicted_peak_gib": float(memory.group(2)) if memory else None,
    }
    if any("gpu_max_allocated_mb" in row for row in rows):
        out["measured_peak_gib"] = max(row.get("gpu_max_allocated_mb", 0) for row in rows) / 1024
        if out["predicted_peak_gib"]:
            out["memory_ratio"] = out["predicted_peak_gib"] / out["measured_peak_gib"]
    return out


def attention_and_generation(run: Path, new_tokens: int) -> dict:
    """The attention kernels one forward of the trained model runs (profiler kernel names), and greedy
    generation tokens/s with the KV cache."""
    from PIL import Image

    from model.processor import ImageProcessor
    from model.task_format import TaskFormat
    from train.checkpoint import load_run

    model, tok = load_run(run)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    page = ImageProcessor(model.config.max_patches)(Image.new("RGB", (850, 1100), "white"))
    patches = page.flattened_patches[None].to(device=device, dtype=dtype)
    prompt = {
        k: v.to(device)
        for k, v in TaskFormat(tok, model.config.latent_query_num, 4096).prompt_batch("ocr", 1).items()
    }
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    )
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        model(flattened_patches=patches, **prompt)
    backends = sdpa_backends({e.name for e in prof.events()})
    with torch.no_grad():
        model.generate(
            patches,
            prompt["input_ids"],
            prompt["image_embeds_position_mask"],
            max_new_tokens=4,
            eos_token_id=-1,
        )
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        made = model.generate(patches, prompt["input_ids"], prompt["image_embeds_position_mask"],
                              max_new_tokens=new_tokens, eos_token_id=-1)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"sdpa_backends": backends, "generate_tokens_per_s": made.shape[1] / seconds}


def sdpa_backends(names: set[str]) -> list[str]:
    """Which scaled-dot-product attention kernels ran, from the profiler's op and kernel names."""
    found = set()
    for name in (n.lower() for n in names):
        if "scaled_dot_product" in name and "for_cpu" in name:
            found.add("CPU fused kernel")
        elif "flash" in name:
            found.add("flash")
        elif any(k in name for k in ("efficient_attention", "fmha", "mem_eff")):
            found.add("memory-efficient")
        elif "cudnn" in name and "attention" in name:
            found.add("cudnn")
        elif "scaled_dot_product_attention_math" in name:
            found.add("math")
    return sorted(found) or ["none seen"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    ap.add_argument(
        "--steps", type=int, default=8, help="training steps a preset (the first two not counted)"
    )
    ap.add_argument("--reduced", action="store_true", help="the CPU version: tiny preset, fp32, 3 steps")
    ap.add_argument(
        "--sources", type=Path, help="a training sources file (default: synthetic pages made here)"
    )
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer folder (with --sources)")
    args = ap.parse_args(argv)
    if not args.reduced and not torch.cuda.is_available():
        ap.error("no GPU here: --reduced runs the CPU version")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sources and args.tokenizer:
            sources, tokenizer = args.sources, args.tokenizer
        else:
            sources, tokenizer = make_inputs(Path(tmp))
        presets = ["tiny"] if args.reduced else ["small", "kosmos-2.5"]
        steps = 3 if args.reduced else args.steps
        device = "CPU" if args.reduced or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
        results = {"device": device, "torch": torch.__version__, "presets": []}
        for preset in presets:
            run = args.out / f"run-{preset}"
            shutil.rmtree(run, ignore_errors=True)  # a check starts afresh
            figures = train(preset, sources, tokenizer, run, steps, args.reduced)
            figures.update(attention_and_generation(run, 16 if args.reduced else 128))
            results["presets"].append(figures)
            print(json.dumps(figures), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(f"{device}, torch {torch.__version__}")
    for f in results["presets"]:
        memory = (
            f", peak {f['measured_peak_gib']:.2f} GiB measured vs {f['predicted_peak_gib']:.2f} predicted"
            if "measured_peak_gib" in f
            else ""
        )
        print(
            f"{f['preset']:12s} micro {f['micro_batch']}: {f['samples_per_s']:.2f} samples/s, MFU {f['mfu']:.1%}, "
            f"HFU {f['hfu']:.1%}{memory}; attention {', '.join(f['sdpa_backends'])}; generation "
            f"{f['generate_tokens_per_s']:.1f} tokens/s"
        )
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
