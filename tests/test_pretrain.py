"""The trainer on CPU: batch math, schedule, a run through `python -m`, resume, preemption, two ranks under
the real `deepspeed` launcher with gloo, and configuration errors before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.engine import lr_lambda
from train.setup import ConfigError, batch_math

ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def test_batch_math():
    assert batch_math(1024, 4, 2).accumulation == 128
    with pytest.raises(ConfigError, match="must divide"):
        batch_math(1024, 4, 2, slots=3072)


def test_the_paper_batch_has_a_plan_on_every_world_size_up_to_1024():
    """Global batch 1024, micro batch at most 8, default slots: every world size from 1 to 1024 ranks has a plan;
    every sample of the global batch is on exactly one rank, ranks differ by at most one slot's samples and
    none holds more than 5% above the mean (unless the slots are one per sample), each rank's micro batches
    hold them all and none is over 8. Up to 128 ranks the slots are the same 128, one per micro batch, so a
    resumed run keeps its streams on any of those world sizes when they divide it evenly."""
    for world in range(1, 1025):
        plan = batch_math(1024, 8, world)
        counts = [plan.rank_samples(r) for r in range(world)]
        assert sum(counts) == 1024 and max(counts) - min(counts) <= plan.per_slot, world
        assert max(counts) * world <= 1.05 * 1024 or plan.slots == 1024, world
        assert plan.micro <= 8 and plan.micro * plan.accumulation >= max(counts), world
        assert plan.accumulation <= min(counts) or plan.micro == 1, world
        if 128 % world == 0:
            assert plan.slots == 128, world
    assert batch_math(1024, 8, 128).describe() == "micro 8 x accumulation 1 x 128 ranks"
    assert (
        batch_math(1024, 8, 24).describe()
        == "24 ranks x 40-44 samples (accumulation 6 of micro batches of up to 8)"
    )
    with pytest.raises(ConfigError, match="1025 ranks but 1024 data slots"):
        batch_math(1024, 8, 1025)


def test_paper_batch_on_two_ranks_prints_its_accumulation(tokenizer, sources):
    """Global batch 1024, micro batch 4, 2 ranks under the launcher: accumulation 128, printed (dry run)."""
    args = [a for a in _args(tokenizer, sources, "unused", 2) if "batch_size" not in a]
    cmd = _two_ranks(
        29636, [*args, "trainer.train_batch_size=1024", "trainer.micro_batch_size=4", "trainer.dry_run=true"]
    )
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert "batch: 1024 = micro 4 x accumulation 128 x 2 ranks" in r.stdout


def test_six_loader_workers_and_the_paper_batch_start_on_24_ranks(tokenizer, sources):
    """1024 samples over 24 ranks (3 nodes of 8) with 6 loader workers each: a plan, printed (dry run)."""
    args = [a for a in _args(tokenizer, sources, "unused", 2) if "batch_size" not in a and "workers" not in a]
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *args, "trainer.micro_batch_size=8", "data.workers=6",
         "trainer.dry_run=true"],
        env={**ENV, "WORLD_SIZE": "24", "RANK": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "batch: 1024 = 24 ranks x 40-44 samples (accumulation 6 of micro batches of up to 8)" in r.stdout


def test_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(375, 1000)
    assert f(0) == pytest.approx(1 / 375) and f(374) == pytest.approx(1.0)
    assert f(375) == pytest.approx(1.0) and f(687) == pytest.approx(313 / 625) and f(1000) == 0.0


@pytest.fixture(scope="module")
def val_sources(synthetic_shards, tmp_path_factory) -> Path:
    """Held-out data for evaluation during training (source b under its own name)."""
    path = tmp_path_factory.mktemp("val") / "val.json"
    path.write_text(json.dumps([{"name": "heldout", "root": str(synthetic_shards["b"]), "task": "ocr"}]))
    return path


def _args(tokenizer, sources, run_dir, steps, *extra):
    return [
        "stage=layout",
        "model=tiny",
        f"tokenizer={tokenizer.path}",
        f"data.sources_file={sources}",
        "data.workers=0",
        "trainer.train_batch_size=8",
        "trainer.micro_batch_size=2",
        f"trainer.max_steps={steps}",
        "trainer.max_length=256",
        "optim.warmup_steps=2",
        f"run_dir={run_dir}",
        "trainer.checkpoint_every=2",
        "trainer.dropout=0",
        "wandb.mode=disabled",
        *extra,
    ]


def _train(tokenizer, sources, run_dir, steps, *extra, env=None) -> subprocess.CompletedProcess:
    """A one-process run that must succeed."""
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, run_dir, steps), *extra],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _two_ranks(port: int, args: list[str]) -> list[str]:
    """The real launcher: 2 CPU ranks over gloo."""
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    return [
        deepspeed,
        "--num_accelerators",
        "2",
        "--no_local_rank",
        "--master_port",
        str(port),
        "--module",
        "train.pretrain",
        *args,
    ]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _wandb_records(path: Path):
    """The records of a W&B offline run file (a LevelDB-style log of protobuf `Record`s after a 7-byte header)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full/first start a record, middle/last continue it
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def test_run_resume_and_preemption(tokenizer, sources, val_sources, tmp_path):
    run = tmp_path / "run"
    evaluation = [
        f"data.val_sources_file={val_sources}",
        "eval.every=2",
        "eval.predictions=2",
        "eval.max_new_tokens=8",
    ]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.pretrain",
            *_args(tokenizer, sources, run, 4),
            "wandb.mode=offline",
            *evaluation,
        ],
        env={**ENV, "WANDB_SILENT": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1  # the W&B offline run, for `wandb sync`
    keys, config = set(), None
    for record in _wandb_records(offline[0]):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or ".".join(item.nested_key) for item in record.history.item}
        elif record.WhichOneof("record_type") == "run":
            config = {item.key for item in record.run.config.update}
    every_metric = {
        "loss", "loss/ocr", "loss/source/a", "lr", "grad_norm", "target_tokens_per_s", "samples_per_s", "mfu",
        "hfu", "step_time_s", "data_wait_fraction", "max_rss_mb", "val/loss/ocr", "val/loss/heldout/ocr",
        "val/loss_shuffled_images/ocr", "val/ocr/f1", "val/ocr/iou", "val/predictions._type",
    }  # fmt: skip
    assert every_metric <= keys, every_metric - keys
    assert {"trainer", "optim", "model", "data", "stage"} <= config  # the resolved config
    images = list(offline[0].parent.glob("files/media/images/val/predictions_*.png"))
    assert len(images) == 3 * 2  # steps 0, 2 and 4, two pages each, with their predicted boxes drawn
    assert "batch: 8 = micro 2 x accumulation 4 x 1 ranks" in r.stdout
    m = _metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3, 4] and m[-1]["lr"] == 0.0
    assert {
        "loss",
        "loss/ocr",
        "loss/source/a",
        "grad_norm",
        "samples_per_s",
        "mfu",
        "data_wait_fraction",
    } <= set(m[0])
    assert all(x["hfu"] > x["mfu"] > 0 for x in m)  # padded text and patches ran, but are not useful work
    assert (run / "model.pt").exists() and (run / "checkpoints" / "latest").read_text() == "step0000004"
    # The finished run exports to the Hugging Face format, which transformers loads.
    r = subprocess.run(
        [sys.executable, "-m", "model.export", f"checkpoint={run}", f"out={tmp_path / 'hf'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    import transformers

    hf = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert (
        hf.config.text_config.vocab_size == tokenizer.vocab_size
        and (tmp_path / "hf" / "tokenizer.model").exists()
    )
    # Started again with more steps, the run resumes at its latest checkpoint.
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, run, 6)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "at step 4" in r.stdout, r.stderr[-3000:]
    assert [x["step"] for x in _metrics(run)] == [1, 2, 3, 4, 5, 6]
    # SIGTERM: a checkpoint at the next step boundary, exit 0.
    run2 = tmp_path / "run2"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train.pretrain",
            *_args(tokenizer, sources, run2, 1000),
            "trainer.checkpoint_every=1000",
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (run2 / "metrics.jsonl").exists() or not (run2 / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    step = _metrics(run2)[-1]["step"]
    assert (run2 / "checkpoints" / "latest").read_text() == f"step{step:07d}"
    assert (run2 / "checkpoints" / f"step{step:07d}" / "loader_rank0.json").exists()


def test_two_ranks_under_the_deepspeed_launcher(tokenizer, sources, val_sources, tmp_path):
    """ZeRO-3 on 2 ranks, with evaluation: the validation batches are shared between the ranks, and the
    generation on rank 0 uses the gathered weights."""
    run = tmp_path / "run"
    evaluation = [
        f"data.val_sources_file={val_sources}",
        "eval.every=2",
        "eval.predictions=2",
        "eval.max_new_tokens=8",
    ]
    overrides = ["deepspeed=zero3", "deepspeed.zero_optimization.overlap_comm=false",
                 "deepspeed.zero_optimization.reduce_bucket_size=1000000", "deepspeed.communication_data_type=fp32"]  # fmt: skip
    cmd = _two_ranks(29633, [*_args(tokenizer, sources, run, 3), *overrides, *evaluation])
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "batch: 8 = micro 2 x accumulation 2 x 2 ranks" in r.stdout
    # The DeepSpeed overrides as the engine reads them back, and the resolved dict kept with the run.
    assert "ZeRO stage 3, overlap_comm False" in r.stdout and "reduce bucket 1,000,000" in r.stdout, r.stdout
    assert "communication torch.float32" in r.stdout
    resolved = json.loads((run / "deepspeed.json").read_text())
    assert (
        resolved["zero_optimization"]["overlap_comm"] is False
        and resolved["gradient_accumulation_steps"] == 2
    )
    ckpt = run / "checkpoints" / "step0000002"
    assert (ckpt / "loader_rank0.json").exists() and (ckpt / "loader_rank1.json").exists()
    losses = [x["loss"] for x in _metrics(run)]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, not NaN
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 3]
    assert evals[-1]["val/loss/ocr"] < evals[0]["val/loss/ocr"]  # it learns, measured on held-out pages
    assert len(list((run / "eval" / "step0000003").glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("override", "code", "message"),
    [
        ("data.slots=3", 2, "must divide"),
        ("tokenizer=/nonexistent", 2, "no sentencepiece model"),
        ("trainer.max_length=100000", 2, "exceeds the model"),
        ("trainer.max_steps=many", 1, "Error merging override trainer.max_steps=many"),  # configs/schema.py
        ("trainer.micro_batchsize=2", 1, "Key 'micro_batchsize' not in 'Trainer'"),  # Hydra's own message
        ("eval.batch=0", 2, "eval.batch=0: expected a whole number >= 1"),
        ("stage=pretraining", 1, "Could not find 'stage/pretraining'"),
        (
            "+deepspeed.train_batch_size=4",
            2,
            "deepspeed.train_batch_size is set by the trainer from trainer.train",
        ),
        (
            "deepspeed.zero_optimization.overlap_comm=maybe",
            2,
            "deepspeed.zero_optimization.overlap_comm: Input",
        ),
        (
            "+deepspeed.zero_optimization.bogus=1",
            2,
            "deepspeed.zero_optimization.bogus: Extra inputs are not",
        ),
        ("trainer.precision=fp16", 2, "trainer.precision=fp16 is not supported"),
        ("trainer.precision=bf16", 2, "trainer.precision=bf16 needs a GPU here"),
        ("model.bogus=1", 1, "Could not override 'model.bogus'"),
        ("model.text.layers=many", 1, "Error merging override model.text.layers=many"),
        ("trainer.checkpoint_every=2hours", 2, "trainer.checkpoint_every='2hours': a number of steps"),
        ("trainer.skip_data=[[4,2]]", 2, "trainer.skip_data: [4, 2] is not a [first, last] pair"),
        ("deepspeed.zero_optimization.stage=0", 2, "the trainer runs ZeRO stage 1, 2 or 3"),
    ],
)
def test_bad_configs_and_overrides_fail_before_any_work(
    tokenizer, sources, tmp_path, override, code, message
):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, run, 2), override],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == code and message in r.stderr, r.stderr[-2000:]
    assert not run.exists()


def test_a_run_goes_on_over_deleted_truncated_and_undecodable_data(tokenizer, synthetic_shards, tmp_path):
    """A manifest naming a deleted shard, a truncated tar and an undecodable image: each named on stderr,
    counted in the metrics, and the run finishes; a source whose manifest is missing stops it before work."""
    import io
    import shutil
    import tarfile

    root = tmp_path / "a"
    shutil.copytree(synthetic_shards["a"], root)
    (root / "shard-00001.tar").unlink()
    truncated = root / "shard-00002.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    with tarfile.open(root / "shard-00000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(root / "shard-00000.tar", "w") as tar:
        for m, data in members:
            data = b"\x89PNG not really" if m.name.endswith(".png") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"name": "a", "root": str(root), "weight": 1.0, "task": "ocr"}]))
    run = tmp_path / "run"
    r = _train(tokenizer, sources, run, 4)
    assert "shard-00001.tar: unreadable shard" in r.stderr and "No such file" in r.stderr
    assert "shard-00002.tar: unreadable shard" in r.stderr
    assert "bad_image; skipped" in r.stderr
    last = _metrics(run)[-1]
    assert last["step"] == 4 and last["data/bad_image"] >= 1 and last["data/unreadable_shard"] >= 2

    sources.write_text(
        json.dumps([{"name": "a", "root": str(tmp_path / "nowhere"), "weight": 1.0, "task": "ocr"}])
    )
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, tmp_path / "run2", 2)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "nowhere/manifest.json: no manifest" in r.stderr


def test_mixed_stage_starts_from_the_layout_weights(tokenizer, sources, tmp_path):
    layout = tmp_path / "layout"
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, layout, 2)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    mixed = tmp_path / "mixed"
    args = [a for a in _args(tokenizer, sources, mixed, 2) if a != "stage=layout"]
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *args, "stage=mixed", f"stage.init_from_dir={layout}"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and f"starting from {layout / 'model.pt'}" in r.stdout, r.stderr[-2000:]
    # Starting from trained weights, the first loss is below a fresh model's first loss.
    assert _metrics(mixed)[0]["loss"] < _metrics(layout)[0]["loss"]
    other = [a for a in _args(tokenizer, sources, tmp_path / "mixed2", 2) if a != "stage=layout"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.pretrain",
            *other,
            "stage=mixed",
            f"stage.init_from_dir={tmp_path / 'nothing'}",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_capacity_planner():
    """The planner's CLI prints the fitting plan and the stages' days; for an 80 GB and a 40 GB GPU the plan it
    chooses fits by the memory model with 10% headroom (the 40 GB one by recomputing or a smaller micro
    batch), and its hardware FLOPs count padding and recomputation."""
    from configs.compose import compose_app
    from launch.plan import GPUS, plan_run
    from model.config import config_from_dict
    from model.memory import estimate

    r = subprocess.run(
        [sys.executable, "-m", "launch.plan", "model=kosmos-2.5", "gpus=128", "gpu=h100"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "1.37B parameters" in r.stdout and "fits: micro batch" in r.stdout, r.stdout
    assert "stage layout  100,000 steps" in r.stdout and "TB of shards" in r.stdout
    plans = {}
    for gpu in ("h100", "a100-40"):
        cfg = compose_app("plan", [f"gpu={gpu}"])
        model = config_from_dict(cfg.model)
        p = plans[gpu] = plan_run(model, cfg)
        again = estimate(
            model.__class__(**{**vars(model), "activation_checkpointing": p.checkpointing}),
            p.memory_plan,
        )
        assert again.peak == p.memory.peak <= 0.9 * GPUS[gpu].memory, gpu
        assert p.hardware_flops > p.model_flops and 0 < p.padding < 0.1, gpu
    small, big = plans["a100-40"], plans["h100"]
    assert (small.micro, small.checkpointing) != (big.micro, big.checkpointing)
    for bad, message in (("gpu=tpu", "gpu='tpu'"), ("gpus_=8", "Could not override 'gpus_'")):
        r = subprocess.run(
            [sys.executable, "-m", "launch.plan", bad], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_full_data_config_is_the_paper_mixture():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"
    ):
        cfg = compose("pretrain", overrides=["data=full", "stage=mixed"])
    weights = {s.name: s.weight for s in cfg.data.sources}
    assert abs(sum(weights.values()) - 1.0) < 1e-9 and weights["latex"] == 0.15 and weights["pdf"] == 0.20


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_match_one_rank_on_the_same_global_batches(tokenizer, sources, tmp_path, zero):
    """The guard against silent gradient-reduction bugs: the first 5 losses of 2 ranks equal 1 rank's."""
    common = ["data.slots=4", "trainer.checkpoint_every=1000", f"deepspeed={zero}"]
    one = tmp_path / "one"
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, one, 5), *common],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    cmd = _two_ranks(29634, [*_args(tokenizer, sources, two, 5), *common])
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    a, b = [x["loss"] for x in _metrics(one)], [x["loss"] for x in _metrics(two)]
    assert len(a) == len(b) == 5
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"{zero}: max |loss(2 ranks) - loss(1 rank)| over 5 steps = {diff:.2e}")
    assert diff < 1e-4, (a, b)
    assert a[-1] < a[0]  # and it learns


def test_two_rank_run_killed_and_resumed_continues_exactly(tokenizer, sources, synthetic_shards, tmp_path):
    """SIGKILL after the checkpoint at step 3, start again: steps 4..13 take the same samples on every rank and
    repeat the uninterrupted losses. The interrupted run reads its shards over HTTP from a server on
    localhost, the reference from the local folders: the stream does not depend on where the shards are.
    Both run ZeRO stage 1 (the other tests run 2 and 3)."""
    from tests.servers import http_server

    def launch(run, port, sources):
        extra = [
            "deepspeed=zero1",
            "trainer.checkpoint_every=3",
            "data.slots=4",
            "trainer.dropout=0.1",
            "trainer.log_sample_keys=true",
        ]
        cmd = _two_ranks(port, [*_args(tokenizer, sources, run, 13), *extra])
        return subprocess.Popen(
            cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    ref = tmp_path / "ref"
    proc = launch(ref, 29641, sources)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    run = tmp_path / "run"
    remote = tmp_path / "remote.json"
    with (
        http_server(synthetic_shards["a"]) as (url_a, served),
        http_server(synthetic_shards["b"]) as (url_b, _),
    ):
        remote.write_text(
            json.dumps(
                [{**e, "root": {"a": url_a, "b": url_b}[e["name"]]} for e in json.loads(sources.read_text())]
            )
        )
        proc = launch(run, 29642, remote)
        deadline = time.time() + 600
        while not (run / "checkpoints" / "step0000003" / "rng_rank1.pt").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = launch(run, 29643, remote)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
        assert served["manifest.json"] >= 2 and any(name.endswith(".tar") for name in served)
    want = {m["step"]: m["loss"] for m in _metrics(ref)}
    got = {m["step"]: m["loss"] for m in _metrics(run)}  # a step logged twice: the resumed run's value wins
    assert sorted(got) == list(range(1, 14))
    assert max(abs(got[s] - want[s]) for s in range(4, 14)) < 1e-6
    assert json.loads((run / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 1

    def keys(run, rank):  # a step logged twice: the resumed run's keys win
        lines = (run / "sample_keys" / f"rank{rank}.jsonl").read_text().splitlines()
        return {r["step"]: r["keys"] for r in map(json.loads, lines)}

    for rank in (0, 1):
        a, b = keys(ref, rank), keys(run, rank)
        assert all(a[s] == b[s] for s in range(1, 14)) and len(a[4]) == 4


def test_the_offload_config_trains_with_deepspeeds_cpu_adam(tokenizer, sources, tmp_path):
    """deepspeed=offload (ZeRO-3, optimizer state and parameters in CPU memory) steps with DeepSpeed's CPU Adam,
    as DeepSpeed requires of an offloaded optimizer, and learns."""
    run = tmp_path / "run"
    r = _train(tokenizer, sources, run, 4, "deepspeed=offload", "trainer.checkpoint_every=1000")
    assert "ZeRO stage 3" in r.stdout, r.stdout
    losses = [x["loss"] for x in _metrics(run)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses


def test_micro_batch_auto_picks_what_the_memory_model_fits_and_the_run_stays_under_the_budget(
    tokenizer, sources, tmp_path
):
    """trainer.micro_batch_size=auto on a CPU: a dry run prints the memory model's peak for each candidate;
    with a budget between the peaks of micro batches 8 and 4 (less the 10% headroom), the run takes 4 and its
    measured peak resident memory stays under the budget."""
    import re

    args = [a for a in _args(tokenizer, sources, tmp_path / "run", 3) if "micro_batch" not in a]
    auto = ["trainer.micro_batch_size=auto", "trainer.checkpoint_every=1000"]
    dry = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *args, *auto, "trainer.memory_budget_gb=1000", "trainer.dry_run=true"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "memory: micro batch 8, activation checkpointing off" in dry.stdout, dry.stdout
    table = dict(re.findall(r"(\d+(?: ckpt)?) ([\d.]+)", dry.stdout.split("GiB at the peak: ")[1]))
    assert float(table["8"]) > float(table["4"]) > float(table["2"])
    budget = (float(table["8"]) + float(table["4"])) / 2 / 0.9
    r = _train(tokenizer, sources, tmp_path / "run", 3, *auto, f"trainer.memory_budget_gb={budget}")
    assert "memory: micro batch 4, activation checkpointing off" in r.stdout, r.stdout
    assert "batch: 8 = micro 4 x accumulation 2 x 1 ranks" in r.stdout
    peak = max(x["max_rss_mb"] for x in _metrics(tmp_path / "run"))
    assert peak * 2**20 < budget * 2**30, (
        peak,
        budget * 1024,
        [x for x in r.stdout.splitlines() if "memory" in x],
    )


def test_the_planner_reads_target_lengths_from_a_build(tokenizer, synthetic_shards):
    """lengths=<build> tokenizer=<dir>: the padding and FLOPs come from that build's targets (synthetic pages
    of a few short lines: far shorter than texlive's, so fewer FLOPs per sample)."""

    def flops(*extra):
        r = subprocess.run(
            [sys.executable, "-m", "launch.plan", "gpu=a100", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return float(r.stdout.split("FLOPs per sample: ")[1].split(" TFLOPs")[0])

    built = flops(f"lengths={synthetic_shards['a']}", f"tokenizer={tokenizer.path}")
    assert built < flops()
    r = subprocess.run(
        [sys.executable, "-m", "launch.plan", f"lengths={synthetic_shards['a']}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "needs tokenizer=<dir>" in r.stderr


def test_a_run_folder_belongs_to_one_run(tokenizer, sources, tmp_path):
    """Rerunning a finished run with another learning rate is refused with the difference, before any work;
    trainer.resume=force goes on; a longer stage (a safe key) goes on. Each run folder keeps its own W&B id."""
    from train.metrics import run_wandb_id

    run = tmp_path / "run"
    _train(tokenizer, sources, run, 2)
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *_args(tokenizer, sources, run, 2), "optim.lr=0.0003"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "optim.lr: 0.0002 -> 0.0003" in r.stderr, r.stderr[-2000:]
    assert "trainer.resume=force" in r.stderr and not (run / "checkpoints" / "step0000003").exists()
    r = _train(tokenizer, sources, run, 3, "optim.lr=0.0003", "trainer.resume=force")
    assert "resumed from" in r.stdout and [x["step"] for x in _metrics(run)][-1] == 3
    r = _train(
        tokenizer, sources, run, 4, "optim.lr=0.0003"
    )  # the folder now holds lr 3e-4; max_steps is safe
    assert "resumed from" in r.stdout
    (tmp_path / "a").mkdir()
    first = run_wandb_id(tmp_path / "a", "layout-tiny")
    (tmp_path / "b").mkdir()
    assert first == run_wandb_id(tmp_path / "a", "layout-tiny") != run_wandb_id(tmp_path / "b", "layout-tiny")
