"""What fine-tuning changes in the trainer (`train.finetune`): where the weights come from, which of them train,
and, for PeriodicLoRA, what happens between its stages.

- `full`: the pre-trained weights, the parts in `finetune.trainable` training (default: the resampler and the
  language model; the vision encoder frozen, as the paper fine-tunes).
- `lora`: LoRA (PEFT's `inject_adapter_in_model`) on the linear layers named in `lora.target_modules`; only the
  LoRA matrices train.
- `plora`: PeriodicLoRA. Every `plora.interval` steps the LoRA update is unloaded into the frozen weights:
  W <- W + m s B A, then A and B are each scaled by sqrt(1 - m), so B A keeps (1 - m) of itself and the model's
  function is unchanged at the unload; AdamW's moments of A and B and its step count are reset, the LR schedule
  goes on. With m = 1 (no momentum) the whole update is unloaded, A is drawn afresh and B set to 0. Over many
  stages the accumulated update sum_k m s B_k A_k has a rank above r at LoRA's memory. The stage position is the
  step counter's, so a resumed run unloads where the uninterrupted one does.

The weights a run saves (`model.pt`) are merged: LoRA folded into the layers they adapt, under the layers'
own names, so `model.export`, `train.evaluate` and transformers load them as any other Kosmos-2.5 weights. LoRA
runs also save the adapter (`adapter/`: PEFT's `adapter_config.json` and `adapter_model.safetensors`), which
`peft.PeftModel.from_pretrained` puts on transformers' `Kosmos2_5ForConditionalGeneration` of the starting weights
(its module names are this project's).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

LORA_KEYS = (".lora_A.", ".lora_B.")


class Tuner:
    def __init__(self, cfg, init_state: dict):
        self.method = str(cfg.method)
        if self.method not in ("full", "lora", "plora"):
            raise ValueError(f"method={self.method!r}: full, lora or plora")
        self.cfg, self.init_state = cfg, init_state
        self.lora = cfg.lora
        self.interval = int(cfg.plora.interval)
        self.momentum = float(cfg.plora.momentum)
        if self.method == "plora" and not (self.interval > 0 and 0 < self.momentum <= 1):
            raise ValueError("plora.interval must be > 0 and plora.momentum in (0, 1]")

    # ------------------------------------------------------------------ model
    def model(self, model_cfg):
        """The pre-trained model with this method's trainable parameters (what trains printed on rank 0)."""
        model = self._model(model_cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(self.describe(model), flush=True)
        return model

    def _model(self, model_cfg):
        from model.kosmos import Kosmos25

        torch.manual_seed(int(self.cfg.seed))
        model = Kosmos25(model_cfg)
        model.load_full_state_dict(self.init_state, str(self.cfg.init))
        self.init_state = None  # held once
        return self.adapt(model)

    def shape(self, model_cfg) -> dict:
        """What the memory model (`model.memory.Plan`) needs to know of this method, from the model built on
        the meta device: the parameters that train, those added, and whether the vision encoder is frozen."""
        from model.kosmos import Kosmos25
        from model.memory import parameter_count

        with torch.device("meta"):
            model = self.adapt(Kosmos25(model_cfg))
        return dict(
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            added=model.num_parameters() - parameter_count(model_cfg)[0],
            vision_frozen=model.trained_parts() != "all",
        )

    def adapt(self, model):
        """`model` with this method's trainable parameters: the parts named in `finetune.trainable` (full), or
        LoRA's matrices on `lora.target_modules` with everything else frozen."""
        if self.method == "full":
            trainable = tuple(f"{name}." for name in self.cfg.finetune.trainable)
            names = [name for name, _ in model.named_parameters()]
            unknown = [t[:-1] for t in trainable if not any(n.startswith(t) for n in names)]
            if unknown or not trainable:
                parts = sorted({n.split(".")[0] for n in names})
                raise ValueError(
                    f"finetune.trainable={unknown or []}: name the parts that train, e.g. {parts}"
                )
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(trainable))
            return model
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=int(self.lora.r),
            lora_alpha=float(self.lora.alpha),
            lora_dropout=float(self.lora.dropout),
            target_modules=list(self.lora.target_modules),
        )
        self.peft_config = config
        return inject_adapter_in_model(config, model)

    def describe(self, model) -> str:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return f"fine-tuning: method {self.method}, {trainable:,} of {total:,} parameters train"

    # ------------------------------------------------------------ PeriodicLoRA
    def after_step(self, step: int, engine) -> bool:
        """PeriodicLoRA's unload at the end of each stage; True when it happened."""
        if self.method != "plora" or step % self.interval:
            return False
        from deepspeed.runtime.zero import GatheredParameters
        from deepspeed.utils import (
            safe_get_full_fp32_param,
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
        )
        from peft.tuners.lora import LoraLayer

        m = self.momentum
        generator = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + step)
        for _, layer in sorted((n, x) for n, x in engine.module.named_modules() if isinstance(x, LoraLayer)):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            full_a, full_b = (
                safe_get_full_fp32_param(a),
                safe_get_full_fp32_param(b),
            )  # collective under ZeRO-3
            if full_a is None:  # not under a ZeRO optimizer: the module's own values
                full_a, full_b = a.detach().float(), b.detach().float()
            scale = layer.scaling["default"]
            delta = (m * scale) * (full_b.float() @ full_a.float())
            if m < 1:
                keep = math.sqrt(1 - m)
                new_a, new_b = full_a * keep, full_b * keep
            else:
                new_a = torch.empty_like(full_a, device="cpu")
                torch.nn.init.kaiming_uniform_(new_a, a=math.sqrt(5), generator=generator)  # as PEFT draws A
                new_a, new_b = new_a.to(full_a.device), torch.zeros_like(full_b)
            base = layer.get_base_layer().weight
            with GatheredParameters([base, a, b], modifier_rank=0), torch.no_grad():
                base.add_(delta.to(base.device, base.dtype))
                a.copy_(new_a.to(a.device, a.dtype))
                b.copy_(new_b.to(b.device, b.dtype))
            for param, value in ((a, new_a), (b, new_b)):
                safe_set_full_fp32_param(param, value)
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(param, torch.zeros_like(value), key)
        restart_step_counts(engine)
        return True

    # ------------------------------------------------------------------ saving
    def merged(self, state: dict) -> dict:
        """A whole state dict (`train.validation.full_state`) with LoRA folded in, under the layers' names."""
        if self.method == "full":
            return state
        scale = float(self.lora.alpha) / int(self.lora.r)
        out = {}
        for key, value in state.items():
            if any(k in key for k in LORA_KEYS):
                continue
            if ".base_layer." in key:
                prefix = key.split(".base_layer.")[0]
                name = key.replace(".base_layer.", ".")
                if key.endswith(".weight") and f"{prefix}.lora_A.default.weight" in state:
                    a = state[f"{prefix}.lora_A.default.weight"].float()
                    b = state[f"{prefix}.lora_B.default.weight"].float()
                    value = value.float() + scale * (b @ a)
                out[name] = value
            else:
                out[key] = value
        return out

    def save_adapter(self, state: dict, folder: Path) -> None:
        """LoRA's matrices as a PEFT adapter folder."""
        if self.method == "full":
            return
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        adapter = {  # PeftModel's key names: transformers' Kosmos2_5ForConditionalGeneration has our module names
            "base_model.model." + k.replace(".default.", "."): v.detach().float().contiguous()
            for k, v in state.items()
            if "lora_" in k
        }
        save_file(adapter, str(folder / "adapter_model.safetensors"))
        self.peft_config.save_pretrained(str(folder))
        (folder / "literate.json").write_text(
            json.dumps({"method": self.method, "base": str(self.cfg.init)}) + "\n"
        )


def restart_step_counts(engine) -> None:
    """AdamW's step counts back to 0, so that the next stage's moments are bias-corrected as a new optimizer's.
    DeepSpeed keeps one count per flat parameter group, not per parameter: this is right because under LoRA
    every parameter that trains is an A or a B (checked)."""
    training = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    others = [n for n in training if not any(k in f".{n}" for k in LORA_KEYS)]
    if others:
        raise RuntimeError(
            f"PeriodicLoRA: parameters besides LoRA's train ({others[:3]}); their step would restart"
        )
    # ZeRO's optimizer wraps the torch (or DeepSpeed) optimizer that holds the state
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        if "step" in state:
            step = state["step"]
            state["step"] = step.zero_() if torch.is_tensor(step) else 0
