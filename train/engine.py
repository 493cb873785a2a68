"""The DeepSpeed side of training: the training dtype, the DeepSpeed config (our `deepspeed` group with the keys
the trainer computes), AdamW's parameter groups and its warm-up and decay schedule, the engine built around
them, and the process group started.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from configs.compose import ConfigError


def lr_lambda(warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then linear decay to 0 at step `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    return f


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, image_lr_scale: float = 1.0
) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, embeddings or the latent queries. The image path
    (vision encoder and resampler) can learn at `image_lr_scale` x the learning rate: from scratch, its
    output starts far smaller than the text embeddings and a small model is slow to start reading."""
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        skip = p.ndim < 2 or "embed" in name or "latent_query" in name or "norm" in name
        image = name.startswith(("vision_model.", "image_to_text_projection."))
        groups.setdefault((not skip, image and image_lr_scale != 1.0), []).append(p)
    return [
        {
            "params": ps,
            "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * (image_lr_scale if scaled else 1.0),
        }
        for (decay, scaled), ps in sorted(groups.items(), key=lambda g: (not g[0][0], g[0][1]))
    ]


# DeepSpeed keys the trainer computes, and where their values come from.
COMPUTED_DEEPSPEED_KEYS = {
    "train_batch_size": "trainer.train_batch_size",
    "train_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.train_batch_size, trainer.micro_batch_size and the world size",
    "gradient_clipping": "optim.grad_clip",
    "bf16": "trainer.precision",
    "fp16": "trainer.precision",
    "optimizer": "optim.*",
    "scheduler": "optim.warmup_steps and the stage's steps",
}


def _without_nulls(d):
    return {k: _without_nulls(v) for k, v in d.items() if v is not None} if isinstance(d, dict) else d


def training_bf16(cfg: DictConfig, cuda: bool) -> bool:
    """The training dtype from `trainer.precision`: auto (bf16 on a GPU, fp32 elsewhere), bf16 or fp32. fp16 is
    refused: the loss is summed over the global batch's tokens, and bf16 has fp32's range without a loss
    scale."""
    precision = str(cfg.trainer.precision)
    if precision == "fp16":
        raise ConfigError(
            "trainer.precision=fp16 is not supported (no loss scaling): use bf16 (Ampere or later GPUs) or fp32"
        )
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"trainer.precision={precision}: one of auto, bf16, fp32")
    if precision == "bf16" and not cuda:
        raise ConfigError("trainer.precision=bf16 needs a GPU here; auto trains in fp32 on a CPU")
    return precision == "bf16" or (precision == "auto" and cuda)


def deepspeed_config(cfg: DictConfig, plan, bf16: bool) -> dict:
    """The DeepSpeed config: the `deepspeed` group's dict (nulls dropped: DeepSpeed's defaults) with the keys the
    trainer computes. A computed key set in the group, or a ZeRO section DeepSpeed would refuse, is a
    ConfigError."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    ds = _without_nulls(OmegaConf.to_container(cfg.deepspeed, resolve=True))
    for key in sorted(set(ds) & set(COMPUTED_DEEPSPEED_KEYS)):
        raise ConfigError(
            f"deepspeed.{key} is set by the trainer from {COMPUTED_DEEPSPEED_KEYS[key]}; set that instead"
        )
    try:
        DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"deepspeed.zero_optimization.{where}: {first['msg']}") from None
    zero = ds.get("zero_optimization", {})
    if int(zero.get("stage", 0)) not in (1, 2, 3):
        raise ConfigError(
            f"deepspeed.zero_optimization.stage={zero.get('stage', 0)}: the trainer runs ZeRO stage 1, 2 or 3 (its "
            "optimizer computes the global gradient norm the bad-step guard reads)"
        )
    if zero.get("compute_grad_norm") is False:
        raise ConfigError(
            "deepspeed.zero_optimization.compute_grad_norm=false: the bad-step guard needs the norm"
        )
    return {
        **ds,
        # DeepSpeed's own bookkeeping: the largest micro batch a rank runs. With uneven ranks this
        # product exceeds the global batch; the loss is scaled by the global batch's tokens (train_step).
        "train_batch_size": plan.micro * plan.accumulation * plan.world,
        "train_micro_batch_size_per_gpu": plan.micro,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": float(cfg.optim.grad_clip),
        "bf16": {"enabled": bf16},
    }


def offloads_optimizer(ds: dict) -> bool:
    return (ds.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none") != "none"


def build_engine(cfg: DictConfig, model, ds_config: dict):
    """AdamW (DeepSpeed's CPU AdamW when the optimizer is offloaded) with the warm-up and decay schedule, in a
    DeepSpeed engine. Returns the engine and the scheduler."""
    import deepspeed

    groups = param_groups(
        model, float(cfg.optim.weight_decay), float(cfg.optim.lr), float(cfg.optim.image_lr_scale)
    )
    adam = dict(lr=float(cfg.optim.lr), betas=tuple(cfg.optim.betas), eps=float(cfg.optim.eps))
    if offloads_optimizer(ds_config):  # the optimizer steps on the CPU: DeepSpeed's vectorised AdamW
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, adamw_mode=True, **adam)
    else:
        optimizer = torch.optim.AdamW(groups, **adam)
    schedule = lr_lambda(int(cfg.optim.warmup_steps), int(cfg.trainer.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if int(os.environ.get("RANK", "0")) == 0:  # read back from the engine: what DeepSpeed runs with
        print(
            f"deepspeed: ZeRO stage {engine.zero_optimization_stage()}, overlap_comm "
            f"{engine.zero_overlap_comm()}, contiguous_gradients {engine.zero_contiguous_gradients()}, reduce "
            f"bucket {engine.zero_reduce_bucket_size():,}, communication {engine.communication_data_type}; "
            f"{Path(cfg.run_dir) / 'deepspeed.json'}",
            flush=True,
        )
    return engine, scheduler


def start_distributed(cfg: DictConfig, cuda: bool) -> None:
    """The process group (NCCL on GPUs, gloo otherwise), its collectives timing out after
    `trainer.collective_timeout` s (default 4 x `trainer.hang_timeout`); alone, a one-process group."""
    import socket
    from datetime import timedelta

    import deepspeed

    if "RANK" not in os.environ:  # started without a launcher: a one-process group on this machine
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
    hang = float(cfg.trainer.hang_timeout)
    timeout = float(cfg.trainer.get("collective_timeout") or (4 * hang if hang > 0 else 1800))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
