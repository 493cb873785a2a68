"""Pre-training entry point (Hydra), run alone or under the `deepspeed` launcher:

    python -m train.pretrain stage=layout model=tiny tokenizer=<dir> data.sources_file=<json> [key=value ...]
    deepspeed --num_accelerators 2 --no_local_rank --module train.pretrain stage=layout model=tiny ...   # CPU, gloo

Each worker resolves the config itself. The run lives in `runs/<run_name>/`: the resolved config,
`metrics.jsonl`, and `checkpoints/` (DeepSpeed's shards plus each rank's loader state). Starting the same
run again resumes from its latest checkpoint. SIGTERM or SIGUSR1 (preemption) saves a checkpoint at the next
step boundary and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from model.config import register_hydra_presets

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
register_hydra_presets()  # the `model` group: the presets of model/config.py as structured configs


class ConfigError(ValueError):
    pass


NUMBERS = {
    int: (
        "trainer.train_batch_size", "trainer.max_steps", "trainer.max_length",
        "trainer.checkpoint_every", "trainer.keep_checkpoints", "optim.warmup_steps", "data.workers", "seed",
        "eval.every", "eval.samples_per_source", "eval.batch", "eval.predictions", "eval.max_new_tokens",
    ),
    float: ("optim.lr", "optim.image_lr_scale", "optim.eps", "optim.weight_decay", "optim.grad_clip", "trainer.dropout",
            "trainer.memory_headroom"),
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


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.exists() else None


# What a rank's process holds besides the model's parts, the same on every rank so that all ranks choose the
# same micro batch. GPU: CUDA context, NCCL buffers, allocator slack (assumed, not measured here). CPU: Python,
# torch, DeepSpeed and gloo, the loader in the process (measured: the tiny preset's trainer peaks at 589 MiB
# alone and 675 MiB inside the test suite, of which the model's parts are ~100 MiB).
GPU_FRAMEWORK_BYTES = 2 * 1024**3
CPU_FRAMEWORK_BYTES = 640 * 1024**2


def fit_memory(cfg: DictConfig, model_cfg, world: int, bf16: bool, cuda: bool, auto_ckpt: bool):
    """`trainer.micro_batch_size` and `model.activation_checkpointing`, either of them `auto`: resolved by the
    memory model (`model.memory.fit`) for the longest micro batch the run can make (every sample at
    `trainer.max_length`) within `trainer.memory_budget_gb` (default: the GPU's memory) less
    `trainer.memory_headroom`. Returns the micro batch, the model config and a line to print ('' when
    nothing was automatic)."""
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
    "trainer.memory_headroom", "trainer.peak_flops", "stage.steps", "eval.", "wandb.", "data.workers",
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
    if cfg.data.get("slots") or cfg.trainer.reset_loader:
        return cfg.data.get("slots")
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    tag = latest_checkpoint(ckpt_dir)
    saved = ckpt_dir / tag / "loader_rank0.json" if tag else None
    return json.loads(saved.read_text())["slots"] if saved and saved.exists() else None


def run(cfg: DictConfig) -> int:
    import deepspeed

    from model.config import config_from_dict
    from model.kosmos import Kosmos25
    from model.processor import ImageProcessor
    from model.task_format import TaskFormat
    from model.tokenizer import Tokenizer
    from train.loader import BatchStream, LoaderState, make_loader
    from train.metrics import MetricsLogger

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    # Everything checkable is checked before any process group, model or data is touched.
    try:
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
        use_bf16 = training_bf16(cfg, cuda)
        micro, model_cfg, memory_line = fit_memory(cfg, model_cfg, world, use_bf16, cuda, auto_ckpt)
        plan = batch_math(int(cfg.trainer.train_batch_size), micro, world, resumed_slots(cfg))
        accumulation = plan.accumulation
        window = int(cfg.data.get("length_window") or 1)
        if window > 1 and window % plan.per_slot:
            raise ConfigError(
                f"data.length_window={window} must be a multiple of the samples each slot gives a step "
                f"({plan.per_slot})"
            )
        sources = load_sources(cfg)
        val_sources = load_sources(cfg, validation=True) if int(cfg.eval.every) > 0 else []
        ds_config = deepspeed_config(cfg, plan, use_bf16)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if cfg.trainer.dry_run:  # the checks above and the batch math, nothing started
        if rank == 0:
            print(
                f"{memory_line}batch: {plan.global_batch} = {plan.describe()}; {plan.slots} data slots; "
                f"{len(sources)} training sources; dry run, exiting",
                flush=True,
            )
        return 0
    if "RANK" not in os.environ:  # started without a launcher: a one-process group on this machine
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=1) + "\n")
        print(
            f"{memory_line}batch: {plan.global_batch} = {plan.describe()}; {plan.slots} data slots",
            flush=True,
        )

    torch.manual_seed(int(cfg.seed))
    model = Kosmos25(model_cfg)
    init_dir = cfg.stage.get("init_from_dir") or (
        str(run_dir.parent / f"{cfg.stage.init_from}-{cfg.model.preset}")
        if cfg.stage.get("init_from")
        else None
    )
    if init_dir and latest_checkpoint(ckpt_dir) is None:
        # A new stage starts from the previous stage's final weights; optimizer and schedule start afresh.
        weights = Path(init_dir) / "model.pt"
        if not weights.exists():
            print(
                f"error: stage {cfg.stage.name} starts from {weights}, which does not exist "
                "(run the previous stage first, or set stage.init_from_dir)",
                file=sys.stderr,
            )
            return 2
        try:
            model.load_full_state_dict(
                torch.load(weights, map_location="cpu", weights_only=True), str(weights)
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if rank == 0:
            print(f"stage {cfg.stage.name}: starting from {weights}", flush=True)
    steps = int(cfg.trainer.max_steps)
    groups = param_groups(
        model, float(cfg.optim.weight_decay), float(cfg.optim.lr), float(cfg.optim.image_lr_scale)
    )
    adam = dict(lr=float(cfg.optim.lr), betas=tuple(cfg.optim.betas), eps=float(cfg.optim.eps))
    if offloads_optimizer(ds_config):  # the optimizer steps on the CPU: DeepSpeed's vectorised AdamW
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, adamw_mode=True, **adam)
    else:
        optimizer = torch.optim.AdamW(groups, **adam)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(cfg.optim.warmup_steps), steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
    )
    if rank == 0:  # read back from the engine: what DeepSpeed runs with, not what was asked
        print(
            f"deepspeed: ZeRO stage {engine.zero_optimization_stage()}, overlap_comm "
            f"{engine.zero_overlap_comm()}, contiguous_gradients {engine.zero_contiguous_gradients()}, reduce "
            f"bucket {engine.zero_reduce_bucket_size():,}, communication {engine.communication_data_type}; "
            f"{run_dir / 'deepspeed.json'}",
            flush=True,
        )

    step, resume, rng_state = 0, None, None
    workers, slots = int(cfg.data.workers), plan.slots
    tag = latest_checkpoint(ckpt_dir)
    if tag is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag)
        step = int(client["step"])
        # The learning rate of the next step from the schedule of this run: the checkpoint holds the rate
        # its own run's schedule set last (0 at its end when that run was given fewer steps).
        for group, base, f in zip(
            scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * f(scheduler.last_epoch)
        saved = [json.loads(p.read_text()) for p in sorted((ckpt_dir / tag).glob("loader_rank*.json"))]
        rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
        rng_state = (
            torch.load(rng_file, weights_only=False) if rng_file.exists() and len(saved) == world else None
        )
        if not cfg.trainer.reset_loader:
            try:
                resume = LoaderState.resume(saved, world, int(cfg.data.workers), slots)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        if rank == 0:
            print(f"resumed from {ckpt_dir / tag} at step {step}", flush=True)

    fmt = TaskFormat(tok, model_cfg.latent_query_num, int(cfg.trainer.max_length))
    dataset = BatchStream(
        sources,
        fmt,
        ImageProcessor(model_cfg.max_patches),
        micro,
        int(cfg.seed),
        rank,
        world,
        workers,
        resume,
        slots,
        plan.global_batch,
        torch.bfloat16 if use_bf16 else torch.float32,
        window,
    )
    loader_state = LoaderState(world, workers, slots)
    if resume:
        mine = set(plan.rank_slots(rank))
        loader_state.states = {k: v for k, v in resume["states"].items() if k in mine}
    batches = prefetch(make_loader(dataset, pin_memory=cuda), min(accumulation, 4))
    if rng_state is not None:  # after the DataLoader drew its base seed, as the interrupted run had
        torch.set_rng_state(rng_state["torch"])
        if cuda and rng_state["cuda"]:
            torch.cuda.set_rng_state_all(rng_state["cuda"])
    logger = MetricsLogger(cfg, run_dir, rank, engine.module, world)
    validate = (
        Validation(cfg, engine, tok, val_sources, model_cfg, logger, rank, world) if val_sources else None
    )
    if validate and cfg.eval.at_start and step == 0:
        validate(0)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)

    def save(current: int) -> None:
        tag = f"step{current:07d}"
        engine.save_checkpoint(str(ckpt_dir), tag, client_state={"step": current})
        (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
        (ckpt_dir / tag / f"loader_rank{rank}.json").write_text(json.dumps(loader_state.to_dict()))
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []}
        torch.save(
            rng, ckpt_dir / tag / f"rng_rank{rank}.pt"
        )  # dropout continues the same way after a resume
        if rank == 0:
            _keep_last(ckpt_dir, int(cfg.trainer.keep_checkpoints))

    engine.train()
    while step < steps:
        t0 = time.perf_counter()
        micro = []
        for _ in range(accumulation):
            batch = next(batches)
            loader_state.update(batch)
            micro.append(batch)
        wait = time.perf_counter() - t0
        if cfg.trainer.log_sample_keys:
            keys_dir = run_dir / "sample_keys"
            keys_dir.mkdir(parents=True, exist_ok=True)
            with open(keys_dir / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": step + 1, "keys": [k for b in micro for k in b["keys"]]}) + "\n")
        global_loss, per = train_step(engine, micro, world, use_bf16)
        step += 1
        logger.step(
            step,
            global_loss,
            per,
            engine,
            optimizer,
            time.perf_counter() - t0,
            wait,
            skipped_samples(loader_state, world),
        )
        if validate and (step % int(cfg.eval.every) == 0 or step == steps):
            validate(step)
        if step % int(cfg.trainer.checkpoint_every) == 0 or step == steps or stop["signal"] is not None:
            save(step)
        if stop["signal"] is not None:
            if rank == 0:
                print(f"signal {stop['signal']}: checkpoint at step {step} written, exiting", flush=True)
            break
    if step >= steps:
        state = _full_state(engine)  # collective under ZeRO-3: every rank takes part
        if rank == 0:
            torch.save({k: v.detach().float().cpu() for k, v in state.items()}, run_dir / "model.pt")
    logger.close()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


class Validation:
    """Every `eval.every` steps: validation loss per source and task on held-out shards (all ranks share the
    batches; with the images shuffled across pages too), and a few pages generated greedily on rank 0, scored
    and logged with their predicted boxes."""

    def __init__(self, cfg, engine, tok, specs, model_cfg, logger, rank: int, world: int):
        from train.evaluate import Evaluator, manifest_pages

        self.cfg, self.engine, self.model_cfg, self.logger = cfg.eval, engine, model_cfg, logger
        self.rank, self.world = rank, world
        self.evaluator = Evaluator(engine.module, tok, int(cfg.trainer.max_length), int(cfg.eval.batch))
        for spec in specs:
            pages = manifest_pages(spec.root, spec.name, int(cfg.eval.samples_per_source))
            self.evaluator.prepare(pages, (spec.task,))
        if rank == 0:
            print(
                f"validation: {len(self.evaluator.items)} held-out samples from {len(specs)} sources "
                f"every {cfg.eval.every} steps",
                flush=True,
            )

    def _generator_model(self):
        """The model to generate with on rank 0: the engine's own, or under ZeRO-3 a gathered copy."""
        if not self.engine.zero_optimization_partition_weights():
            return self.engine.module
        state = _full_state(self.engine)  # collective: every rank takes part
        if self.rank != 0:
            return None
        from model.kosmos import Kosmos25

        copy = Kosmos25(self.model_cfg).to(self.engine.device)
        copy.load_full_state_dict({k: v.float() for k, v in state.items()}, "gathered ZeRO-3 weights")
        return copy.eval()

    def __call__(self, step: int) -> None:
        from train.evaluate import draw_layout

        ev, engine = self.evaluator, self.engine
        engine.eval()
        record = {f"val/loss/{k}": v for k, v in ev.losses(engine, self.rank, self.world).items()}
        if self.cfg.shuffled_images:
            shuffled = ev.losses(engine, self.rank, self.world, shuffle_images=True)
            record.update({f"val/loss_shuffled_images/{k}": v for k, v in shuffled.items()})
        images = []
        n = int(self.cfg.predictions)
        if n:
            model = self._generator_model()
            if self.rank == 0:
                items = sorted(ev.items, key=lambda it: it["task"] != "ocr")[:n]
                ev.model = model
                predictions = ev.predict(items, int(self.cfg.max_new_tokens))
                ev.model = engine.module
                for task, row in ev.score(predictions).get("overall", {}).items():
                    record.update({f"val/{task}/{k}": v for k, v in row.items() if k != "pages"})
                for p, it in zip(predictions, items, strict=True):
                    page = it["page"]
                    if p["task"] == "ocr":
                        image = draw_layout(page.image, p["lines"], page.lines)
                        caption = (
                            f"{p['source']}/{p['key']}: {len(p['lines'])} lines, F1 {p['scores']['f1']:.2f}"
                        )
                        images.append((image, caption, f"{p['source']}-{p['key']}"))
        engine.train()
        self.logger.eval(step, record, images)


MODEL_INPUTS = ("flattened_patches", "input_ids", "labels", "image_embeds_position_mask")


def train_step(engine, micro: list[dict], world: int, use_bf16: bool) -> tuple[float, list]:
    """One optimizer step over this rank's micro-batches; returns the global batch's loss and
    per-micro-batch details for the metrics.

    The loss of a step is the summed token loss over the global batch's target tokens, whatever the split
    into ranks and micro-batches: the same global batch gives the same update on any world size."""
    accumulation = len(micro)
    local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    totals = torch.tensor([float(local_tokens), 0.0], dtype=torch.float64, device=engine.device)
    torch.distributed.all_reduce(totals[:1])
    scale = accumulation * world / max(totals[0].item(), 1.0)  # DeepSpeed divides by both again
    per, sums = [], 0.0
    for batch in micro:
        # patches come in the training dtype (cast in the loader's workers), pinned on a GPU
        inputs = {k: batch[k].to(engine.device, non_blocking=True) for k in MODEL_INPUTS}
        out = engine(**inputs, compute_logits=False)
        engine.backward(out.loss_sum * scale)
        engine.step()
        sums += out.loss_sum.detach().double().item()
        per.append(
            (
                batch["sources"],
                batch["tasks"],
                out.num_target_tokens,
                batch,
                out.sample_loss_sums.tolist(),
                out.sample_tokens.tolist(),
            )
        )
    totals[1] = sums
    torch.distributed.all_reduce(totals[1:])
    return totals[1].item() / max(totals[0].item(), 1.0), per


def prefetch(items, depth: int):
    """`items` made ahead by a thread, up to `depth` of them: the next step's micro batches are ordered,
    collated and pinned while this step computes. An error in the thread is raised where the item was
    expected."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))

    def fill():
        try:
            for item in items:
                q.put((True, item))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    threading.Thread(target=fill, daemon=True, name="literate-prefetch").start()
    while True:
        ok, item = q.get()
        if not ok:
            raise item
        yield item


def skipped_samples(loader_state, world: int) -> dict[str, int]:
    """The loader counters of all ranks so far, by reason: skipped samples, truncated targets, corrupt shards."""
    from collections import Counter

    mine = Counter()
    for state in loader_state.states.values():
        mine.update(state["counts"])
    if world == 1:
        return dict(mine)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, dict(mine))
    total = Counter()
    for counts in gathered:
        total.update(counts)
    return dict(total)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _full_state(engine) -> dict:
    """The whole model's weights on rank 0 (ZeRO-3 shards gathered)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict() or {}
    return engine.module.state_dict()


def _keep_last(ckpt_dir: Path, keep: int) -> None:
    import shutil

    tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
    for old in tags[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


@hydra.main(config_path=CONFIG_DIR, config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if "LOCAL_RANK" in os.environ:
        # Under a launcher, end the process here, everything written and flushed: C++ threads of the
        # communication stack that outlive the process group can abort the interpreter's own teardown
        # ("terminate called without an active exception") and turn a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
