"""The memory model (`model/memory.py`) against the measured peak of real CPU training steps.

    python -m benchmarks.memory_model [--cases tiny:8:1024:512:0:2:1,...]

A case is `preset:micro:text_len:targets per sample:checkpointing(0/1):ZeRO stage:ranks[:method]`, `method` a
fine-tuning method (`full` or `lora`, as `configs/finetune.yaml` sets them up) or pre-training. Each runs in its own
process (two ranks under the `deepspeed` launcher, gloo): the model, AdamW and a DeepSpeed engine built from
`configs/deepspeed/zero<stage>.yaml`, two steps to allocate everything, then one step measured: the process's
peak resident memory during that step (the kernel's high-water mark, reset before it) less its resident
memory before the model was built. glibc's allocator is told to map every large block afresh
(`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set as they do a GPU allocator's pool. Printed
per case: predicted and measured MiB and their ratio (rank 0; with two ranks, the larger of the two).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from configs.compose import compose

ROOT = Path(__file__).resolve().parents[1]
CASES = (
    "tiny:1:512:256:0:2:1,tiny:8:1024:512:0:2:1,small:1:1024:256:0:2:1,small:4:1024:256:0:2:1,"
    "small:8:1024:512:0:2:1,small:8:1024:512:1:2:1,small:2:2048:1024:0:2:1,small:4:1024:256:0:2:2,"
    "small:4:1024:256:0:3:2,small:4:1024:256:1:3:2,small:4:1024:256:0:2:1:full,small:4:1024:256:0:2:1:lora,"
    "small:8:1024:512:1:2:1:lora,small:4:1024:256:0:3:2:lora"
)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _case(spec: str) -> dict:
    preset, micro, text_len, targets, ckpt, zero, ranks, *method = spec.split(":")
    return dict(preset=preset, micro=int(micro), text_len=int(text_len), targets=int(targets),
                checkpointing=ckpt == "1", zero=int(zero), ranks=int(ranks),
                method=method[0] if method else None)  # fmt: skip


def tuner(method: str):
    """A fine-tuning method set up as `configs/finetune.yaml` sets it up (`train.tuning.Tuner`)."""
    from omegaconf import OmegaConf

    from train.tuning import Tuner

    defaults = compose("finetune", [])
    keys = ("finetune", "lora", "plora")
    return Tuner(
        OmegaConf.create({"method": method, "seed": 0, "init": "", **{k: defaults[k] for k in keys}}), {}
    )


def batch(cfg, micro: int, text_len: int, targets: int, seed: int = 0) -> dict:
    """A micro batch of full pages: every patch real, `text_len` positions of which the last `targets` are
    targets, the image slots after `<s><image>`."""
    import torch

    from model.kosmos import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    p, q = cfg.max_patches, cfg.latent_query_num
    side = int(p**0.5)
    patches = torch.randn(micro, p, cfg.vision.patch_embed_hidden_size + 2, generator=g)
    patches[:, :, 0] = torch.arange(p) // side + 1
    patches[:, :, 1] = torch.arange(p) % side + 1
    ids = torch.randint(10, cfg.text.vocab_size, (micro, text_len), generator=g)
    ids[:, 0], ids[:, 2 : 2 + q] = 0, 0
    mask = torch.zeros_like(ids)
    mask[:, 1], mask[:, 2 : 2 + q], mask[:, 2 + q] = -1, 1, -1
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, text_len - targets :] = ids[:, text_len - targets :]
    return {"flattened_patches": patches, "input_ids": ids, "image_embeds_position_mask": mask, "labels": labels,
            "sources": ["s"] * micro, "tasks": ["ocr"] * micro}  # fmt: skip


def worker(case: dict, out: str) -> None:
    import deepspeed
    import torch
    from omegaconf import OmegaConf

    from model.config import get_config
    from model.kosmos import Kosmos25
    from train.batch_plan import batch_plan
    from train.engine import deepspeed_config, lr_lambda, param_groups
    from train.step import train_step

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    cfg = get_config(case["preset"], activation_checkpointing=case["checkpointing"])
    micro = batch(cfg, case["micro"], case["text_len"], case["targets"], seed=rank)
    start = _status("VmRSS")
    torch.manual_seed(0)
    model = Kosmos25(cfg).train()
    if case["method"]:
        model = tuner(case["method"]).adapt(model)
    run_cfg = OmegaConf.create(
        {
            "deepspeed": compose("pretrain", [f"deepspeed=zero{case['zero']}"]).deepspeed,
            "trainer": {},
            "optim": {"grad_clip": 1.0},
        }
    )
    ds = deepspeed_config(run_cfg, batch_plan(case["micro"] * world, case["micro"], world), False)
    opt = torch.optim.AdamW(param_groups(model, 0.01, 2e-4), lr=2e-4, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 10**6))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)
    for _ in range(2):
        train_step(engine, [micro], world, False)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
    train_step(engine, [micro], world, False)
    peak = _status("VmHWM")
    with open(out, "a") as f:
        f.write(json.dumps({"rank": rank, "peak": peak - start, "before": before - start}) + "\n")


def predict(case: dict, framework: float = 0.0):
    """The memory model's figures for a case (`model.memory.Memory`)."""

    from model.config import get_config
    from model.memory import Plan, estimate, zero_fields

    ds = compose("pretrain", [f"deepspeed=zero{case['zero']}"]).deepspeed.zero_optimization
    cfg = get_config(case["preset"], activation_checkpointing=case["checkpointing"])
    plan = Plan(
        micro=case["micro"],
        text_len=case["text_len"],
        targets=case["micro"] * case["targets"],
        checkpointing=case["checkpointing"],
        world=case["ranks"],
        dtype_bytes=4,
        device="cpu",
        **zero_fields(ds),
        framework=framework,
        **(tuner(case["method"]).shape(cfg) if case["method"] else {}),
    )
    return estimate(cfg, plan)


def measure(spec: str, port: int) -> dict:
    """The measured peak of a case and the resident memory before its measured step (the larger over its
    ranks), in bytes."""
    case = _case(spec)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.jsonl")
        args = ["--worker", spec, "--out", out]
        if case["ranks"] == 1:
            env.update(
                RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
            )
            cmd = [sys.executable, "-m", "benchmarks.memory_model", *args]
        else:
            launcher = str(Path(sys.executable).parent / "deepspeed")
            cmd = [launcher, "--num_accelerators", str(case["ranks"]), "--no_local_rank", "--master_port",
                   str(port), "--module", "benchmarks.memory_model", *args]  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"case {spec} failed:\n{(r.stdout + r.stderr)[-3000:]}")
        rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    if os.environ.get("MEMORY_MODEL_DEBUG"):
        print(rows, file=sys.stderr)
    return {key: max(row[key] for row in rows) for key in ("peak", "before")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--worker")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(_case(args.worker), args.out)
        from train.pretrain import finish

        # under the launcher: end here, before the communication stack's threads can abort the teardown
        finish(0)
        return
    # The process's own memory besides the model's parts (threads, communication buffers, allocator slack),
    # taken once from the smallest case: what it holds between steps less the model's persistent parts.
    calibration = "tiny:1:256:64:0:2:1"
    held = measure(calibration, 29699)["before"]
    model = predict(_case(calibration))
    framework = held - (model.between_steps - model.framework)
    print(
        f"framework: {framework / 2**20:.0f} MiB ({calibration}: {held / 2**20:.0f} MiB held between steps)"
    )
    worst = 0.0
    for i, spec in enumerate(args.cases.split(",")):
        predicted, measured = predict(_case(spec), framework).peak, measure(spec, 29700 + i)["peak"]
        ratio = predicted / measured
        worst = max(worst, abs(ratio - 1))
        print(f"{spec:28s} predicted {predicted / 2**20:8.0f} MiB  measured {measured / 2**20:8.0f} MiB  "
              f"ratio {ratio:.3f}", flush=True)  # fmt: skip
    print(f"largest error {worst:.1%}")


if __name__ == "__main__":
    main()
