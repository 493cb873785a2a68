"""Bad steps: an update is skipped on every rank when the step's loss or gradient norm is not finite, or spikes:
more than `sigma` standard deviations above the mean of the last `window` accepted steps, once `warmup` of them
have been seen (the rule of OLMo-core's skip-step optimizers). The decision rests on values every rank has
(the global batch's loss, the global gradient norm), so every rank makes it alike without a collective. A
skipped step leaves the weights, the optimizer's moments and the LR schedule as they were.

After `rollback_after` bad steps within `rollback_within` steps, the run goes back to the newest checkpoint
written before the first of them and passes over the data from there to the last bad step (PaLM's remedy for
spikes that come back): see `train.pretrain`.

The skip itself is DeepSpeed's: the ZeRO optimizer's gradient-norm function is wrapped so that a vetoed step
reports an overflow, and DeepSpeed then zeroes the gradients, leaves the optimizer and the LR scheduler
alone and counts the step in `engine.skipped_steps`.
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import torch


class BadSteps:
    def __init__(self, cfg):
        self.sigma = float(cfg.sigma)
        self.window = int(cfg.window)
        self.warmup = int(cfg.warmup)
        self.rollback_after = int(cfg.rollback_after)
        self.rollback_within = int(cfg.rollback_within)
        self.max_rollbacks = int(cfg.max_rollbacks)
        self.losses: deque = deque(maxlen=max(self.window, 1))
        self.norms: deque = deque(maxlen=max(self.window, 1))
        self.recent: list[int] = []  # steps of the bad steps since the last rollback
        self.skipped = 0
        self.rollbacks = 0
        self.veto: str | None = None  # why the current step's update is vetoed
        self.norm: float | None = None

    def _spike(self, values: deque, x: float) -> float | None:
        """The z-score of `x` against `values` when it is a spike, else None."""
        if self.sigma <= 0 or len(values) < max(self.warmup, 2):
            return None
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        z = (x - mean) / std if std > 0 else (math.inf if x > mean else 0.0)
        return z if z > self.sigma else None

    def check_loss(self, loss: float) -> None:
        """Before the optimizer step: the global batch's loss."""
        self.veto, self.norm = None, None
        if not math.isfinite(loss):
            self.veto = f"loss {loss}"
        elif (z := self._spike(self.losses, loss)) is not None:
            self.veto = f"loss spike {loss:.4g} ({z:.1f} sigma)"

    def check_norm(self, norm: float) -> bool:
        """Inside the optimizer step: the global gradient norm (before clipping). True: skip the update."""
        self.norm = norm
        if self.veto is None:
            if not math.isfinite(norm):
                self.veto = f"gradient norm {norm}"
            elif (z := self._spike(self.norms, norm)) is not None:
                self.veto = f"gradient-norm spike {norm:.4g} ({z:.1f} sigma)"
        return self.veto is not None

    def install(self, engine) -> None:
        """Wrap the ZeRO optimizer's global-norm function (stages 1 and 2: `scaled_global_norm`; stage 3:
        `_get_norm_groups`) so that a vetoed step takes DeepSpeed's overflow path."""
        from deepspeed.runtime.utils import combine_grad_norm_groups

        opt = engine.optimizer
        if hasattr(opt, "scaled_global_norm"):
            original = opt.scaled_global_norm

            def scaled_global_norm(*args, **kwargs):
                norm = original(*args, **kwargs)
                if self.check_norm(float(norm) / float(getattr(opt, "loss_scale", 1.0) or 1.0)):
                    opt.overflow = (
                        True  # also when DeepSpeed would not check (bf16 without check_grad_overflow)
                    )
                    return torch.full_like(norm, math.inf)
                return norm

            opt.scaled_global_norm = scaled_global_norm
        elif hasattr(opt, "_get_norm_groups"):
            original_groups = opt._get_norm_groups

            def get_norm_groups(*args, **kwargs):
                groups = original_groups(*args, **kwargs)
                if self.check_norm(float(combine_grad_norm_groups(groups))):
                    opt.overflow = True
                    return [torch.full_like(groups[0], math.inf)]
                return groups

            opt._get_norm_groups = get_norm_groups
        else:
            raise ValueError(
                f"{type(opt).__name__}: bad-step detection needs a ZeRO optimizer (deepspeed.zero_optimization.stage "
                "1, 2 or 3)"
            )

    def end_step(self, step: int, loss: float, applied: bool) -> str | None:
        """After the step: the reason it was skipped (None when applied). Accepted steps feed the windows."""
        if applied:
            self.losses.append(loss)
            if self.norm is not None and math.isfinite(self.norm):
                self.norms.append(self.norm)
            return None
        reason = self.veto or "non-finite gradients"
        self.skipped += 1
        self.recent = [s for s in self.recent if s > step - self.rollback_within] + [step]
        return reason

    def roll_back_due(self) -> bool:
        return self.rollback_after > 0 and len(self.recent) >= self.rollback_after

    def roll_back(self, ckpts, skips, step: int, rank: int) -> str | None:
        """The checkpoint to go back to: the newest before the first recent bad step. Its later steps' data up to
        `step` join the skips (kept in the run folder) and `latest` moves back to it. None when there is no
        such checkpoint (the bad steps stay skipped, the run goes on); RuntimeError after `max_rollbacks`."""
        from train.checkpoint import meta

        if self.rollbacks >= self.max_rollbacks:
            raise RuntimeError(
                f"bad steps {self.recent} came back after {self.rollbacks} rollbacks; stopping"
            )
        target = ckpts.before(self.recent[0])
        if target is None:
            if rank == 0:
                print(f"bad steps {self.recent}: no checkpoint before them to go back to", flush=True)
            self.recent.clear()
            return None
        first = meta(ckpts.dir, target)["step"] + 1
        skips.add(first, step, write=rank == 0)
        if rank == 0:
            ckpts.point_to(target)
            print(
                f"bad steps {self.recent}: back to {target}, data of steps {first}-{step} passed over",
                flush=True,
            )
        torch.distributed.barrier()
        self.rollbacks += 1
        return target

    def state_dict(self) -> dict:
        return {
            "losses": list(self.losses),
            "norms": list(self.norms),
            "recent": self.recent,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict | None, keep_counts: bool = False) -> None:
        """`keep_counts`: a rollback keeps the run's skip and rollback counts, the windows come from the checkpoint."""
        if not state:
            return
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.norms.clear()
        self.norms.extend(state["norms"])
        self.recent = [] if keep_counts else list(state["recent"])
        if not keep_counts:
            self.skipped, self.rollbacks = int(state["skipped"]), int(state["rollbacks"])


class DataSkips:
    """Steps whose data is passed over without training: `trainer.skip_data` (`[[first, last], ...]`, steps
    counted from 1) and the windows of rollbacks, kept in `<run_dir>/data_skips.json` so that a resumed run
    passes over them too."""

    def __init__(self, configured, path: Path):
        self.path = Path(path)
        windows = [list(w) for w in configured or []]
        for w in windows:
            if len(w) != 2 or not all(isinstance(v, int) and v >= 1 for v in w) or w[0] > w[1]:
                raise ValueError(f"trainer.skip_data: {w!r} is not a [first, last] pair of steps >= 1")
        saved = json.loads(self.path.read_text()) if self.path.exists() else []
        self.windows = [tuple(w) for w in windows + saved]

    def __contains__(self, step: int) -> bool:
        return any(first <= step <= last for first, last in self.windows)

    def add(self, first: int, last: int, write: bool) -> None:
        self.windows.append((first, last))
        if write:
            from train.checkpoint import write_atomic

            saved = json.loads(self.path.read_text()) if self.path.exists() else []
            write_atomic(self.path, json.dumps([*saved, [first, last]]) + "\n")
