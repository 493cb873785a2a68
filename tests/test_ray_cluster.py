"""A Ray cluster of two nodes started here (`ray start --head` on one test node, `ray start --address` on the other;
`tests/cluster.py`): `executor=ray` builds the same shards as the local executor, and a worker node killed in the
middle of a build loses no shard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster import Nodes, can_make_nodes, pdfs_built_locally
from tests.test_build_pdf import shard_members

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(can_make_nodes()), reason=str(can_make_nodes()))]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
BUILD = ["docs_per_shard=1", "filters.languages=all", "dedup=false"]


def _env(temp: str) -> dict[str, str]:
    """A node's environment. One machine, two nodes: each node's Ray keeps its session files in a folder of its
    own, as on separate disks; HOME is that folder too, so that an auth token another Ray left in ~/.ray on this
    machine does not turn token authentication on for one node and not the other."""
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
            "RAY_TMPDIR": temp, "HOME": temp}  # fmt: skip


def _build(nodes: Nodes, env: dict, docs: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [
        sys.executable,
        "-m",
        "data_pipeline.build",
        "source=pdf",
        f"input={docs}",
        f"output={out}",
        *BUILD,
        *extra,
    ]
    if wait:
        return nodes.run(0, cmd, check=False, env=env, cwd=REPO, timeout=600)
    return subprocess.Popen(
        ["ip", "netns", "exec", nodes.names[0], *cmd],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _shards(out: Path) -> dict[str, dict[str, bytes]]:
    return {p.name: shard_members(p) for p in sorted(out.glob("shard-*.tar"))}  # images by their pixels


@pytest.fixture
def temps():
    """A short temporary folder per node (Ray's socket paths must stay under 108 bytes)."""
    folders = [tempfile.mkdtemp(prefix="ray", dir="/tmp") for _ in range(2)]
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_two_node_ray_cluster_builds_what_local_builds_and_a_killed_node_loses_no_shard(tmp_path, temps):
    """`ray start --head` on node 0, `ray start --address` on node 1, one CPU each: `executor=ray` over the
    cluster writes the local executor's shards byte for byte; in a second build, node 1 is killed (every process
    of it) once the first shard is written, and the build still finishes every shard, equal to the local ones."""
    docs, local = pdfs_built_locally(tmp_path, 8, *BUILD)
    env = _env(temps[0])
    with Nodes(tmp_path, 2) as nodes:
        head = f"{nodes.addresses[0]}:6379"
        common = ["--num-cpus=1", "--disable-usage-stats"]
        r = nodes.run(0, [RAY, "start", "--head", f"--node-ip-address={nodes.addresses[0]}", "--port=6379",
                          f"--temp-dir={temps[0]}", "--include-dashboard=false", *common], check=False, env=env)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        r = nodes.run(1, [RAY, "start", f"--address={head}", f"--node-ip-address={nodes.addresses[1]}", *common],
                      check=False, env=_env(temps[1]))  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

        whole = tmp_path / "ray-build"
        r = _build(nodes, env, docs, whole, "executor=ray", f"ray.address={head}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert _shards(whole) == _shards(local) and len(_shards(local)) == 8

        # A node dies mid-build: every process of node 1 killed once the first shards are written.
        killed = tmp_path / "ray-killed"
        proc = _build(nodes, env, docs, killed, "executor=ray", f"ray.address={head}", wait=False)
        deadline = time.monotonic() + 300
        while not list(killed.glob("shard-*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        done_before = len(list(killed.glob("shard-*.json")))
        nodes.kill_all(1)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    print(f"Ray: node 1 killed after {done_before} of 8 shards; the build finished on node 0")
    assert done_before < 8 and _shards(killed) == _shards(local)
