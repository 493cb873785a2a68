"""A Slurm cluster started here (slurmctld and a slurmd per node, munge; `tests/cluster.py`) runs the launch scripts
as a user submits them: `launch/slurm_train.sh` (training, the watchdog's exit, requeue and resume; a config error
not requeued) and `launch/slurm_build.sh` (an array build and its finalize step)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.cluster import LINK, Nodes, Slurm, can_run_slurm, pdfs_built_locally
from tests.test_build_pdf import shard_members
from tests.test_pretrain import _args, _metrics

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(can_run_slurm()), reason=str(can_run_slurm()))]

REPO = Path(__file__).resolve().parents[1]
# What a job of CPU nodes needs (the submitting environment reaches the job: sbatch's default --export=ALL).
JOB_ENV = {
    "DS_ACCELERATOR": "cpu",
    "GLOO_SOCKET_IFNAME": LINK,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO),
}
CPU_NODES = [
    "--gpus-per-node=0",
    "--cpus-per-task=1",
    "--mem=1G",
]  # over the script's #SBATCH lines for GPU nodes


def _submit(slurm: Slurm, *args: str, env: dict | None = None) -> str:
    r = slurm.run(["sbatch", "--parsable", *args], env={**JOB_ENV, **(env or {})}, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _rank_process(rank: int) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "train.pretrain" in " ".join(p.info["cmdline"] or []) and p.environ().get("RANK") == str(rank):
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_slurm_trains_requeues_a_hung_job_that_resumes_and_does_not_requeue_a_config_error(
    tokenizer, sources, tmp_path
):
    """`sbatch --nodes=2 launch/slurm_train.sh`: one rank per node. Rank 1 stopped with SIGSTOP after a
    checkpoint: rank 0's watchdog ends the job (exit 1), the script requeues it, and the requeued job resumes from
    `latest` and trains to the end with every step logged once more after the restart point. A config error
    (exit 2) ends its job without a requeue."""
    run = tmp_path / "run"
    args = [*_args(tokenizer, sources, run, 16), "data.slots=4", "trainer.hang_timeout=15"]
    with Nodes(tmp_path, 2) as nodes, Slurm(nodes) as slurm:
        out = tmp_path / "train-%j.out"
        job = _submit(
            slurm, "--nodes=2", *CPU_NODES, f"--output={out}", "launch/slurm_train.sh", *args,
            env={"LITERATE_RANKS_PER_NODE": "1", "MASTER_PORT": "29681"},
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "latest").exists():
            state = slurm.job(job).get("JobState")
            log = Path(str(out).replace("%j", job))
            assert time.monotonic() < deadline and state in ("PENDING", "RUNNING", "CONFIGURING"), (
                log.read_text()[-3000:] if log.exists() else slurm.job(job)
            )
            time.sleep(0.2)
        rank1 = _rank_process(1)
        assert rank1 is not None, "rank 1 is not running"
        rank1.send_signal(signal.SIGSTOP)
        stopped_at = max(m["step"] for m in _metrics(run))
        # Slurm holds a requeued job back for about two minutes (its BeginTime); start it now instead.
        requeued = slurm.wait(job, timeout=300, until=("PENDING", "COMPLETED", "FAILED", "CANCELLED"))
        if requeued["JobState"] == "PENDING":
            slurm.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
        final = slurm.wait(job, timeout=600, until=("COMPLETED", "FAILED", "CANCELLED"))
        log = Path(str(out).replace("%j", job)).read_text()
        if final["JobState"] != "COMPLETED":  # the whole record and log, in the failure's captured output
            print(json.dumps(final, indent=1, default=str), log, sep="\n")
        assert final["JobState"] == "COMPLETED" and int(final["Restarts"]) >= 1, (final, log[-3000:])
        assert "requeueing job" in log and "Timeout (0:00:15)!" in log, log[-3000:]

        bad = _submit(
            slurm, "--nodes=1", *CPU_NODES, f"--output={tmp_path / 'bad-%j.out'}", "launch/slurm_train.sh",
            *_args(tokenizer, sources, tmp_path / "bad", 4), "trainer.precision=fp16",
        )  # fmt: skip
        refused = slurm.wait(bad, timeout=300)
    steps = [m["step"] for m in _metrics(run)]
    assert steps[-1] == 16 and set(steps) == set(range(1, 17)), steps
    print(
        f"Slurm: rank 1 stopped at step {stopped_at}; requeued {final['Restarts']} time(s); trained to step 16"
    )
    assert refused["JobState"] == "FAILED" and refused["ExitCode"].startswith("2:"), refused
    assert int(refused["Restarts"]) == 0


def _manifest_and_shards(out: Path) -> dict:
    files = {p.name: shard_members(p) for p in sorted(out.glob("shard-*.tar"))}  # images by their pixels
    manifest = json.loads((out / "manifest.json").read_text())
    files["manifest.json"] = json.dumps(manifest.get("shardlist"), sort_keys=True).encode()
    return files


def test_slurm_array_build_and_its_finalize_step_equal_the_local_build(tmp_path):
    """`launch/slurm_build.sh` as an array of 2 tasks over 2 nodes, then its finalize job (manifest and
    near-duplicate pass) after the array: the shards and the manifest's shard list equal a local build's."""
    docs, local = pdfs_built_locally(tmp_path, 4, "filters.languages=all", "docs_per_shard=1")
    out = tmp_path / "slurm"
    build_env = {"SOURCE": "pdf", "INPUT": str(docs), "OUTPUT": str(out), "ARRAY": "2", "WORKERS": "1"}
    extra = ["filters.languages=all", "docs_per_shard=1"]
    with Nodes(tmp_path, 2) as nodes, Slurm(nodes) as slurm:
        logs = f"--output={tmp_path}/build-%A_%a.out"
        array = _submit(
            slurm, "--array=0-1", *CPU_NODES, logs, "launch/slurm_build.sh", *extra, env=build_env
        )
        finalize = _submit(
            slurm, f"--dependency=afterok:{array}", *CPU_NODES, logs, "launch/slurm_build.sh", *extra,
            env={**build_env, "FINALIZE": "1"},
        )  # fmt: skip
        done = slurm.wait(finalize, timeout=600)
        tasks = [slurm.job(f"{array}_{i}") for i in range(2)]
    assert done["JobState"] == "COMPLETED", (
        done,
        [p.read_text()[-2000:] for p in tmp_path.glob("build-*.out")],
    )
    assert {t.get("BatchHost") for t in tasks} <= {"node0", "node1"}
    ours, theirs = _manifest_and_shards(out), _manifest_and_shards(local)
    assert sorted(ours) == sorted(theirs) and len(ours) > 2
    assert all(ours[k] == theirs[k] for k in ours), [k for k in ours if ours[k] != theirs[k]]
    os.sync()
