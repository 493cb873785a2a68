"""Pre-training entry point (Hydra), run alone or under the `deepspeed` launcher:

    python -m train.pretrain stage=layout model=tiny tokenizer=<dir> data.sources_file=<json> [key=value ...]
    deepspeed --num_accelerators 2 --no_local_rank --module train.pretrain stage=layout model=tiny ...   # CPU, gloo

Each worker resolves the config itself (`train.setup`). The run lives in `runs/<run_name>/`: the resolved config,
`metrics.jsonl`, `bad_steps.jsonl` and `checkpoints/` (`train.checkpoint`: committed atomically, resumable on
another world size). Starting the same run again resumes from its latest checkpoint; other settings are refused
(`trainer.resume=force` goes on). SIGTERM or SIGUSR1 (preemption) saves a checkpoint at the next step boundary
and exits 0. Bad steps are skipped and repeated ones rolled back (`train.guard`); a rank that stops making
progress ends the job with its stacks (`train.watchdog`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from configs.compose import CONFIG_DIR, register

register()  # Hydra's structured configs: the model presets and the groups' schemas (configs/schema.py)


def run(cfg: DictConfig, tuner=None) -> int:
    """Train the run `cfg` describes; `tuner` (`train.tuning.Tuner`): fine-tuning's start and trainable parts."""
    from model.processor import ImageProcessor
    from model.task_format import TaskFormat
    from train import checkpoint, faults
    from train.engine import build_engine, start_distributed
    from train.guard import BadSteps
    from train.loader import BatchStream, LoaderState, make_loader
    from train.metrics import MetricsLogger, log_sample_keys, report_bad_step
    from train.setup import ConfigError, build_model, checkpoint_every, prepare
    from train.step import Prefetch, skipped_samples, train_step
    from train.validation import Validation, full_state
    from train.watchdog import Watchdog

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:  # everything checkable is checked before any process group, model or data is touched
        s = prepare(cfg, world, tuner)
        faults.arm(bool(cfg.trainer.test_faults), rank)
        guard = BadSteps(cfg.trainer.bad_steps)
        every_steps, every_minutes = checkpoint_every(cfg.trainer.checkpoint_every)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan, accumulation, workers = s.plan, s.plan.accumulation, int(cfg.data.workers)
    summary = f"{s.memory_line}batch: {plan.global_batch} = {plan.describe()}; {plan.slots} data slots"
    if cfg.trainer.dry_run:  # the checks above and the batch math, nothing started
        if rank == 0:
            print(f"{summary}; {len(s.sources)} training sources; dry run, exiting", flush=True)
        return 0
    start_distributed(cfg, s.cuda)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for tag in checkpoint.remove_incomplete(ckpt_dir) if ckpt_dir.exists() else []:
            print(f"checkpoint {tag}: its save did not complete, removed", flush=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "deepspeed.json").write_text(json.dumps(s.ds_config, indent=1) + "\n")
        print(summary, flush=True)
    torch.distributed.barrier()
    try:
        model = (
            tuner.model(s.model_cfg)
            if tuner
            else build_model(cfg, s.model_cfg, checkpoint.latest(ckpt_dir) is None)
        )
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine, scheduler = build_engine(cfg, model, s.ds_config)
    guard.install(engine)
    ckpts = checkpoint.Checkpoints(
        ckpt_dir, engine, rank, world, int(cfg.trainer.keep_checkpoints), lambda p, n: faults.kill(p, n, rank)
    )
    faults.install(engine, rank, lambda: ckpts.saving)
    fmt = TaskFormat(s.tok, s.model_cfg.latent_query_num, int(cfg.trainer.max_length))
    processor = ImageProcessor(s.model_cfg.max_patches)

    def restore(tag: str, rollback: bool = False):
        """Checkpoint `tag` into the engine; its step, the loader states to resume from and this rank's RNG."""
        client, saved, rng = ckpts.load(tag)
        # The learning rate of the next step from this run's schedule: the checkpoint holds the rate its own
        # run's schedule set last (0 at its end when that run was given fewer steps).
        for group, base, f in zip(
            scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * f(scheduler.last_epoch)
        guard.load_state_dict(client.get("guard"), keep_counts=rollback)
        fresh_stream = cfg.trainer.reset_loader and not rollback
        resume = None if fresh_stream else LoaderState.resume(saved, world, workers, plan.slots)
        if rank == 0:
            print(f"resumed from {ckpt_dir / tag} at step {client['step']}", flush=True)
        return int(client["step"]), resume, rng

    def open_stream(resume, rng):
        dtype = torch.bfloat16 if s.bf16 else torch.float32
        dataset = BatchStream(
            s.sources, fmt, processor, s.micro, int(cfg.seed), rank, world, workers, resume, plan.slots,
            plan.global_batch, dtype, s.window,
        )  # fmt: skip
        state = LoaderState(world, workers, plan.slots)
        if resume:
            mine = set(plan.rank_slots(rank))
            state.states = {k: v for k, v in resume["states"].items() if k in mine}
        stream = Prefetch(make_loader(dataset, pin_memory=s.cuda), min(accumulation, 4))
        if rng is not None:  # after the DataLoader drew its base seed, as the interrupted run had
            torch.set_rng_state(rng["torch"])
            if s.cuda and rng["cuda"]:
                torch.cuda.set_rng_state_all(rng["cuda"])
        return stream, state

    step, resume, rng = 0, None, None
    if (tag := checkpoint.latest(ckpt_dir)) is not None:
        try:
            step, resume, rng = restore(tag)
        except (checkpoint.CheckpointError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    stream, loader_state = open_stream(resume, rng)
    logger = MetricsLogger(cfg, run_dir, rank, engine.module, world)
    validate = (
        Validation(cfg, engine, s.tok, s.val_sources, s.model_cfg, logger, rank, world)
        if s.val_sources
        else None
    )
    if validate and cfg.eval.at_start and step == 0:
        validate(0)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    steps = int(cfg.trainer.max_steps)
    watchdog = Watchdog(float(cfg.trainer.hang_timeout))
    last_save = time.monotonic()
    engine.train()
    while step < steps:
        t0 = time.perf_counter()
        micro = [next(stream) for _ in range(accumulation)]
        for batch in micro:
            loader_state.update(batch)
        wait = time.perf_counter() - t0
        step += 1
        if step not in s.skips:  # else its data is passed over: trainer.skip_data, or a rollback's window
            if cfg.trainer.log_sample_keys:
                log_sample_keys(run_dir, rank, step, micro)
            loss, per = train_step(engine, micro, world, s.bf16, guard, step)
            reason = guard.end_step(step, loss, engine.was_step_applied())
            if tuner and tuner.after_step(step, engine) and rank == 0:
                print(f"step {step}: LoRA update unloaded into the weights (PeriodicLoRA)", flush=True)
            if reason:
                report_bad_step(run_dir, rank, world, step, reason, loss, guard.norm, micro)
            counters = {"train/skipped_steps": guard.skipped, "train/rollbacks": guard.rollbacks}
            counts = skipped_samples(loader_state, world)
            logger.step(
                step, loss, per, engine, scheduler.optimizer, time.perf_counter() - t0, wait, counts, counters
            )
            if guard.roll_back_due():
                try:
                    target = guard.roll_back(ckpts, s.skips, step, rank)
                except RuntimeError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 3
                if target is not None:
                    stream.close()
                    watchdog.beat(4)
                    step, resume, rng = restore(target, rollback=True)
                    stream, loader_state = open_stream(resume, rng)
                    continue
            if validate and (step % int(cfg.eval.every) == 0 or step == steps):
                watchdog.beat(4)
                validate(step)
        # Whether to save (and stop) is decided alike on every rank: a signal may reach ranks a step apart,
        # and only rank 0's clock counts minutes.
        flags = torch.tensor(
            [
                stop["signal"] is not None,
                rank == 0 and 0 < every_minutes * 60 <= time.monotonic() - last_save,
            ],
            dtype=torch.float64,
        )
        torch.distributed.all_reduce(flags)
        if flags.any() or (every_steps and step % every_steps == 0) or step == steps:
            watchdog.beat(4)
            ckpts.save(step, loader_state, {"guard": guard.state_dict()})
            last_save = time.monotonic()
        if flags[0]:
            if rank == 0:
                print(f"signal: checkpoint at step {step} written, exiting", flush=True)
            break
        watchdog.beat()
    watchdog.beat(4)
    if step >= steps:
        state = full_state(engine)  # collective under ZeRO-3: every rank takes part
        if rank == 0:
            merged = tuner.merged(state) if tuner else state
            torch.save({k: v.detach().float().cpu() for k, v in merged.items()}, run_dir / "model.pt")
            if tuner:
                tuner.save_adapter(state, run_dir / "adapter")
    logger.close()
    stream.close()
    torch.distributed.barrier()
    watchdog.close()
    torch.distributed.destroy_process_group()
    return 0


@hydra.main(config_path=str(CONFIG_DIR), config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    finish(run(cfg))


def finish(code: int) -> None:
    """The process ends with `code`."""
    if "LOCAL_RANK" in os.environ:
        # Under a launcher, end the process here, everything written and flushed: C++ threads of the
        # communication stack that outlive the process group can abort the interpreter's own teardown
        # ("terminate called without an active exception") and turn a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
