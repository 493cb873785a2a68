"""Multi-node for real, on one machine: two nodes (network namespaces with their own addresses and sshd, see
`tests/cluster.py`) and the `deepspeed` launcher over a hostfile with its default pdsh launcher, as on a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import LINK, Nodes, can_make_nodes
from tests.test_pretrain import ENV, _args, _metrics, _two_ranks

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(can_make_nodes()), reason=str(can_make_nodes()))]

REPO = Path(__file__).resolve().parents[1]
COMMON = ["data.slots=4", "data.workers=1", "trainer.checkpoint_every=2", "trainer.log_sample_keys=true"]


def deepspeed_env(folder: Path) -> None:
    """`.deepspeed_env` in the launch folder: what every node's ranks need besides PYTHON* (which the launcher
    exports itself). The CPU accelerator; gloo on the nodes' link; one thread per rank."""
    (folder / ".deepspeed_env").write_text(
        f"DS_ACCELERATOR=cpu\nGLOO_SOCKET_IFNAME={LINK}\nOMP_NUM_THREADS=1\n"
    )


def hostfile(folder: Path, addresses: list[str]) -> Path:
    path = folder / "hostfile"
    path.write_text("".join(f"{a} slots=1\n" for a in addresses))
    return path


def launch_on_nodes(nodes: Nodes, folder: Path, hosts: Path, port: int, args: list[str]):
    """The launch as a user types it on the first node (README, launch/README.md): the deepspeed CLI over a
    hostfile, pdsh reaching the nodes over ssh."""
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--hostfile", str(hosts),
        "--master_addr", nodes.addresses[0],
        "--master_port", str(port),
        "--no_ssh_check",  # the check runs ssh without the test's key; pdsh below gets it
        "--no_local_rank",
        "--module", "train.pretrain",
        *args,
    ]  # fmt: skip
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO),
        "PDSH_SSH_ARGS_APPEND": nodes.ssh_options,
    }
    return nodes.run(0, cmd, check=False, cwd=folder, env=env, timeout=600)


def _keys_by_step(run: Path) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for f in sorted((run / "sample_keys").glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            steps.setdefault(rec["step"], []).extend(rec["keys"])
    return {s: sorted(k) for s, k in steps.items()}


def _ok(r):
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def test_two_nodes_over_a_hostfile_equal_one_node_and_resume_on_one(tokenizer, sources, tmp_path):
    """Two nodes, one CPU rank each, launched over a hostfile by pdsh: the losses equal the one-node 2-rank run's
    within 1e-6 and every step draws the same samples; W&B writes offline on rank 0's node only. Then one node is
    gone: the run resumes from its checkpoint on the other through a one-line hostfile (world size 2 -> 1), as
    the one-node run does."""
    ref = tmp_path / "ref"
    first = [*_args(tokenizer, sources, ref, 4), *COMMON, "wandb.mode=offline"]
    _ok(subprocess.run(_two_ranks(29671, first), env=ENV, capture_output=True, text=True, timeout=600))
    resumed = [*_args(tokenizer, sources, ref, 6), *COMMON]
    cmd = [sys.executable, "-m", "train.pretrain", *resumed]
    _ok(subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600))

    folder = tmp_path / "launch"
    folder.mkdir()
    deepspeed_env(folder)
    run = tmp_path / "run"
    with Nodes(tmp_path, 2) as nodes:
        both = hostfile(folder, nodes.addresses)
        r = _ok(
            launch_on_nodes(
                nodes,
                folder,
                both,
                29672,
                [*_args(tokenizer, sources, run, 4), *COMMON, "wandb.mode=offline"],
            )
        )
        assert f"{nodes.addresses[1]}: " in r.stdout + r.stderr  # pdsh prefixes the second node's output
        first_part = _metrics(run)
        assert [m["step"] for m in first_part] == [1, 2, 3, 4]
        assert list((run / "wandb").glob("offline-run-*")), "rank 0 writes its W&B run offline"
        nodes.stop(1)
        alone = folder / "hostfile-one"
        alone.write_text(f"{nodes.addresses[0]} slots=1\n")
        r = _ok(launch_on_nodes(nodes, folder, alone, 29673, [*_args(tokenizer, sources, run, 6), *COMMON]))

    mine = {m["step"]: m["loss"] for m in _metrics(run)}
    theirs = {m["step"]: m["loss"] for m in _metrics(ref)}
    assert sorted(mine) == sorted(theirs) == [1, 2, 3, 4, 5, 6]
    diff = max(abs(mine[s] - theirs[s]) for s in mine)
    print(f"two nodes vs one node, 6 steps (2 -> 1 rank at step 4): max |loss difference| = {diff:.2e}")
    assert diff < 1e-6, (mine, theirs)
    keys, ref_keys = _keys_by_step(run), _keys_by_step(ref)
    assert keys == ref_keys and len(keys[1]) == 8
