"""The trainer's settings, checked before anything starts: numbers, batch math, schedule, parameter groups,
precision, the DeepSpeed config, the data sources, the memory fit and the run folder's identity."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    pass


NUMBERS = {
    int: (
        "trainer.train_batch_size", "trainer.max_steps", "trainer.max_length",
        "trainer.keep_checkpoints", "optim.warmup_steps", "data.workers", "seed",
        "eval.every", "eval.samples_per_source", "eval.batch", "eval.predictions", "eval.max_new_tokens",
        "trainer.bad_steps.window", "trainer.bad_steps.warmup", "trainer.bad_steps.rollback_after",
        "trainer.bad_steps.rollback_within", "trainer.bad_steps.max_rollbacks",
    ),
    float: ("optim.lr", "optim.image_lr_scale", "optim.eps", "optim.weight_decay", "optim.grad_clip", "trainer.dropout",
            "trainer.memory_headroom", "trainer.hang_timeout", "trainer.bad_steps.sigma"),
}  # fmt: skip


def check_numbers(cfg: DictConfig) -> None:
    """Numeric settings are numbers and counts are not negative: a typo fails before any work."""
    for kind, keys in NUMBERS.items():
        for key in keys:
            value = OmegaConf.select(cfg, key)
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}"
                ) from None
            if kind is int and (number != float(value) or number < 0):
                raise ConfigError(f"{key}={value!r}: expected a whole number >= 0")
    micro = cfg.trainer.micro_batch_size
    if micro != "auto" and (not str(micro).isdigit() or int(micro) < 1):
        raise ConfigError(f"trainer.micro_batch_size={micro!r}: a whole number >= 1, or auto")
    if cfg.model.get("activation_checkpointing") not in (True, False, "auto"):
        raise ConfigError(
            f"model.activation_checkpointing={cfg.model.activation_checkpointing!r}: true, false or auto"
        )
    if int(cfg.trainer.max_steps) < 1:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps}: a stage needs at least one step")


def checkpoint_every(value) -> tuple[int, float]:
    """`trainer.checkpoint_every`: steps (`1000`) or minutes (`30min`); returns (steps, minutes), the other 0."""
    text = str(value).strip()
    if text.endswith("min") and text[:-3].strip().replace(".", "", 1).isdigit() and float(text[:-3]) > 0:
        return 0, float(text[:-3])
    if text.isdigit() and int(text) > 0:
        return int(text), 0.0
    raise ConfigError(f"trainer.checkpoint_every={value!r}: a number of steps (1000) or of minutes (30min)")


def batch_math(global_batch: int, micro: int, world: int, slots: int | None = None):
    """The plan of the global batch on `world` ranks (`train.loader.BatchPlan`): accumulation, micro batch,
    slots. Any world size up to the slot count has one."""
    from train.loader import batch_plan

    try:
        return batch_plan(global_batch, micro, world, slots)
    except ValueError as e:
        raise ConfigError(str(e)) from None


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


def load_sources(cfg: DictConfig, validation: bool = False):
    """The training sources of the stage's tasks (or, with `validation`, the held-out ones)."""
    from train.loader import SourceSpec

    data = cfg.data
    prefix = "val_" if validation else ""
    file = data.get(f"{prefix}sources_file")
    listed = data.get(f"{prefix}sources")
    entries = (
        json.loads(Path(file).read_text()) if file else (OmegaConf.to_container(listed) if listed else [])
    )
    tasks = set(cfg.eval.tasks or cfg.stage.tasks) if validation else set(cfg.stage.tasks)
    specs = [
        SourceSpec(e["name"], str(e["root"]), float(e.get("weight", 1.0)), e["task"])
        for e in entries
        if e["task"] in tasks and float(e.get("weight", 1.0)) > 0
    ]
    if not specs and not validation:
        raise ConfigError(f"data: no source trains the stage's tasks {sorted(tasks)}")
    from data_pipeline.storage import read_manifest

    for spec in specs:  # a missing or unreadable manifest is reported now, not from inside a loader worker
        read_manifest(spec.root)
    return specs


# What a rank's process holds besides the model's parts, the same on every rank so that all ranks choose the
# same micro batch. GPU: CUDA context, NCCL buffers, allocator slack (assumed, not measured here). CPU: Python,
# torch, DeepSpeed and gloo, the loader in the process (measured: the tiny preset's trainer peaks at 589 MiB
# alone and 675 MiB inside the test suite, of which the model's parts are ~100 MiB).
GPU_FRAMEWORK_BYTES = 2 * 1024**3
CPU_FRAMEWORK_BYTES = 640 * 1024**2


def fit_memory(
    cfg: DictConfig,
    model_cfg,
    world: int,
    bf16: bool,
    cuda: bool,
    auto_ckpt: bool,
    tuning: dict | None = None,
):
    """`trainer.micro_batch_size` and `model.activation_checkpointing`, either of them `auto`: resolved by the
    memory model (`model.memory.fit`) for the longest micro batch the run can make (every sample at
    `trainer.max_length`) within `trainer.memory_budget_gb` (default: the GPU's memory) less
    `trainer.memory_headroom`. Returns the micro batch, the model config and a line to print ('' when
    nothing was automatic). `tuning`: fine-tuning's `Plan` fields (`train.tuning.Tuner.shape`)."""
    from model.memory import GIB, Plan, fit, zero_fields

    micro = cfg.trainer.micro_batch_size
    if micro != "auto" and not auto_ckpt:
        return int(micro), model_cfg, ""
    budget = cfg.trainer.get("memory_budget_gb")
    if budget is not None:
        budget = float(budget) * GIB
    elif cuda:
        budget = torch.cuda.get_device_properties(0).total_memory
    else:  # the machine's memory shared by the ranks on it
        ranks = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / ranks
    framework = GPU_FRAMEWORK_BYTES if cuda else CPU_FRAMEWORK_BYTES
    zero = OmegaConf.to_container(cfg.deepspeed, resolve=True).get("zero_optimization", {})
    length = int(cfg.trainer.max_length)
    prompt = model_cfg.latent_query_num + 4

    def make_plan(m: int, ckpt: bool) -> Plan:
        return Plan(
            micro=m,
            text_len=length,
            targets=m * max(length - prompt, 1),
            checkpointing=ckpt,
            world=world,
            dtype_bytes=2 if bf16 else 4,
            device="cuda" if cuda else "cpu",
            **zero_fields(zero),
            framework=framework,
            **(tuning or {}),
        )

    per_rank = -(-int(cfg.trainer.train_batch_size) // world)
    largest = per_rank if micro == "auto" else int(micro)
    fixed = None if auto_ckpt else bool(model_cfg.activation_checkpointing)
    candidates = fit(model_cfg, budget, largest, make_plan, fixed, float(cfg.trainer.memory_headroom))
    if micro != "auto":
        candidates = [c for c in candidates if c[0] == int(micro)]
    table = ", ".join(f"{m}{' ckpt' if c else ''} {mem.peak / GIB:.2f}" for m, c, mem, _ in candidates)
    chosen = next((c for c in candidates if c[3]), None)
    if chosen is None:
        raise ConfigError(
            f"no micro batch fits {budget / GIB:.1f} GiB less {float(cfg.trainer.memory_headroom):.0%} "
            f"headroom at trainer.max_length={length} (GiB at the peak: {table}); raise the budget, shorten "
            "trainer.max_length, or use a ZeRO stage or offload that holds less"
        )
    micro, ckpt, memory, _ = chosen
    line = (
        f"memory: micro batch {micro}, activation checkpointing {'on' if ckpt else 'off'}: {memory.describe()}; "
        f"budget {budget / GIB:.1f} GiB less {float(cfg.trainer.memory_headroom):.0%} (GiB at the peak: {table})\n"
    )
    return micro, dataclasses.replace(model_cfg, activation_checkpointing=ckpt), line


# Settings a run may change between its starts (a longer stage, other evaluation, logging or loader workers);
# any other difference from the config a run folder holds is refused unless trainer.resume=force.
SAFE_TO_CHANGE = (
    "trainer.max_steps", "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.dry_run",
    "trainer.log_sample_keys", "trainer.resume", "trainer.reset_loader", "trainer.memory_budget_gb",
    "trainer.memory_headroom", "trainer.peak_flops", "trainer.hang_timeout", "trainer.collective_timeout",
    "trainer.skip_data", "trainer.bad_steps.", "trainer.test_faults", "stage.steps", "eval.", "wandb.", "data.workers",
    "data.val_sources", "data.val_sources_file",
)  # fmt: skip


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def check_identity(cfg: DictConfig) -> None:
    """A run folder belongs to one run: starting with settings that differ from its `config.yaml` (other than
    `SAFE_TO_CHANGE`) is refused with the differences, unless `trainer.resume=force`."""
    saved = Path(cfg.run_dir) / "config.yaml"
    if not saved.exists() or cfg.trainer.get("resume") == "force":
        return
    old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    missing = object()
    diff = [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k, missing) != new.get(k, missing)
        and not any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAFE_TO_CHANGE)
    ]
    if diff:
        raise ConfigError(
            f"{saved} is another run's: "
            + "; ".join(diff[:12])
            + ("; ..." if len(diff) > 12 else "")
            + ". Use another run_dir (or run_name), or trainer.resume=force to go on with these settings"
        )


def resumed_slots(cfg: DictConfig) -> int | None:
    """`data.slots`, or, when it is left to its default, the slot count of the checkpoint this run resumes
    (so a run resumed on another world size keeps its streams)."""
    from train.checkpoint import resumed_slots as saved_slots

    if cfg.data.get("slots") or cfg.trainer.reset_loader:
        return cfg.data.get("slots")
    return saved_slots(Path(cfg.run_dir) / "checkpoints")


@dataclasses.dataclass
class Settings:
    """Everything the run needs that could be checked before starting anything."""

    tok: object
    model_cfg: object
    micro: int
    plan: object
    window: int
    sources: list
    val_sources: list
    ds_config: dict
    bf16: bool
    cuda: bool
    memory_line: str
    skips: object


def prepare(cfg: DictConfig, world: int, tuner=None) -> Settings:
    """Check the config and the data and work out the batch, memory and DeepSpeed plans; a ConfigError (or
    ValueError, FileNotFoundError) names what is wrong. `tuner`: fine-tuning's (`train.tuning.Tuner`), whose
    trainable parameters the memory plan counts."""
    from model.config import config_from_dict
    from model.tokenizer import Tokenizer

    check_numbers(cfg)
    check_identity(cfg)
    tok = Tokenizer(cfg.tokenizer)
    overrides = OmegaConf.to_container(cfg.model, resolve=True)
    overrides.setdefault("text", {})["vocab_size"] = tok.vocab_size
    if float(cfg.trainer.dropout) >= 0:
        overrides["text"]["dropout"] = float(cfg.trainer.dropout)
    auto_ckpt = overrides.get("activation_checkpointing") == "auto"
    if auto_ckpt:
        overrides["activation_checkpointing"] = False
    model_cfg = config_from_dict(overrides)
    if int(cfg.trainer.max_length) > model_cfg.text.max_position_embeddings:
        raise ConfigError(
            f"trainer.max_length={cfg.trainer.max_length} exceeds the model's "
            f"{model_cfg.text.max_position_embeddings} positions"
        )
    cuda = torch.cuda.is_available()
    bf16 = training_bf16(cfg, cuda)
    tuning = tuner.shape(model_cfg) if tuner else None  # also refuses trainable parts the model lacks
    micro, model_cfg, memory_line = fit_memory(cfg, model_cfg, world, bf16, cuda, auto_ckpt, tuning)
    plan = batch_math(int(cfg.trainer.train_batch_size), micro, world, resumed_slots(cfg))
    window = int(cfg.data.get("length_window") or 1)
    if window > 1 and window % plan.per_slot:
        raise ConfigError(
            f"data.length_window={window} must be a multiple of the samples each slot gives a step ({plan.per_slot})"
        )
    sources = load_sources(cfg)
    val_sources = load_sources(cfg, validation=True) if int(cfg.eval.every) > 0 else []
    ds_config = deepspeed_config(cfg, plan, bf16)
    from train.guard import DataSkips

    skips = DataSkips(OmegaConf.to_container(cfg.trainer.skip_data), Path(cfg.run_dir) / "data_skips.json")
    return Settings(
        tok, model_cfg, micro, plan, window, sources, val_sources, ds_config, bf16, cuda, memory_line, skips
    )


def build_model(cfg: DictConfig, model_cfg, fresh: bool):
    """The model at its initialisation (`seed`), or, for a stage that starts from another (`stage.init_from`),
    with that stage's final weights when the run has no checkpoint of its own yet."""
    from model.kosmos import Kosmos25

    torch.manual_seed(int(cfg.seed))
    model = Kosmos25(model_cfg)
    run_dir = Path(cfg.run_dir)
    init_dir = cfg.stage.get("init_from_dir") or (
        str(run_dir.parent / f"{cfg.stage.init_from}-{cfg.model.preset}")
        if cfg.stage.get("init_from")
        else None
    )
    if init_dir and fresh:  # optimizer and schedule start afresh
        weights = Path(init_dir) / "model.pt"
        if not weights.exists():
            raise ConfigError(
                f"stage {cfg.stage.name} starts from {weights}, which does not exist "
                "(run the previous stage first, or set stage.init_from_dir)"
            )
        model.load_full_state_dict(torch.load(weights, map_location="cpu", weights_only=True), str(weights))
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stage {cfg.stage.name}: starting from {weights}", flush=True)
    return model


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
