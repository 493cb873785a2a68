"""The paper's run on a cluster, in figures: memory, micro batch, FLOPs, step time, days, storage.

    python -m launch.plan model=kosmos-2.5 gpus=128 gpu=h100 [deepspeed=zero2] [lengths=<build> tokenizer=<dir>]
                          [mfu=0.45] [bandwidth_gbs=...] [key=value ...]

Keys and defaults are in `configs/tools/plan.yaml`; they are Hydra overrides, as for training (unknown keys
refused). For the preset and GPU it prints:

- the micro batch and activation checkpointing the trainer's `auto` would choose (`model.memory.fit`) and the
  memory model's per-GPU peak at the longest micro batch (every sample at `max_length`);
- the padding the loader's length windows leave (the target lengths of `lengths`, a build read through a
  tokenizer, or the distribution measured on texlive's PDF pages), and FLOPs per sample: model FLOPs on real
  positions and hardware FLOPs with padding and recomputation;
- step time at `mfu` of the GPU's peak on hardware FLOPs, plus the communication ZeRO leaves exposed at
  `bandwidth_gbs` per GPU; days per stage; checkpoint size and storage; the corpus's storage; loader workers.

Measured: activation bytes per layer (on this machine's CPU at full width), the memory model's agreement with
CPU training steps, the padding of the loader's windows. Assumed: `mfu`, the bandwidth, the exposed share of
communication, the framework allowance per GPU.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch

from configs.compose import compose, tool_main
from model.config import ModelConfig, config_from_dict
from model.kosmos import Kosmos25
from model.memory import GIB, Memory, Plan, fit, zero_fields

STAGES = {"warmup": 20_000, "layout": 100_000, "mixed": 140_000}
CORPUS_PAGES = 357_400_000
GLOBAL_BATCH = 1024


@dataclass(frozen=True)
class Gpu:
    memory: float  # bytes
    peak: float  # dense bf16 FLOP/s
    bandwidth: float  # bytes/s per GPU between nodes


GPUS = {
    "h100": Gpu(80e9, 989e12, 50e9),  # 400 Gb/s InfiniBand NDR per GPU
    "a100": Gpu(80e9, 312e12, 25e9),  # 200 Gb/s HDR
    "a100-40": Gpu(40e9, 312e12, 25e9),
    "l40s": Gpu(48e9, 362e12, 12.5e9),
    "a10": Gpu(24e9, 125e12, 12.5e9),
}


@dataclass(frozen=True)
class RunPlan:
    micro: int
    checkpointing: bool
    memory: Memory
    memory_plan: Plan  # what the memory model was given
    budget: float
    padding: float  # share of decoder positions that are padding
    model_flops: float  # per sample, real positions
    hardware_flops: float  # per sample, padding and recomputation included
    step_seconds: float
    exposed_comm_seconds: float
    params: int


def sample_lengths(cfg, n: int = 4096) -> list[int]:
    """Target lengths: tokenised labels of up to `n` samples of the build `cfg.lengths` (with
    `cfg.tokenizer`), or drawn from `cfg.length_quantiles` (a measured distribution, 5% steps)."""
    if cfg.lengths:
        from data_pipeline.manifest import read_manifest
        from data_pipeline.schema import label_member
        from data_pipeline.storage import iter_samples
        from model.task_format import TaskFormat
        from model.tokenizer import Tokenizer
        from train.samples import SourceSpec, label_size

        if not cfg.tokenizer:
            raise ValueError("lengths=<build> needs tokenizer=<dir> to count its targets' tokens")
        fmt = TaskFormat(Tokenizer(cfg.tokenizer), 8, 10**6)
        spec = SourceSpec("plan", str(cfg.lengths), 1.0, str(cfg.task))
        manifest, out = read_manifest(str(cfg.lengths)), []
        for i in range(len(manifest)):
            for sample in iter_samples(manifest.url(i), wanted=label_member):
                if (size := label_size(fmt, spec, sample)) > 0:
                    out.append(size)
                if len(out) >= n:
                    return out
        if not out:
            raise ValueError(f"lengths={cfg.lengths}: no {cfg.task} labels")
        return out
    q = [int(x) for x in cfg.length_quantiles]
    rng = random.Random(0)
    out = []
    for _ in range(n):  # piecewise-linear inverse of the quantile function
        u = rng.random() * (len(q) - 1)
        i = min(int(u), len(q) - 2)
        out.append(round(q[i] + (q[i + 1] - q[i]) * (u - i)))
    return out


def padded_groups(lengths: list[int], micro: int, window: int) -> list[list[int]]:
    """The loader's micro batches: windows of `window` samples sorted by length, cut into runs of `micro`."""
    groups = []
    for start in range(0, len(lengths), window):  # the last window may be short
        ordered = sorted(lengths[start : start + window])
        groups += [ordered[i : i + micro] for i in range(0, len(ordered), micro)]
    return groups


def plan_run(model: ModelConfig, cfg) -> RunPlan:
    if cfg.gpu not in GPUS:
        raise ValueError(f"gpu={cfg.gpu!r}: choose from {', '.join(GPUS)}")
    gpu = GPUS[cfg.gpu]
    gpus = int(cfg.gpus)
    ds = compose(
        "pretrain", [f"deepspeed={cfg.deepspeed}"]
    ).deepspeed.zero_optimization  # as training composes it
    prompt = model.latent_query_num + 4
    length = int(cfg.max_length)

    def make_plan(m: int, ckpt: bool) -> Plan:
        return Plan(
            micro=m,
            text_len=length,
            targets=m * (length - prompt),
            checkpointing=ckpt,
            world=gpus,
            dtype_bytes=2,
            device="cuda",
            **zero_fields(ds),
            framework=float(cfg.framework_gb) * GIB,
        )

    per_gpu = -(-GLOBAL_BATCH // gpus)
    candidates = fit(model, gpu.memory, per_gpu, make_plan, None, float(cfg.headroom))
    chosen = next((c for c in candidates if c[3]), None)
    if chosen is None:
        table = ", ".join(
            f"{m}{' ckpt' if c else ''}: {mem.peak / GIB:.0f} GiB" for m, c, mem, _ in candidates
        )
        raise ValueError(f"nothing fits {gpu.memory / 1e9:.0f} GB with {cfg.headroom:.0%} headroom ({table})")
    micro, ckpt, memory, _ = chosen

    with torch.device("meta"):
        m = Kosmos25(model)
    params = m.num_parameters()
    lengths = [min(n, length - prompt) for n in sample_lengths(cfg)]
    # Padding: the loader's windows over these lengths drawn independently, or the figure measured through
    # the loader on real shards (`padding_measured`, whose consecutive pages are alike), whichever is larger.
    groups = padded_groups(lengths, micro, int(cfg.length_window))
    real = sum(prompt + n for g in groups for n in g)
    padding = max(1 - real / sum(len(g) * (prompt + max(g)) for g in groups), float(cfg.padding_measured))
    model_flops = sum(m.estimate_flops(text_len=prompt + n, target_len=n) for n in lengths) / len(lengths)
    mean_target = sum(lengths) / len(lengths)
    padded = round((prompt + mean_target) / (1 - padding))
    hardware = m.estimate_flops(text_len=padded, target_len=round(mean_target), recompute=ckpt)
    hardware = max(hardware, model_flops)

    # Communication per step and GPU (ring collectives move ~ the whole buffer): ZeRO-1/2 reduce-scatter the
    # gradients and all-gather the parameters once a step; with overlap_comm the reduction hides under the
    # backward pass and the all-gather after the optimizer step is exposed. ZeRO-3 gathers the parameters in
    # the forward and backward passes of every micro batch; prefetching is assumed to hide half.
    bw = float(cfg.bandwidth_gbs) * 1e9 if cfg.bandwidth_gbs else gpu.bandwidth
    shard = (gpus - 1) / gpus if gpus > 1 else 0.0
    volume = 2 * params * shard / bw  # one pass over the bf16 parameters
    accumulation = -(-per_gpu // micro)
    if int(ds.stage) >= 3:
        exposed = 0.5 * accumulation * 3 * volume
    else:
        exposed = volume * (1 if bool(ds.get("overlap_comm", False)) else 2)
    compute = per_gpu * hardware / (gpu.peak * float(cfg.mfu))
    return RunPlan(micro, ckpt, memory, make_plan(micro, ckpt), gpu.memory, padding, model_flops, hardware, compute + exposed, exposed,
                   params)  # fmt: skip


def plan(model: ModelConfig, cfg) -> str:
    r = plan_run(model, cfg)
    gpus, gpu = int(cfg.gpus), GPUS[cfg.gpu]
    lines = [
        f"model {model.name}: {r.params / 1e9:.2f}B parameters; {gpus} x {cfg.gpu} "
        f"({gpu.memory / 1e9:.0f} GB, {gpu.peak / 1e12:.0f} TFLOP/s bf16), {cfg.deepspeed}",
        f"fits: micro batch {r.micro}, activation checkpointing {'on' if r.checkpointing else 'off'}, "
        f"{r.memory.peak / 1e9:.1f} GB at the longest micro batch ({cfg.max_length} positions each), "
        f"{1 - r.memory.peak / r.budget:.0%} headroom; {r.memory.describe()}",
        f"padding: {r.padding:.1%} of decoder positions (length windows of {cfg.length_window}; "
        f"measured through the loader on real PDF shards: {float(cfg.padding_measured):.1%})",
        f"FLOPs per sample: {r.model_flops / 1e12:.1f} TFLOPs model (real positions), "
        f"{r.hardware_flops / 1e12:.1f} hardware (padding"
        + (" and recomputation" if r.checkpointing else "")
        + ")",
        f"step: {r.step_seconds:.2f} s for {GLOBAL_BATCH} samples at {float(cfg.mfu):.0%} of peak on hardware FLOPs "
        f"(MFU {float(cfg.mfu) * r.model_flops / r.hardware_flops:.0%}), {r.exposed_comm_seconds:.2f} s of it "
        f"exposed communication at {(float(cfg.bandwidth_gbs) * 1e9 if cfg.bandwidth_gbs else gpu.bandwidth) / 1e9:.0f} GB/s "
        f"per GPU; {GLOBAL_BATCH / r.step_seconds / gpus:.1f} samples/s per GPU",
    ]
    lines += [
        f"  stage {name:7s} {steps:>7,} steps: {steps * r.step_seconds / 86400:6.1f} days"
        for name, steps in STAGES.items()
    ]
    ckpt = r.params * (2 + 4 + 8)
    lines.append(
        f"checkpoint: {ckpt / 1e9:.1f} GB (bf16 weights, fp32 master weights, AdamW moments); "
        f"{int(cfg.keep_checkpoints)} kept: {int(cfg.keep_checkpoints) * ckpt / 1e9:.0f} GB"
    )
    lines.append(
        f"corpus: {CORPUS_PAGES / 1e6:.1f}M pages x {float(cfg.bytes_per_page) / 1e3:.0f} KB = "
        f"{CORPUS_PAGES * float(cfg.bytes_per_page) / 1e12:.0f} TB of shards"
    )
    rate = float(cfg.loader_samples_per_s)
    samples_s = GLOBAL_BATCH / r.step_seconds / gpus
    lines.append(f"loader: {samples_s / rate:.1f} worker processes per GPU at {rate:g} samples/s each")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return tool_main(argv, __doc__, "plan", lambda cfg: plan(config_from_dict(cfg.model), cfg))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
