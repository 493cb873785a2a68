"""Model configuration: dataclasses and the named presets (`tiny`, `reader`, `small`, `kosmos-2.5`).

Field names follow Hugging Face's `Kosmos2_5Config` where a field exists there, so a config converts
1:1 (see `model/hf.py`). Presets are defined here once and registered as Hydra's `model` config group
(`register_hydra_presets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class VisionConfig:
    """Pix2Struct-style encoder over flattened 16x16 patches with learned row/column embeddings."""

    hidden_size: int = 1536
    patch_embed_hidden_size: int = 768  # 16 * 16 * 3
    intermediate_size: int = 3968
    head_dim: int = 64
    num_hidden_layers: int = 18
    num_attention_heads: int = 24
    layer_norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    max_num_patches: int = 4096  # size of the row/column embedding tables


@dataclass
class TextConfig:
    """Decoder-only Transformer with sinusoidal positions, segment embedding and sub-LN feed-forward."""

    vocab_size: int = 108481
    max_position_embeddings: int = 4096
    embed_dim: int = 1536
    layers: int = 24
    ffn_dim: int = 6144
    attention_heads: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2


@dataclass
class ModelConfig:
    """The whole model: vision encoder, resampler, decoder, and how it is run."""

    name: str = "kosmos-2.5"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    latent_query_num: int = 2048  # image tokens the resampler hands to the decoder
    max_patches: int = 4096  # patches per page seen by the image processor (zero-padded up to this)
    init_std: float = 0.02
    # Initial std of the resampler's input projection (None: init_std, as the reference). Its input is the
    # unit-norm image features, so at 0.02 the projected patches start ~50x smaller than the latent queries
    # (std 1), which then attend to themselves: a model trained from scratch starts blind to its image.
    # 1.0 starts patches and queries at the same scale.
    image_proj_init_std: float | None = None
    # Recompute each layer's activations in the backward pass instead of storing them.
    activation_checkpointing: bool = False
    # torch.compile each Transformer layer (GPU runs; off by default so tests start fast).
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        self.validate()

    def validate(self) -> None:
        """Fail early, with the field's name, on shapes the model cannot be built with."""
        t, v = self.text, self.vision
        if t.embed_dim % t.attention_heads:
            raise ValueError(
                f"text.embed_dim={t.embed_dim} is not divisible by text.attention_heads={t.attention_heads}"
            )
        if (
            v.patch_embed_hidden_size % 3
            or int((v.patch_embed_hidden_size // 3) ** 0.5) ** 2 * 3 != v.patch_embed_hidden_size
        ):
            raise ValueError(f"vision.patch_embed_hidden_size={v.patch_embed_hidden_size} is not 3 * p * p")
        if self.max_patches > v.max_num_patches:
            raise ValueError(
                f"max_patches={self.max_patches} exceeds vision.max_num_patches={v.max_num_patches} (row/column tables)"
            )
        if self.latent_query_num < 1 or self.max_patches < 1:
            raise ValueError("latent_query_num and max_patches must be positive")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            p = getattr(t, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"text.{name}={p} is not in [0, 1)")

    @property
    def patch_size(self) -> int:
        return int((self.vision.patch_embed_hidden_size // 3) ** 0.5)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


def _tiny() -> ModelConfig:
    # Runs a training step on a laptop CPU in a fraction of a second; every test uses it.
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(
            hidden_size=64,
            intermediate_size=128,
            head_dim=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_num_patches=256,
        ),
        text=TextConfig(
            vocab_size=4096,
            max_position_embeddings=1024,
            embed_dim=128,
            layers=2,
            ffn_dim=512,
            attention_heads=4,
        ),
        latent_query_num=64,
        max_patches=256,
    )


def _reader() -> ModelConfig:
    # The reading warm-up's model (configs/tools/recipes/reading.yaml, benchmarks/results/learning.md): 1.5M
    # parameters with a vocabulary of ~900, the tiny decoder behind a vision encoder twice as wide and a layer
    # deeper, 32 latents, and the resampler's input projection at the latent queries' scale so that it reads its
    # image from the first steps. `make demo` trains it: the warm-up's weights start the demo's page stages.
    return ModelConfig(
        name="reader",
        vision=VisionConfig(
            hidden_size=128,
            intermediate_size=512,
            head_dim=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_num_patches=256,
        ),
        text=TextConfig(
            vocab_size=4096,
            max_position_embeddings=1024,
            embed_dim=128,
            layers=2,
            ffn_dim=512,
            attention_heads=4,
        ),
        latent_query_num=32,
        max_patches=256,
        image_proj_init_std=1.0,
    )


def _small() -> ModelConfig:
    # About 60M parameters: big enough for throughput comparisons to mean something, small enough for a CPU.
    return ModelConfig(
        name="small",
        vision=VisionConfig(
            hidden_size=384,
            intermediate_size=1024,
            head_dim=64,
            num_hidden_layers=6,
            num_attention_heads=6,
            max_num_patches=1024,
        ),
        text=TextConfig(
            vocab_size=32000,
            max_position_embeddings=2048,
            embed_dim=512,
            layers=8,
            ffn_dim=2048,
            attention_heads=8,
        ),
        latent_query_num=512,
        max_patches=1024,
    )


def _kosmos25() -> ModelConfig:
    # The paper's 1.3B model (and Hugging Face's `microsoft/kosmos-2.5` shapes).
    return ModelConfig(name="kosmos-2.5")


PRESETS = {"tiny": _tiny, "reader": _reader, "small": _small, "kosmos-2.5": _kosmos25}


def _merge(base: dict[str, Any], overrides: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        if k not in out:
            raise ValueError(f"unknown model config field: {path}{k}")
        out[k] = _merge(out[k], v, f"{path}{k}.") if isinstance(v, dict) and isinstance(out[k], dict) else v
    return out


def get_config(preset: str, **overrides: Any) -> ModelConfig:
    """A named preset with optional (nested) field overrides, e.g. `get_config("tiny", text={"layers": 4})`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    return ModelConfig.from_dict(_merge(PRESETS[preset]().to_dict(), overrides))


@dataclass
class ModelNode(ModelConfig):
    """A Hydra `model:` node: a preset's every field, so `model.text.layers=4` needs no `+` and Hydra checks its
    type, and the preset's name."""

    preset: str = "kosmos-2.5"
    # true, false, or auto: the trainer decides with the memory model (see trainer.micro_batch_size=auto)
    activation_checkpointing: Union[bool, str] = False  # noqa: UP007 (OmegaConf reads typing.Union)


def register_hydra_presets() -> None:
    """The presets as Hydra's config group `model` (structured configs: `model=tiny`, `model=kosmos-2.5`). Hydra
    is imported here only: the model library does not need it."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, make in PRESETS.items():
        node = ModelNode(**vars(make()), preset=name)
        node.activation_checkpointing = "auto"  # training decides by the memory model unless told
        store.store(group="model", name=name, node=node)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A Hydra `model:` node (`preset` plus overrides) or a plain dict → config."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
    d = {k: v for k, v in dict(d).items() if not (isinstance(v, dict) and not v)}
    if d.get("activation_checkpointing") == "auto":  # a training-time choice; off when only running the model
        d["activation_checkpointing"] = False
    if "preset" not in d:
        raise ValueError("model config needs a 'preset' (one of " + ", ".join(sorted(PRESETS)) + ")")
    return get_config(d.pop("preset"), **d)
