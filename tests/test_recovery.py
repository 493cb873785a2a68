"""What happens to long runs, with real `deepspeed` ranks on gloo: a checkpoint resumed on another world size,
a process killed at each phase of a save, non-finite and spiking steps, rollbacks, a stopped rank."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_pretrain import ENV, _args, _metrics, _two_ranks, _wandb_records

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves it out

STEPS = 5
COMMON = ["data.slots=4", "trainer.checkpoint_every=2", "trainer.log_sample_keys=true"]


def _launch(
    tokenizer, sources, run: Path, ranks: int, port: int, *extra, faults: str = "", steps: int = STEPS
):
    args = [
        *_args(tokenizer, sources, run, steps),
        *COMMON,
        *extra,
        *(["trainer.test_faults=true"] if faults else []),
    ]
    cmd = _two_ranks(port, args) if ranks == 2 else [sys.executable, "-m", "train.pretrain", *args]
    env = {**ENV, "LITERATE_FAULTS": faults} if faults else ENV
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def _losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in _metrics(run)}  # a step logged twice: the resumed run's value wins


def _keys(run: Path) -> dict[int, list[str]]:
    """Every rank's sample keys per step, sorted (a step logged twice: the resumed run's keys win)."""
    out: dict[int, list[str]] = {}
    for path in sorted((run / "sample_keys").glob("rank*.jsonl")):
        per_rank: dict[int, list[str]] = {}
        for record in map(json.loads, path.read_text().splitlines()):
            per_rank[record["step"]] = record["keys"]
        for step, keys in per_rank.items():
            out.setdefault(step, []).extend(keys)
    return {s: sorted(k) for s, k in out.items()}


def _same_run(run: Path, ref: Path, tol: float) -> float:
    got, want = _losses(run), _losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1)), (got, want)
    diff = max(abs(got[s] - want[s]) for s in want)
    assert diff < tol, (got, want)
    assert _keys(run) == _keys(ref)
    return diff


def test_the_bad_step_rule():
    """Non-finite values are bad at once; a spike only above mean + sigma x std of the accepted window, once warmed
    up, and only upwards; skipped steps stay out of the window; rollback after K bad steps within N steps."""
    from omegaconf import OmegaConf

    from train.guard import BadSteps

    knobs = dict(sigma=6, window=8, warmup=4, rollback_after=3, rollback_within=10, max_rollbacks=1)
    guard = BadSteps(OmegaConf.create(knobs))
    losses = [5.0, 4.9, 5.1, 5.0, 4.95]
    for step, loss in enumerate(losses[:3], 1):  # before the warm-up nothing is a spike
        guard.check_loss(loss * (100 if step == 3 else 1))
        guard.check_norm(1.0)
        assert guard.end_step(step, loss, guard.veto is None) is None
    guard.check_loss(float("nan"))
    assert guard.check_norm(1.0) and guard.end_step(4, float("nan"), False) == "loss nan"
    for step, loss in enumerate(losses[3:], 5):
        guard.check_loss(loss)
        assert not guard.check_norm(1.0 + step / 100)
        assert guard.end_step(step, loss, True) is None
    guard.check_loss(4.0)  # far below: not a spike
    assert not guard.check_norm(1.05) and guard.end_step(7, 4.0, True) is None
    guard.check_loss(5.3)  # 6 sigma above a window of std ~0.36 is ~7.1
    assert not guard.check_norm(1.05)
    guard.end_step(8, 5.3, True)
    guard.check_loss(9.0)
    assert guard.check_norm(1.0) and "loss spike 9" in guard.veto
    assert guard.end_step(9, 9.0, False).startswith("loss spike") and not guard.roll_back_due()
    guard.check_loss(5.0)
    assert guard.check_norm(50.0) and "gradient-norm spike 50" in guard.veto
    guard.end_step(10, 5.0, False)
    assert guard.recent == [4, 9, 10] and guard.roll_back_due() and guard.skipped == 3
    assert len(guard.losses) == 7 and 9.0 not in guard.losses  # skipped steps stay out


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tokenizer, sources, tmp_path_factory):
    """Uninterrupted 2-rank runs (ZeRO-2 and ZeRO-3) of 5 steps, checkpoints every 2."""
    out = {}
    for port, zero in ((29651, "zero2"), (29652, "zero3")):
        run = tmp_path_factory.mktemp(f"ref_{zero}") / "run"
        _ok(_launch(tokenizer, sources, run, 2, port, f"deepspeed={zero}"))
        out[zero] = run
    return out


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_a_checkpoint_resumes_on_another_world_size(tokenizer, sources, reference, tmp_path, zero):
    """2 ranks killed after step 4's checkpoint and resumed on 1 rank; 1 rank killed there and resumed on 2: both
    continue with the uninterrupted 2-rank run's losses (within 1e-5) and sample keys, through a universal
    checkpoint made once from the saved one."""
    down = tmp_path / "down"
    r = _launch(tokenizer, sources, down, 2, 29653, f"deepspeed={zero}", faults="kill_after_pointer@4")
    assert r.returncode != 0 and "killed at step 4" in r.stderr, r.stderr[-2000:]
    r = _ok(_launch(tokenizer, sources, down, 1, 0, f"deepspeed={zero}"))
    assert "written on 2 ranks, resuming on 1" in r.stdout and "at step 4" in r.stdout, r.stdout[-2000:]
    assert (down / "checkpoints" / "step0000004" / "universal" / "commit.json").exists()
    print(f"{zero} 2 -> 1 ranks: max loss difference {_same_run(down, reference[zero], 1e-5):.1e}")
    up = tmp_path / "up"
    r = _launch(tokenizer, sources, up, 1, 0, f"deepspeed={zero}", faults="kill_after_pointer@4")
    assert r.returncode != 0
    r = _ok(_launch(tokenizer, sources, up, 2, 29654, f"deepspeed={zero}"))
    assert "written on 1 ranks, resuming on 2" in r.stdout, r.stdout[-2000:]
    print(f"{zero} 1 -> 2 ranks: max loss difference {_same_run(up, reference[zero], 1e-5):.1e}")


@pytest.mark.parametrize(
    "phase, resumed_at",
    [("after_model", 2), ("after_optimizer", 2), ("before_pointer", 2), ("after_pointer", 4)],
)
def test_a_save_killed_at_any_phase_resumes_from_a_complete_checkpoint(
    tokenizer, sources, reference, tmp_path, phase, resumed_at
):
    """SIGKILL of rank 1 (rank 0 for the pointer's phases) while saving step 4: the launcher ends the job; the
    relaunched job resumes from step 4's checkpoint if its pointer had moved, else from step 2's (step 4's
    leftovers removed), and gives the uninterrupted run's losses and keys."""
    run = tmp_path / "run"
    rank = 0 if "pointer" in phase else 1
    r = _launch(tokenizer, sources, run, 2, 29655, "deepspeed=zero2", faults=f"kill_{phase}@4:{rank}")
    assert r.returncode != 0 and f"rank {rank} killed at step 4" in r.stderr, (r.stdout + r.stderr)[-2000:]
    assert (run / "checkpoints" / "latest").read_text() == f"step{resumed_at:07d}"
    r = _ok(_launch(tokenizer, sources, run, 2, 29656, "deepspeed=zero2"))
    assert f"at step {resumed_at}" in r.stdout, r.stdout[-2000:]
    if resumed_at == 2:
        assert "step0000004: its save did not complete, removed" in r.stdout
    _same_run(run, reference["zero2"], 1e-6)
    kept = sorted(p.name for p in (run / "checkpoints").glob("step*"))
    assert kept == ["step0000002", "step0000004", "step0000005"]  # keep_checkpoints=3, all complete


def test_fault_injection_left_in_the_environment_refuses_to_start(tokenizer, sources, tmp_path):
    """`LITERATE_FAULTS` set without `trainer.test_faults=true` (a variable left in a shell, or passed on by srun)
    stops the run before any work, naming the variable; nothing is injected into a real run."""
    run = tmp_path / "run"
    args = [*_args(tokenizer, sources, run, STEPS), *COMMON]
    env = {**ENV, "LITERATE_FAULTS": "spike@2"}
    r = subprocess.run(
        [sys.executable, "-m", "train.pretrain", *args], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and "LITERATE_FAULTS='spike@2' is set: fault injection is for the" in r.stderr
    assert "ARMED" not in r.stderr and not run.exists()


def test_a_nan_in_one_ranks_gradients_skips_the_step_on_every_rank(tokenizer, sources, tmp_path):
    """A NaN in rank 1's gradients at step 3: the update is skipped on both ranks, counted, logged with the
    step's 8 sample keys, and the final weights equal those of a run that passed over step 3's data."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    r = _ok(_launch(tokenizer, sources, run, 2, 29657, faults="nan_grad@3:1"))
    assert "rank 1: TEST FAULTS ARMED (nan_grad@3:1)" in r.stderr
    _ok(_launch(tokenizer, sources, ref, 2, 29658, "trainer.skip_data=[[3,3]]"))
    metrics = {m["step"]: m for m in _metrics(run)}
    assert [metrics[s]["train/skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    (bad,) = [json.loads(line) for line in (run / "bad_steps.jsonl").read_text().splitlines()]
    assert (
        bad["step"] == 3
        and bad["reason"] in ("gradient norm nan", "gradient norm inf")
        and len(bad["keys"]) == 8
    )
    assert sorted(bad["keys"]) == _keys(run)[3]
    assert metrics[2]["lr"] == metrics[3]["lr"] != metrics[4]["lr"]  # step 3 did not advance the schedule
    a, b = _weights(run), _weights(ref)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"NaN at step 3: max |weight - weight of a run without step 3| = {diff:.1e}")
    assert diff < 1e-6


def test_spikes_are_skipped_and_repeated_ones_rolled_back(tokenizer, sources, tmp_path):
    """The loss of step 4 x1000 is skipped; spikes at 6, 7 and 8 (3 within 3 steps) send the run back to step 4's
    checkpoint, passing over the data of steps 5-8: the final weights equal a run that passed over steps 4-8,
    and the skips and the rollback are in the metrics and in W&B."""
    knobs = [
        "trainer.bad_steps.window=8",
        "trainer.bad_steps.warmup=2",
        "trainer.bad_steps.rollback_after=3",
        "trainer.bad_steps.rollback_within=3",
    ]
    run, ref = tmp_path / "run", tmp_path / "ref"
    spikes = "spike@4,spike@6,spike@7,spike@8"
    r = _ok(_launch(tokenizer, sources, run, 1, 0, *knobs, "wandb.mode=offline", faults=spikes, steps=10))
    assert "back to step0000004, data of steps 5-8 passed over" in r.stdout, r.stdout[-3000:]
    _ok(_launch(tokenizer, sources, ref, 1, 0, *knobs, "trainer.skip_data=[[4,8]]", steps=10))
    bad = [json.loads(line) for line in (run / "bad_steps.jsonl").read_text().splitlines()]
    assert [b["step"] for b in bad] == [4, 6, 7, 8] and all("loss spike" in b["reason"] for b in bad)
    last = _metrics(run)[-1]
    assert last["step"] == 10 and last["train/skipped_steps"] == 4 and last["train/rollbacks"] == 1
    assert json.loads((run / "data_skips.json").read_text()) == [[5, 8]]
    a, b = _weights(run), _weights(ref)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    (history,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    logged = [
        (item.key or "/".join(item.nested_key), item.value_json)
        for record in _wandb_records(history)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    ]
    assert ("train/rollbacks", "1") in logged and ("train/skipped_steps", "4") in logged


def test_a_stopped_rank_ends_the_job_with_its_stacks_and_the_job_resumes(tokenizer, sources, tmp_path):
    """Rank 1 stopped with SIGSTOP after step 2's checkpoint: rank 0 waits in a collective, its watchdog writes
    the stacks and exits 1, the launcher ends rank 1; all within hang_timeout + 60 s. Relaunched, the job
    resumes from the checkpoint."""
    import psutil

    run = tmp_path / "run"
    args = [*_args(tokenizer, sources, run, 40), *COMMON, "trainer.hang_timeout=15"]
    proc = subprocess.Popen(
        _two_ranks(29659, args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (run / "checkpoints" / "latest").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    ranks = {
        int(p.environ().get("RANK", -1)): p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "train.pretrain" in " ".join(p.cmdline())
    }
    ranks[1].send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        _, err = proc.communicate(timeout=15 + 60)
    finally:
        if ranks[1].is_running():
            ranks[1].kill()
    took = time.time() - stopped
    print(f"a stopped rank: job gone {took:.0f} s after SIGSTOP (hang_timeout 15 s)")
    assert proc.returncode != 0 and not any(p.is_running() for p in ranks.values())
    assert "Timeout (0:00:15)!" in err and "most recent call first" in err and "all_reduce" in err, err[
        -3000:
    ]
    r = _ok(_launch(tokenizer, sources, run, 2, 29660, "trainer.hang_timeout=15", steps=40))
    assert "resumed from" in r.stdout and _metrics(run)[-1]["step"] == 40
