"""Per-step metrics of the trainer, as JSON lines in the run folder (rank 0)."""

from __future__ import annotations

import functools
import json
import resource
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s per GPU by name, for MFU; CPU runs use `trainer.peak_flops` (default 1e12).
PEAK_FLOPS = {"h100": 989e12, "a100": 312e12, "l40s": 362e12, "a10": 125e12}  # as launch/plan.py's GPUS


def peak_rss_mb() -> float:
    """This process's peak resident memory: the kernel's high-water mark of its address space (Linux), which
    starts afresh at exec; `ru_maxrss` elsewhere (on Linux it carries the parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_wandb_id(run_dir: Path, run_name: str) -> str:
    """The run folder's W&B id: made once (the run's name and a random suffix) and kept in `<run_dir>/wandb_id`,
    so a resumed run continues its W&B run and two run folders never share one."""
    import secrets

    kept = Path(run_dir) / "wandb_id"
    if kept.exists():
        return kept.read_text().strip()
    made = f"{run_name.replace('/', '-')}-{secrets.token_hex(4)}"
    kept.write_text(made + "\n")
    return made


def peak_flops(cfg) -> float:
    if cfg.trainer.get("peak_flops"):
        return float(cfg.trainer.peak_flops)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower()
        return next((v for k, v in PEAK_FLOPS.items() if k in name), 312e12)
    return 1e12


class MetricsLogger:
    def __init__(self, cfg, run_dir: Path, rank: int, model, world: int):
        self.rank, self.world, self.run_dir = rank, world, run_dir
        self.file = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - closed in close()
        self.peak = peak_flops(cfg)
        self.model = model
        self.trains = model.trained_parts()  # what the backward pass computes (fine-tuning trains less)
        self.wandb = None
        if rank == 0 and cfg.wandb.mode != "disabled":
            import wandb
            from omegaconf import OmegaConf

            self.wandb = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                name=cfg.run_name,
                mode=cfg.wandb.mode,
                dir=str(run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                resume="allow",
                id=cfg.wandb.get("id") or run_wandb_id(run_dir, cfg.run_name),
            )
            print(
                f"W&B run: {self.wandb.dir} (offline runs upload with `wandb sync {Path(self.wandb.dir).parent}`)",
                flush=True,
            )

    def step(
        self,
        step: int,
        loss: float,
        per: list,
        engine,
        optimizer,
        seconds: float,
        wait: float,
        skipped: dict[str, int] | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        """`loss`: the step's loss over the global batch; `per`: this rank's micro-batch details."""
        if self.file is None:
            return
        samples = sum(len(b[3]["keys"]) for b in per) * self.world
        tokens = sum(b[2] for b in per) * self.world
        # Per task and per source: token-weighted loss over this rank's samples (rank 0 logs its share).
        groups: dict[str, list[float]] = {}
        for sources, tasks, _, _, sums, counts in per:
            for src, task, total, n in zip(sources, tasks, sums, counts, strict=True):
                for name in (f"loss/{task}", f"loss/source/{src}"):
                    acc = groups.setdefault(name, [0.0, 0])
                    acc[0] += total
                    acc[1] += n
        # Model FLOPs: each sample's real patches and text positions; hardware FLOPs: what ran, each micro batch
        # at its padded shape, with the recomputation of checkpointed layers (rank 0's share times the world).
        est = functools.partial(self.model.estimate_flops, trains=self.trains)
        flops = self.world * sum(
            est(num_patches=n_patches, text_len=n)
            for b in per
            for n_patches, n in zip(b[3]["patches"], b[3]["lengths"], strict=True)
        )
        recompute = bool(self.model.config.activation_checkpointing)
        hardware = self.world * sum(
            int(b[3]["input_ids"].shape[0])
            * est(text_len=int(b[3]["input_ids"].shape[1]), recompute=recompute)
            for b in per
        )
        grad_norm = engine.get_global_grad_norm()
        record = {
            "step": step,
            "loss": loss,
            **{name: total / max(n, 1) for name, (total, n) in groups.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": samples / seconds,
            "target_tokens_per_s": tokens / seconds,
            "step_time_s": seconds,
            "data_wait_fraction": wait / seconds,
            "mfu": flops / seconds / (self.peak * self.world),  # useful work: no padding, no recomputation
            "hfu": hardware / seconds / (self.peak * self.world),  # what the devices ran
            "max_rss_mb": peak_rss_mb(),
            # the device's peak of allocated tensors since the start (what model/memory.py predicts on a GPU)
            **(
                {"gpu_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
                if torch.cuda.is_available()
                else {}
            ),
            # loader counters so far, all ranks: samples skipped (bad image/label), targets truncated, corrupt shards
            **{f"data/{reason}": n for reason, n in sorted((skipped or {}).items())},
            **(counters or {}),  # train/skipped_steps, train/rollbacks
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        print(
            f"step {step}: loss {record['loss']:.4f} lr {record['lr']:.2e} {record['samples_per_s']:.1f} samples/s",
            flush=True,
        )

    def eval(self, step: int, record: dict, images: list) -> None:
        """An evaluation's scores (`eval.jsonl`), and pages with predicted boxes (`eval/stepN/*.png`, and
        `wandb.Image`s under `val/predictions`)."""
        if self.rank != 0:
            return
        with open(self.run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        folder = self.run_dir / "eval" / f"step{step:07d}"
        if images:
            folder.mkdir(parents=True, exist_ok=True)
        for image, _, name in images:
            image.save(folder / (name.replace("/", "_") + ".png"))
        if self.wandb is not None:
            import wandb

            logged = dict(record)
            if images:
                logged["val/predictions"] = [wandb.Image(im, caption=caption) for im, caption, _ in images]
            self.wandb.log(logged, step=step)
        losses = ", ".join(
            f"{k.removeprefix('val/loss/')} {v:.4f}"
            for k, v in record.items()
            if k.startswith("val/loss/") and "/" not in k.removeprefix("val/loss/")
        )
        print(f"eval at step {step}: val loss {losses}", flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def log_sample_keys(run_dir: Path, rank: int, step: int, micro: list[dict]) -> None:
    """`trainer.log_sample_keys`: each rank appends its samples' keys per step to `sample_keys/rank<r>.jsonl`."""
    keys_dir = run_dir / "sample_keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    with open(keys_dir / f"rank{rank}.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "keys": [k for b in micro for k in b["keys"]]}) + "\n")


def report_bad_step(
    run_dir: Path, rank: int, world: int, step: int, reason: str, loss: float, norm, micro
) -> None:
    """A skipped step, with every rank's sample keys, in `bad_steps.jsonl` (rank 0)."""
    keys = [None] * world
    torch.distributed.all_gather_object(keys, [k for b in micro for k in b["keys"]])
    if rank == 0:
        record = {
            "step": step,
            "reason": reason,
            "loss": str(loss),
            "grad_norm": str(norm),
            "keys": [k for rank_keys in keys for k in rank_keys],
        }
        with open(run_dir / "bad_steps.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"step {step}: update skipped ({reason}); its samples in {run_dir / 'bad_steps.jsonl'}",
            flush=True,
        )
