"""Hugging Face interop: read and write directories in `Kosmos2_5ForConditionalGeneration`'s format.

Our parameter names equal Hugging Face's, so weights map 1:1 with no renaming; the only difference is
that the tied `lm_head.weight` is not stored (Hugging Face re-ties it on load). `transformers` itself is
not needed here: the format is `config.json` + `model.safetensors` (or a sharded index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig, TextConfig, VisionConfig
from model.kosmos import Kosmos25

TIED = "text_model.lm_head.weight"
_VISION_KEYS = [f for f in VisionConfig.__dataclass_fields__]
_TEXT_KEYS = [f for f in TextConfig.__dataclass_fields__]


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """Our config as Hugging Face's `Kosmos2_5Config` dict (extra fields kept under `literate`)."""
    text = {k: getattr(cfg.text, k) for k in _TEXT_KEYS}
    text.update(
        model_type="kosmos_2_5_text_model",
        activation_function="gelu",
        layerdrop=0.0,
        init_std=cfg.init_std,
        tie_word_embeddings=True,
        use_cache=True,
    )
    vision = {k: getattr(cfg.vision, k) for k in _VISION_KEYS}
    vision.update(
        model_type="kosmos_2_5_vision_model",
        dense_act_fn="gelu_new",
        initializer_range=cfg.init_std,
        initializer_factor=1.0,
    )
    return {
        "architectures": ["Kosmos2_5ForConditionalGeneration"],
        "model_type": "kosmos-2.5",
        "latent_query_num": cfg.latent_query_num,
        "tie_word_embeddings": True,
        "dtype": "float32",
        "text_config": text,
        "vision_config": vision,
        "literate": {"name": cfg.name, "max_patches": cfg.max_patches},
    }


def config_from_hf(d: dict[str, Any], **overrides: Any) -> ModelConfig:
    """A Hugging Face `config.json` dict → our config. Activations other than the reference's are refused."""
    if d.get("model_type") != "kosmos-2.5":
        raise ValueError(f"not a Kosmos-2.5 config (model_type={d.get('model_type')!r})")
    t, v = d.get("text_config", {}), d.get("vision_config", {})
    for sub, key, want in ((t, "activation_function", "gelu"), (v, "dense_act_fn", "gelu_new")):
        if sub.get(key, want) != want:
            raise ValueError(f"unsupported {key}={sub[key]!r} (the model implements {want!r})")
    extra = d.get("literate", {})
    fields: dict[str, Any] = {
        "name": extra.get("name", "hf"),
        "text": TextConfig(**{k: t[k] for k in _TEXT_KEYS if k in t}),
        "vision": VisionConfig(**{k: v[k] for k in _VISION_KEYS if k in v}),
        "latent_query_num": d.get("latent_query_num", 2048),
        # The reference processor's default; kept when we wrote the directory ourselves.
        "max_patches": extra.get("max_patches", min(4096, v.get("max_num_patches", 4096))),
        "init_std": t.get("init_std", 0.02),
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    if single.exists():
        return load_file(single)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(path / f))
        return out
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_hf(path: str | Path, dtype: torch.dtype | None = None, **overrides: Any) -> Kosmos25:
    """Build our model from a directory written by `Kosmos2_5ForConditionalGeneration.save_pretrained`."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no config.json (is this a save_pretrained directory?)")
    cfg = config_from_hf(json.loads(cfg_file.read_text()), **overrides)
    model = Kosmos25(cfg)
    state = _read_weights(path)
    state.pop(TIED, None)
    model.load_full_state_dict(state, str(path))
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def save_hf(model: Kosmos25, path: str | Path) -> Path:
    """Write `config.json`, `generation_config.json`, `preprocessor_config.json` and `model.safetensors`
    so that `Kosmos2_5ForConditionalGeneration.from_pretrained(path)` loads the same weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}
    hf_cfg = config_to_hf(cfg)
    hf_cfg["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    t = cfg.text
    gen = {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    proc = {
        "image_processor_type": "Kosmos2_5ImageProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "max_patches": cfg.max_patches,
        "patch_size": {"height": cfg.patch_size, "width": cfg.patch_size},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    return path
