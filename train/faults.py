"""Faults injected on purpose, for the tests of the trainer's recovery: `LITERATE_FAULTS`, never set in a real run.
They arm only when the run also says `trainer.test_faults=true`; a run that finds `LITERATE_FAULTS` set without it
refuses to start (exit 2), so a variable left in a shell or passed on by `srun` cannot kill saves or poison
gradients of a real run. An armed run says so on every rank's stderr before its first step.
A comma-separated list of `kind@step` or `kind@step:rank` (every rank when no rank is given):

    kill_after_model@4:1      SIGKILL while saving step 4's checkpoint: after DeepSpeed's model file
    kill_after_optimizer@4    ... after every optimizer partition (before the loader and RNG states)
    kill_before_pointer@4     ... after commit.json, before `latest` moves (rank 0's phases)
    kill_after_pointer@4      ... after `latest` moved, before old checkpoints are pruned
    nan_grad@3:1              a NaN in one gradient of rank 1 at step 3
    spike@5                   step 5's loss, and so its gradients, times 1000
"""

from __future__ import annotations

import os
import signal
import sys

KINDS = (
    "kill_after_model",
    "kill_after_optimizer",
    "kill_before_pointer",
    "kill_after_pointer",
    "nan_grad",
    "spike",
)


def _parse(text: str) -> list[tuple[str, int, int | None]]:
    faults = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, where = item.partition("@")
        step, _, rank = where.partition(":")
        if kind not in KINDS or not step.isdigit() or (rank and not rank.isdigit()):
            raise ValueError(
                f"LITERATE_FAULTS: {item!r} is not kind@step[:rank] with kind one of {', '.join(KINDS)}"
            )
        faults.append((kind, int(step), int(rank) if rank else None))
    return faults


FAULTS: list[tuple[str, int, int | None]] = []  # armed by `arm`, for this process


def arm(allowed: bool, rank: int) -> None:
    """Arm `LITERATE_FAULTS` when the run allows it (`trainer.test_faults=true`); raises ValueError when the
    variable is set and the run does not allow it, or when it does not parse."""
    text = os.environ.get("LITERATE_FAULTS", "")
    FAULTS.clear()
    if not text.strip():
        return
    if not allowed:
        raise ValueError(
            f"LITERATE_FAULTS={text!r} is set: fault injection is for the recovery tests only. Unset it for a real "
            "run, or pass trainer.test_faults=true in a test"
        )
    FAULTS.extend(_parse(text))
    print(
        f"rank {rank}: TEST FAULTS ARMED ({text}): this run will fail on purpose", file=sys.stderr, flush=True
    )


def active(kind: str, step: int, rank: int) -> bool:
    return any(k == kind and s == step and r in (None, rank) for k, s, r in FAULTS)


def kill(phase: str, step: int, rank: int) -> None:
    """The process ends here, as a node failure would end it, when `kill_<phase>@step` is set for this rank."""
    if active(f"kill_{phase}", step, rank):
        print(
            f"fault: rank {rank} killed at step {step}, {phase.replace('_', ' ')}",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)


def install(engine, rank: int, step_of) -> None:
    """Wire the faults that happen inside DeepSpeed: the kill between the model file and the optimizer files
    of a save. `step_of()` gives the step being saved."""
    if not any(k == "kill_after_model" for k, _, _ in FAULTS):
        return
    original = engine._save_zero_checkpoint

    def save_zero(*args, **kwargs):
        kill("after_model", step_of(), rank)
        return original(*args, **kwargs)

    engine._save_zero_checkpoint = save_zero


def poison_gradient(model, step: int, rank: int) -> None:
    """`nan_grad@step`: this backward gives the model's first parameter a NaN gradient on this rank."""
    if active("nan_grad", step, rank):
        param = next(p for p in model.parameters() if p.requires_grad)
        handle = None

        def hook(grad):
            handle.remove()
            return grad * float("nan")

        handle = param.register_hook(hook)


def loss_factor(step: int, rank: int) -> float:
    return 1000.0 if active("spike", step, rank) else 1.0
