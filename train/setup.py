"""The trainer's settings, checked before anything starts: numbers, batch math, schedule, parameter groups,
precision, the DeepSpeed config, the data sources, the memory fit and the run folder's identity."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from configs.compose import ConfigError
from configs.schema import check_training
from train.batch_plan import BatchPlan, batch_plan
from train.engine import deepspeed_config, training_bf16

if TYPE_CHECKING:  # for the annotations only: the modules are imported where they are used
    from model.config import ModelConfig
    from model.tokenizer import Tokenizer
    from train.guard import DataSkips
    from train.samples import SourceSpec


def check_numbers(cfg: DictConfig) -> None:
    """What the groups' types and choices (checked by Hydra as it composed them: `configs/schema.py`) leave
    open: counts' ranges, the seed, and the settings that take a number or a word."""
    check_training(cfg)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r}: expected an integer")
    micro = cfg.trainer.micro_batch_size
    if micro != "auto" and (not str(micro).isdigit() or int(micro) < 1):
        raise ConfigError(f"trainer.micro_batch_size={micro!r}: a whole number >= 1, or auto")
    if cfg.model.get("activation_checkpointing") not in (True, False, "auto"):
        raise ConfigError(
            f"model.activation_checkpointing={cfg.model.activation_checkpointing!r}: true, false or auto"
        )


def checkpoint_every(value) -> tuple[int, float]:
    """`trainer.checkpoint_every`: steps (`1000`) or minutes (`30min`); returns (steps, minutes), the other 0."""
    text = str(value).strip()
    if text.endswith("min") and text[:-3].strip().replace(".", "", 1).isdigit() and float(text[:-3]) > 0:
        return 0, float(text[:-3])
    if text.isdigit() and int(text) > 0:
        return int(text), 0.0
    raise ConfigError(f"trainer.checkpoint_every={value!r}: a number of steps (1000) or of minutes (30min)")


def batch_math(global_batch: int, micro: int, world: int, slots: int | None = None):
    """The plan of the global batch on `world` ranks (`train.batch_plan.BatchPlan`): accumulation, micro batch,
    slots. Any world size up to the slot count has one."""
    try:
        return batch_plan(global_batch, micro, world, slots)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_sources(cfg: DictConfig, validation: bool = False):
    """The training sources of the stage's tasks (or, with `validation`, the held-out ones)."""
    from train.samples import SourceSpec

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
    from data_pipeline.manifest import read_manifest

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

    tok: Tokenizer
    model_cfg: ModelConfig
    micro: int
    plan: BatchPlan
    window: int
    sources: list[SourceSpec]
    val_sources: list[SourceSpec]
    ds_config: dict
    bf16: bool
    cuda: bool
    memory_line: str
    skips: DataSkips


def prepare(cfg: DictConfig, world: int, tuner=None) -> Settings:
    """Check the config and the data and work out the batch, memory and DeepSpeed plans; a ConfigError (or
    ValueError, FileNotFoundError) names what is wrong. `tuner`: fine-tuning's (`train.tuning.Tuner`), whose
    trainable parameters the memory plan counts."""
    from model.run import model_config
    from model.tokenizer import Tokenizer

    check_numbers(cfg)
    check_identity(cfg)
    tok = Tokenizer(cfg.tokenizer)
    changes = {"text_dropout": float(cfg.trainer.dropout)} if float(cfg.trainer.dropout) >= 0 else {}
    auto_ckpt = cfg.model.get("activation_checkpointing") == "auto"
    if auto_ckpt:
        changes["activation_checkpointing"] = False
    model_cfg = model_config(cfg.model, tok, **changes)
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
