"""Fine-tuning entry point (Hydra), alone or under the `deepspeed` launcher, as `train.pretrain`:

    python -m train.finetune init=runs/mixed-kosmos-2.5 data.sources_file=tasks.json method=lora
    deepspeed --num_accelerators 2 --no_local_rank --module train.finetune init=... method=plora

`init` is a pre-training run folder, a `model.export` folder or any Kosmos-2.5 Hugging Face folder; the model's
shape and its tokenizer come from it. The data are sources of the `prompt` task (shards built with
`source=tasks` from JSONL `{image, prompt, target}` or DocVQA-style question files), mixed and streamed by the
pre-training loader, with the loss on the target only. `method` is `full`, `lora` or `plora` (train/tuning.py).
The run folder ends with `model.pt` (merged weights) and, for LoRA, `adapter/`.
"""

from __future__ import annotations

import dataclasses
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from configs.compose import CONFIG_DIR
from train.pretrain import finish, run


def prepare(cfg: DictConfig):
    """The pre-trained weights and the config they imply: `model` set to init's shape, `tokenizer` to init's."""
    from train.checkpoint import load_run
    from train.tuning import Tuner

    model, tok = load_run(str(cfg.init), cfg.get("tokenizer"))
    shape = dataclasses.asdict(model.config)
    shape.pop("activation_checkpointing", None)
    OmegaConf.update(cfg, "model", shape, merge=True)
    cfg.tokenizer = str(tok.path)
    return Tuner(cfg, model.state_dict())


@hydra.main(config_path=str(CONFIG_DIR), config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        tuner = prepare(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        finish(2)
    else:
        finish(run(cfg, tuner))


if __name__ == "__main__":
    main()
