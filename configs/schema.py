"""Typed schemas of the config groups: training's `trainer`, `optim`, `eval`, `wandb`, `data` and `stage`, and the
build's top level with its `image`, `filters`, `ray` and `browser`. Registered in Hydra's ConfigStore
(`register_schemas`) and extended by the YAML files (`- /schema/trainer@trainer` in `pretrain.yaml`'s defaults,
`- /schema/data@_here_` in a `data/` file), so Hydra itself refuses, naming the key, before any work: a value of the
wrong type (`trainer.max_steps=many`), a choice not offered (`image.format=gif`), a key no schema has
(`trainer.micro_batchsize=2`). `check_ranges` adds what a type cannot say: counts are whole numbers >= 0, and the
few that must be >= 1 say so in their field's metadata. Checks that need more than one value (batch math,
precision on this machine, the memory fit) stay with the code that owns them.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value refused before any work starts; the message names the key."""


def at_least(n: int) -> dict:
    """A field's metadata: its value must be >= n (counts are >= 0 without it)."""
    return {"min": n}


def choice(name: str, *values: str) -> type[StrEnum]:
    """A string choice for a schema's field: its members compare, hash, print and serialise as their values."""
    return StrEnum(name, values, module=__name__)


Resume = choice("Resume", "auto", "force")
WandbMode = choice("WandbMode", "online", "offline", "disabled")
Executor = choice("Executor", "local", "ray")
ImageFormat = choice("ImageFormat", "png", "jpg", "webp")
LangScope = choice("LangScope", "document", "page")
Network = choice("Network", "offline", "online")
Sandbox = choice("Sandbox", "bwrap", "none")


@dataclasses.dataclass
class Optim:
    lr: float = 2.0e-4
    image_lr_scale: float = 1.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-6
    weight_decay: float = 0.01
    warmup_steps: int = 375
    grad_clip: float = 1.0


@dataclasses.dataclass
class BadSteps:
    sigma: float = 6.0
    window: int = 128
    warmup: int = 64
    rollback_after: int = 4
    rollback_within: int = 100
    max_rollbacks: int = 5


@dataclasses.dataclass
class Trainer:
    train_batch_size: int = dataclasses.field(default=1024, metadata=at_least(1))
    micro_batch_size: Any = "auto"  # a number or auto (train.setup checks which)
    memory_budget_gb: float | None = None
    memory_headroom: float = 0.1
    max_steps: int = dataclasses.field(default=MISSING, metadata=at_least(1))
    max_length: int = dataclasses.field(default=4096, metadata=at_least(1))
    precision: str = "auto"  # auto | bf16 | fp32 (train.engine says why fp16 is not offered)
    dropout: float = 0.1
    checkpoint_every: Any = 1000  # steps, or minutes: 30min
    keep_checkpoints: int = 3
    hang_timeout: float = 600.0
    collective_timeout: float | None = None
    bad_steps: BadSteps = dataclasses.field(default_factory=BadSteps)
    skip_data: list[Any] = dataclasses.field(default_factory=list)
    resume: Resume = Resume.auto
    reset_loader: bool = False
    dry_run: bool = False
    log_sample_keys: bool = False
    peak_flops: float | None = None
    test_faults: bool = False


@dataclasses.dataclass
class Eval:
    every: int = 1000
    tasks: list[str] | None = None
    at_start: bool = True
    samples_per_source: int = 16
    batch: int = dataclasses.field(default=4, metadata=at_least(1))
    shuffled_images: bool = True
    predictions: int = 4
    max_new_tokens: int = 256


@dataclasses.dataclass
class Wandb:
    mode: WandbMode = WandbMode.offline
    project: str = "literate"
    entity: str | None = None
    id: str | None = None


@dataclasses.dataclass
class Data:
    name: str = MISSING
    root: str | None = None
    workers: int = 1
    slots: int | None = dataclasses.field(default=None, metadata=at_least(1))
    length_window: int = dataclasses.field(default=1, metadata=at_least(1))
    sources_file: str | None = None
    val_sources_file: str | None = None
    val_sources: list[Any] = dataclasses.field(default_factory=list)
    sources: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Stage:
    name: str = MISSING
    steps: int = dataclasses.field(default=MISSING, metadata=at_least(1))
    tasks: list[str] = dataclasses.field(default_factory=list)
    init_from: str | None = None
    init_from_dir: str | None = None


@dataclasses.dataclass
class Image:
    format: ImageFormat = ImageFormat.png
    quality: int = 90
    png_level: int = 1
    max_side: int = dataclasses.field(default=2048, metadata=at_least(16))


@dataclasses.dataclass
class Filters:
    min_chars: int = 10
    blank_std: float = 2.0
    max_garbled: float = 0.1
    languages: Any = dataclasses.field(default_factory=lambda: ["en"])  # ISO codes, or "all"
    lang_threshold: float = 0.5
    lang_scope: LangScope = LangScope.document
    lang_hold_mb: float = 256.0


@dataclasses.dataclass
class Ray:
    address: str | None = None


@dataclasses.dataclass
class Browser:
    viewport_width: int = dataclasses.field(default=1024, metadata=at_least(1))
    tile_height: int = dataclasses.field(default=1448, metadata=at_least(1))
    min_tile_height: int = 64
    max_height: int = dataclasses.field(default=57920, metadata=at_least(1))
    page_timeout: float = 30.0
    network: Network = Network.offline
    allow_addresses: list[str] = dataclasses.field(default_factory=list)
    user_agent: str = ""
    respect_robots: bool = True
    request_timeout: float = 15.0
    max_page_bytes: int = 20_000_000


@dataclasses.dataclass
class Build:
    source: Any = MISSING  # the source's group (configs/source/<name>.yaml): checked by the source
    browser: Browser = dataclasses.field(default_factory=Browser)
    input: str = MISSING
    output: str = MISSING
    workers: int | None = dataclasses.field(default=None, metadata=at_least(1))
    executor: Executor = Executor.local
    docs_per_shard: int = dataclasses.field(default=16, metadata=at_least(1))
    max_error_rate: float = 0.004
    sandbox: Sandbox = Sandbox.bwrap
    worker_memory_mb: Any = "auto"  # MB, or auto
    task_index: int | None = None
    task_count: int | None = dataclasses.field(default=None, metadata=at_least(1))
    manifest_only: bool = False
    dedup: bool = True
    image: Image = dataclasses.field(default_factory=Image)
    filters: Filters = dataclasses.field(default_factory=Filters)
    ray: Ray = dataclasses.field(default_factory=Ray)


# The schemas as Hydra's `schema/` group: a primary config places one under a package (`- /schema/trainer@trainer`),
# a group's file extends its own (`- /schema/data@_here_`); `schema/build` is the build's top level.
GROUPS = {"trainer": Trainer, "optim": Optim, "eval": Eval, "wandb": Wandb, "data": Data, "stage": Stage,
          "browser": Browser}  # fmt: skip
TRAINING = {k: GROUPS[k] for k in ("trainer", "optim", "eval", "wandb", "data", "stage")}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in GROUPS.items():  # under `schema/` only: a tool's own `data=` key is no group override
        store.store(group="schema", name=name, node=node)
    store.store(group="schema", name="build", node=Build)


def check_ranges(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Every whole-number field of `schema` found in `cfg` is >= its `min` (0 unless the field says), nested
    dataclasses included; a ConfigError names the key."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = OmegaConf.select(cfg, f.name, default=None) if isinstance(cfg, DictConfig) else None
        if value is None:
            continue
        if dataclasses.is_dataclass(value) or isinstance(value, DictConfig):
            kind = schema.__dataclass_fields__[f.name].default_factory  # the nested schema
            if dataclasses.is_dataclass(kind):
                check_ranges(value, kind, f"{key}.")
            continue
        least = f.metadata.get("min", 0)
        if f.type in ("int", "int | None") and isinstance(value, int) and value < least:
            raise ConfigError(f"{key}={value}: expected a whole number >= {least}")


def check_training(cfg: DictConfig) -> None:
    """The training groups' ranges (their types and choices Hydra checked when it composed them)."""
    for group, schema in TRAINING.items():
        if group in cfg:
            check_ranges(cfg[group], schema, f"{group}.")
