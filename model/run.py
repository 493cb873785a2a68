"""A training run's folder → its model and tokenizer: the run's `config.yaml` (model section and tokenizer), the
vocabulary size fixed from the tokenizer, and its weights (the consolidated `model.pt`, else a DeepSpeed ZeRO
checkpoint gathered to full weights by the reader the trainer's side passes in: the model library imports no
DeepSpeed); or a Hugging Face `save_pretrained` directory. Evaluation, export, fine-tuning and the trainer's
set-up all go through here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from model.config import ModelConfig, config_from_dict
from model.hf import load_hf
from model.kosmos import Kosmos25
from model.tokenizer import Tokenizer


def model_config(section: Mapping, tokenizer: Tokenizer, **changes) -> ModelConfig:
    """A run's model section (a dict, or OmegaConf's, resolved here) as a `ModelConfig` with the tokenizer's
    vocabulary size; `changes` are top-level fields set over it (`activation_checkpointing=False`) or, as
    `text_<field>`, fields of the decoder (`text_dropout=0.1`)."""
    fields = _plain(section)
    text = dict(fields.get("text") or {}, vocab_size=tokenizer.vocab_size)
    for key, value in changes.items():
        if key.startswith("text_"):
            text[key[5:]] = value
        else:
            fields[key] = value
    return config_from_dict({**fields, "text": text})


def _plain(section: Mapping) -> dict:
    """A dict of `section`; OmegaConf (not needed by the model library, so imported only for its own
    containers) resolves its interpolations."""
    if type(section).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(section, resolve=True)
    return dict(section)


def _plain(section: Mapping) -> dict:
    """A dict of `section`; OmegaConf (not needed by the model library, so imported only for its own
    containers) resolves its interpolations."""
    if type(section).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(section, resolve=True)
    return dict(section)


def load_run(
    checkpoint: str | Path,
    tokenizer: str | None = None,
    zero_reader: Callable[[Path, str], dict] | None = None,
) -> tuple[Kosmos25, Tokenizer]:
    """A trained model and its tokenizer from a run, a checkpoint folder or a Hugging Face directory. A run
    without `model.pt` (or a checkpoint folder) is read by `zero_reader(checkpoints folder, tag)`, full weights
    from a DeepSpeed checkpoint: `train.checkpoint.load_run` gives it."""
    path = Path(checkpoint)
    if (path / "config.json").exists():  # Hugging Face save_pretrained directory
        proc = path / "preprocessor_config.json"
        overrides = {}
        if proc.exists():
            overrides["max_patches"] = int(json.loads(proc.read_text()).get("max_patches", 4096))
        tok = Tokenizer(tokenizer or path)
        return load_hf(path, **overrides), tok
    run_dir, tag = path, None
    if (path / "mp_rank_00_model_states.pt").exists() or list(path.glob("*model_states.pt")):
        run_dir, tag = path.parents[1], path.name  # runs/x/checkpoints/stepN
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(
            f"{path}: not a run directory, checkpoint folder or Hugging Face directory (no config.yaml or config.json)"
        )
    from omegaconf import OmegaConf  # a run folder's config.yaml (a Hugging Face folder needs none)

    cfg = OmegaConf.load(cfg_file)
    tok = Tokenizer(tokenizer or cfg.tokenizer)
    model = Kosmos25(model_config(cfg.model, tok))
    weights = run_dir / "model.pt"
    if tag is None and weights.exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        origin = str(weights)
    else:
        ckpt_dir = run_dir / "checkpoints"
        tag = tag or ((ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").exists() else None)
        if tag is None:
            raise FileNotFoundError(f"{run_dir}: neither model.pt nor a checkpoint")
        if (
            zero_reader is None
        ):  # the model library reads no DeepSpeed files: `train.checkpoint.load_run` does
            raise FileNotFoundError(
                f"{run_dir}: no model.pt; its DeepSpeed checkpoint {tag} is read by train.checkpoint.load_run"
            )
        state = zero_reader(ckpt_dir, tag)
        origin = str(ckpt_dir / tag)
    model.load_full_state_dict(state, origin)
    return model.eval(), tok
