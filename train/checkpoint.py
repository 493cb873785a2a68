"""Checkpoints of a run, in `<run_dir>/checkpoints/`:

    step0001000/              DeepSpeed's files (model, each rank's optimizer partition), then each rank's
                              loader_rank<r>.json and rng_rank<r>.pt, then commit.json (rank 0, last)
    latest                    the tag of the newest complete checkpoint, replaced atomically

A checkpoint counts only once every rank has written all its files: the ranks meet at a barrier, rank 0 writes
`commit.json` (step, world size, slots, ZeRO stage) and only then moves `latest` (write to a temporary file, fsync,
rename). Old checkpoints are pruned after the pointer has moved; a folder newer than `latest` (a save that was
killed) is removed at the next start.
So a run killed at any moment of a save resumes from the new checkpoint or from the previous one, never from a
half-written one.

A checkpoint written on N ranks resumes on M: DeepSpeed's universal checkpoint (`ds_to_universal`, made once by
rank 0 into `<tag>/universal/`, then loaded with `load_universal`), the data stream from the loader states of
all N ranks (`train.loader.LoaderState.resume`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from model import run as model_run

COMMIT = "commit.json"
LATEST = "latest"
UNIVERSAL = "universal"


def tag_of(step: int) -> str:
    return f"step{step:07d}"


def write_atomic(path: Path, text: str) -> None:
    """`path` written whole or not at all, and on disk when this returns."""
    from data_pipeline.storage import write_text

    write_text(path.parent, path.name, text, sync=True)


def latest(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint's tag, or None."""
    pointer = Path(ckpt_dir) / LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def meta(ckpt_dir: Path, tag: str) -> dict:
    """What a complete checkpoint records: step, world size, data slots, ZeRO stage."""
    folder = Path(ckpt_dir) / tag
    record = folder / COMMIT
    if not record.exists():
        raise FileNotFoundError(f"{folder}: no {COMMIT} (a save that did not complete)")
    return json.loads(record.read_text())


def complete(ckpt_dir: Path) -> list[str]:
    """The complete checkpoints' tags, oldest first: those not newer than `latest`. The pointer is the commit
    point: saves go in step order and each moves the pointer before the next begins, so a folder newer than it
    is a save that did not complete (a rollback moves the pointer back and removes the newer ones)."""
    newest = latest(ckpt_dir)
    if newest is None:
        return []
    return sorted(p.name for p in Path(ckpt_dir).glob("step*") if p.is_dir() and p.name <= newest)


def resumed_slots(ckpt_dir: Path) -> int | None:
    """The data slot count of the checkpoint a run resumes from (a run keeps its streams on any world size)."""
    tag = latest(ckpt_dir)
    saved = Path(ckpt_dir) / tag / "loader_rank0.json" if tag else None
    return json.loads(saved.read_text())["slots"] if saved and saved.exists() else None


def remove_incomplete(ckpt_dir: Path) -> list[str]:
    """Rank 0, before any save: folders of saves that never completed (and temporary files) are removed."""
    keep = set(complete(ckpt_dir))
    removed = []
    for folder in sorted(Path(ckpt_dir).glob("step*")):
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    for tmp in Path(ckpt_dir).glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    return removed


class Checkpoints:
    """Save, commit, prune and load the run's checkpoints. `fault` is the test-only fault hook
    (`train.faults.kill`): a call per phase of a save."""

    def __init__(self, ckpt_dir: Path, engine, rank: int, world: int, keep: int, fault=None):
        self.dir, self.engine, self.rank, self.world, self.keep = Path(ckpt_dir), engine, rank, world, keep
        self.fault = fault or (lambda phase, step: None)
        self.saving = 0  # the step being saved

    def save(self, step: int, loader_state, client_state: dict) -> None:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        self.saving, tag, folder = step, tag_of(step), self.dir / tag_of(step)
        client = {
            **client_state,
            "step": step,
            # what ds_to_universal needs to convert this checkpoint for another world size
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
        }
        self.engine.save_checkpoint(str(self.dir), tag, client_state=client, save_latest=False)
        self.fault("after_optimizer", step)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"loader_rank{self.rank}.json", json.dumps(loader_state.to_dict()))
        cuda = torch.cuda.is_available()
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []}
        torch.save(rng, folder / f"rng_rank{self.rank}.pt")  # dropout continues the same way after a resume
        torch.distributed.barrier()  # every rank's files are written
        if self.rank == 0:
            record = {
                "step": step,
                "world": self.world,
                "slots": loader_state.slots,
                "zero_stage": self.engine.zero_optimization_stage(),
                "time": time.time(),
            }
            write_atomic(folder / COMMIT, json.dumps(record) + "\n")
            self.fault("before_pointer", step)
            write_atomic(self.dir / LATEST, tag)
            self.fault("after_pointer", step)
            self.prune()
        torch.distributed.barrier()

    def prune(self) -> None:
        """Rank 0, after the pointer moved: all but the newest `keep` complete checkpoints are removed."""
        for tag in complete(self.dir)[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(self.dir / tag, ignore_errors=True)

    def before(self, step: int) -> str | None:
        """The newest complete checkpoint written before `step` (the rollback target)."""
        older = [t for t in complete(self.dir) if meta(self.dir, t)["step"] < step]
        return older[-1] if older else None

    def point_to(self, tag: str) -> None:
        """Rank 0: `latest` moves back to `tag` and newer checkpoints are removed (a rollback)."""
        write_atomic(self.dir / LATEST, tag)
        remove_incomplete(self.dir)

    def load(self, tag: str):
        """Load `tag` into the engine (converted to a universal checkpoint first when it was written on another
        world size). Returns the client state, the loader states of all its ranks and this rank's RNG state
        (None on another world size)."""
        from deepspeed.runtime.zero.utils import ZeRORuntimeException

        info = meta(self.dir, tag)
        other_world = int(info.get("world", self.world)) != self.world
        load_dir, load_tag = self.dir, tag
        if other_world:
            load_dir, load_tag = self.dir / tag, UNIVERSAL
            self._convert(tag, info)
        self.engine._config.load_universal_checkpoint = other_world  # read by the engine at each load
        try:
            path, client = self.engine.load_checkpoint(str(load_dir), load_tag)
        except (ZeRORuntimeException, AssertionError, RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{self.dir / tag}: written on {info.get('world')} ranks (ZeRO stage {info.get('zero_stage')}), "
                f"cannot be loaded on {self.world} ranks (ZeRO stage {self.engine.zero_optimization_stage()}): "
                f"{type(e).__name__}: {e}"
            ) from e
        finally:
            self.engine._config.load_universal_checkpoint = False
        if path is None:
            raise CheckpointError(f"{self.dir / tag}: DeepSpeed found no checkpoint to load")
        saved = [json.loads(p.read_text()) for p in sorted((self.dir / tag).glob("loader_rank*.json"))]
        if len(saved) != int(info.get("world", len(saved))):
            raise CheckpointError(
                f"{self.dir / tag}: {len(saved)} loader states for {info['world']} ranks; the checkpoint is incomplete"
            )
        rng_file = self.dir / tag / f"rng_rank{self.rank}.pt"
        rng = torch.load(rng_file, weights_only=False) if rng_file.exists() and not other_world else None
        return client, saved, rng

    def _convert(self, tag: str, info: dict) -> None:
        """Rank 0 makes `<tag>/universal/` with DeepSpeed's ds_to_universal (once; kept with the checkpoint)."""
        import argparse

        target = self.dir / tag / UNIVERSAL
        if self.rank == 0 and not (target / COMMIT).exists():
            from deepspeed.checkpoint import ds_to_universal

            print(
                f"checkpoint {tag}: written on {info['world']} ranks, resuming on {self.world}: converting to "
                f"a universal checkpoint in {target}",
                flush=True,
            )
            staging = self.dir / tag / (UNIVERSAL + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            args = argparse.Namespace(
                input_folder=str(self.dir / tag),
                output_folder=str(staging),
                num_extract_workers=max(
                    1, min(8, (os.cpu_count() or 2) // 2)
                ),  # processes reading the shards
                num_merge_workers=max(1, min(2, (os.cpu_count() or 2) // 4)),
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=False,
            )
            try:
                ds_to_universal.main(args)
            except Exception as e:  # reported with the checkpoint's name on every rank below
                (self.dir / tag / "universal.error").write_text(f"{type(e).__name__}: {e}\n")
            else:
                (staging / COMMIT).write_text(json.dumps(info) + "\n")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
        torch.distributed.barrier()
        error = self.dir / tag / "universal.error"
        if not (target / COMMIT).exists():
            reason = error.read_text().strip() if error.exists() else "no output"
            raise CheckpointError(
                f"{self.dir / tag}: written on {info['world']} ranks; converting it for {self.world} ranks "
                f"failed: {reason}"
            )


class CheckpointError(RuntimeError):
    pass


def zero_state(ckpt_dir: Path, tag: str) -> dict:
    """Full fp32 weights gathered from the ZeRO checkpoint `ckpt_dir/tag` (any stage, any world size)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag)


def load_run(checkpoint: str | Path, tokenizer: str | None = None):
    """`model.run.load_run` that also reads DeepSpeed checkpoints: a run folder (its `model.pt`, else its latest
    checkpoint), one checkpoint folder, or a Hugging Face directory → (model, tokenizer)."""
    return model_run.load_run(checkpoint, tokenizer, zero_reader=zero_state)
