"""The trainer's step against a bare PyTorch loop: same model, same AdamW, same in-memory batches, one
process, same run. The trainer's step is `train.step.train_step` on a DeepSpeed engine (ZeRO-2, the
default), with its global token count, gradient clipping and metrics bookkeeping.

    DS_ACCELERATOR=cpu python -m benchmarks.trainer_overhead [--preset tiny] [--steps 10] [--micro 4] [--accum 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from omegaconf import OmegaConf

from configs.compose import compose
from model.config import get_config
from model.kosmos import IGNORE_INDEX, Kosmos25


def batches(cfg, n: int, micro: int, text: int = 200) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    q, p = cfg.latent_query_num, cfg.max_patches
    for _ in range(n):
        ids = torch.randint(10, cfg.text.vocab_size, (micro, q + 3 + text), generator=g)
        ids[:, 0], ids[:, 2 : 2 + q] = 0, 0
        mask = torch.zeros_like(ids)
        mask[:, 1], mask[:, 2 : 2 + q], mask[:, 2 + q] = -1, 1, -1
        labels = ids.clone()
        labels[:, : q + 3] = IGNORE_INDEX
        patches = torch.zeros(micro, p, 770)
        patches[:, :, 0] = torch.arange(p) // 16 + 1
        patches[:, :, 1] = torch.arange(p) % 16 + 1
        patches[:, :, 2:] = torch.randn(micro, p, 768, generator=g)
        out.append(
            {
                "flattened_patches": patches,
                "input_ids": ids,
                "labels": labels,
                "image_embeds_position_mask": mask,
                "sources": ["s"] * micro,
                "tasks": ["ocr"] * micro,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    args = ap.parse_args()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29677")
    import deepspeed

    from train.batch_plan import batch_plan
    from train.engine import deepspeed_config, lr_lambda, param_groups
    from train.step import train_step

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = get_config(args.preset, text={"dropout": 0.0})
    data = batches(cfg, args.accum, args.micro)
    torch.manual_seed(0)
    bare = Kosmos25(cfg).train()
    torch.manual_seed(0)
    model = Kosmos25(cfg).train()
    run_cfg = OmegaConf.create(
        {
            "deepspeed": compose("pretrain", ["deepspeed=zero2"]).deepspeed,
            "trainer": {"train_batch_size": args.micro * args.accum, "micro_batch_size": args.micro},
            "optim": {"grad_clip": 1.0},
        }
    )

    def optimizer_for(m):
        opt = torch.optim.AdamW(param_groups(m, 0.01, 2e-4), lr=2e-4, betas=(0.9, 0.98), eps=1e-6)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 10**6))

    opt, sched = optimizer_for(model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=opt,
        lr_scheduler=sched,
        config=deepspeed_config(run_cfg, batch_plan(args.micro * args.accum, args.micro, 1), False),
    )
    bare_opt, bare_sched = optimizer_for(bare)

    def bare_step():
        tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in data)
        for b in data:
            out = bare(
                **{
                    k: b[k]
                    for k in ("flattened_patches", "input_ids", "labels", "image_embeds_position_mask")
                },
                compute_logits=False,
            )
            (out.loss_sum / tokens).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        bare_opt.step()
        bare_sched.step()
        bare_opt.zero_grad(set_to_none=True)

    def trainer_step():
        train_step(engine, data, 1, False)

    timings = {}
    for name, fn in (
        ("bare", bare_step),
        ("trainer", trainer_step),
    ) * 2:  # interleaved, the second round counts
        fn()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        timings[name] = args.steps / (time.perf_counter() - t)
    print(
        f"preset={args.preset} micro={args.micro} accumulation={args.accum} threads={torch.get_num_threads()}"
    )
    print(f"bare PyTorch loop  {timings['bare']:.3f} steps/s")
    print(
        f"trainer (DeepSpeed ZeRO-2) {timings['trainer']:.3f} steps/s   ratio {timings['trainer'] / timings['bare']:.2f}"
    )


if __name__ == "__main__":
    main()
