"""Nodes on one machine for the multi-node tests: each a Linux network namespace with an address of its own on a
shared link and Debian's `sshd` inside it, reached with keys made for the test. The nodes share the machine's
file system, as the nodes of a cluster share a parallel file system: the same `.venv`, code and run folder.

    with Nodes(tmp_path, 2) as nodes:
        nodes.addresses                 # ["10.77.K.1", "10.77.K.2"]
        nodes.run(0, ["hostname", "-I"])  # a command on node 0
        nodes.ssh_options               # what ssh (and pdsh, through PDSH_SSH_ARGS_APPEND) needs to log in

Every node's link is named `lit0`, so one `GLOO_SOCKET_IFNAME=lit0` serves all of them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

LINK = "lit0"


def can_make_nodes() -> str | None:
    """None when this machine can make nodes, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "sshd", "ssh", "ssh-keygen", "pdsh"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (make apt installs openssh-server, openssh-client and pdsh)"
    return None


def pdfs_built_locally(folder: Path, count: int, *overrides: str) -> tuple[Path, Path]:
    """`count` made-up PDFs in `folder/pdfs` and their build by the local executor in `folder/local` (one worker):
    the reference a cluster's build must equal. Returns (documents, build)."""
    from data_pipeline.demo_corpus import make_pdf

    docs, local = folder / "pdfs", folder / "local"
    docs.mkdir()
    for i in range(count):
        make_pdf(docs / f"doc{i:02d}.pdf", seed=i)
    build = [sys.executable, "-m", "data_pipeline.build", "source=pdf", f"input={docs}", f"output={local}"]
    r = subprocess.run([*build, "workers=1", *overrides], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the local build failed: {r.stderr[-2000:]}")
    return docs, local


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Nodes:
    def __init__(self, workdir: Path, count: int = 2):
        self.dir = Path(workdir) / "nodes"
        self.count = count
        tag = f"{os.getpid() % 10000}-{random.randrange(1000)}"
        self.names = [f"lit{tag}-{i}" for i in range(count)]
        subnet = random.randrange(1, 250)
        self.addresses = [f"10.77.{subnet}.{i + 1}" for i in range(count)]
        self._bridge = f"litbr{tag}"[:15]

    def __enter__(self) -> Nodes:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._network()
            self._sshd()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self) -> None:
        # A bridge in the test's own namespace joins the nodes' links, as a switch joins a cluster's hosts.
        root = f"{self.names[0]}-sw"
        _sh("ip", "netns", "add", root)
        _sh("ip", "-n", root, "link", "add", self._bridge, "type", "bridge")
        _sh("ip", "-n", root, "link", "set", self._bridge, "up")
        for i, (name, address) in enumerate(zip(self.names, self.addresses, strict=True)):
            _sh("ip", "netns", "add", name)
            port = f"litp{i}"
            _sh("ip", "link", "add", LINK, "netns", name, "type", "veth", "peer", "name", port, "netns", root)
            _sh("ip", "-n", root, "link", "set", port, "master", self._bridge)
            _sh("ip", "-n", root, "link", "set", port, "up")
            _sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", LINK)
            _sh("ip", "-n", name, "link", "set", LINK, "up")
            _sh("ip", "-n", name, "link", "set", "lo", "up")
        self._switch = root

    def _sshd(self) -> None:
        d = self.dir
        for key in ("host_key", "user_key"):
            if not (d / key).exists():
                _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key))
        (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation folder
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        for i, name in enumerate(self.names):
            config = d / f"sshd_{i}.conf"
            config.write_text(
                f"Port 22\nListenAddress {self.addresses[i]}\nHostKey {d / 'host_key'}\n"
                f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
                f"PidFile {d / f'sshd_{i}.pid'}\n"
            )
            _sh("ip", "netns", "exec", name, sshd, "-f", str(config), "-E", str(d / f"sshd_{i}.log"))
        deadline = time.monotonic() + 20
        for i in range(self.count):
            while self.run(0, ["true"], via_ssh=i, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd on node {i} did not answer: {(d / f'sshd_{i}.log').read_text()}"
                    )
                time.sleep(0.2)

    @property
    def ssh_options(self) -> str:
        """ssh options for the test's key and the nodes' fresh host key (pdsh: `PDSH_SSH_ARGS_APPEND`)."""
        return (
            f"-i {self.dir / 'user_key'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o LogLevel=ERROR -o BatchMode=yes"
        )

    def run(
        self, node: int, cmd: list[str], via_ssh: int | None = None, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess:
        """`cmd` in node `node`'s namespace; with `via_ssh=j`, run from there on node j over ssh."""
        if via_ssh is not None:
            cmd = ["ssh", *self.ssh_options.split(), self.addresses[via_ssh], " ".join(cmd)]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.names[node], *cmd], check=check, **kwargs)

    def stop(self, node: int) -> None:
        """Take node `node` off the network (its sshd stopped, its link down): a node that is gone."""
        pid = self.dir / f"sshd_{node}.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        subprocess.run(["ip", "-n", self.names[node], "link", "set", LINK, "down"], capture_output=True)

    def kill_all(self, node: int) -> None:
        """SIGKILL every process of node `node` (its sshd included): a node that dies."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.names[node]], capture_output=True, text=True
        ).stdout
        for p in pids.split():
            subprocess.run(["kill", "-9", p], capture_output=True)

    def __exit__(self, *exc) -> None:
        for i in range(self.count):
            pid = self.dir / f"sshd_{i}.pid"
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        for name in [*self.names, f"{self.names[0]}-sw"]:
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True
            ).stdout.split()
            for p in pids:  # anything a test left running on a node
                subprocess.run(["kill", "-9", p], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def can_run_slurm() -> str | None:
    """None when a Slurm cluster can be started here, else the reason it cannot."""
    reason = can_make_nodes()
    if reason:
        return reason
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "unshare"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (make apt installs slurm-wlm and munge)"
    return None


class Slurm:
    """A Slurm cluster on `Nodes`: munged (one, its socket on the shared file system), slurmctld on node 0 and a
    slurmd on every node, each daemon with the node's host name (`node0`, `node1`, ...) in a UTS namespace of its
    own. Commands (`sbatch`, `squeue`, `scontrol`) run on node 0 with `SLURM_CONF` set: `slurm.run([...])`."""

    def __init__(self, nodes: Nodes, cpus: int = 2):
        self.nodes = nodes
        self.dir = nodes.dir / "slurm"
        self.cpus = cpus
        self.hosts = [f"node{i}" for i in range(nodes.count)]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}

    def __enter__(self) -> Slurm:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge.sock"
        _sh(
            "munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
            f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}",
        )  # fmt: skip
        nodes = "".join(
            f"NodeName={h} NodeAddr={a} CPUs={self.cpus} RealMemory=4000 State=UNKNOWN\n"
            for h, a in zip(self.hosts, self.nodes.addresses, strict=True)
        )
        (d / "slurm.conf").write_text(
            f"ClusterName=literate\nSlurmctldHost={self.hosts[0]}({self.nodes.addresses[0]})\n"
            f"AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={d / 'state'}\nSlurmdSpoolDir={d}/spool.%n\nSlurmctldPidFile={d}/slurmctld.pid\n"
            f"SlurmdPidFile={d}/slurmd.%n.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.%n.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_CPU\nJobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\nMpiDefault=none\nReturnToService=2\nJobRequeue=1\n"
            "MinJobAge=3600\nKillWait=5\n"
            f"{nodes}PartitionName=main Nodes={','.join(self.hosts)} Default=YES MaxTime=INFINITE State=UP\n"
        )
        # The machine's cgroups are v1 under a tmpfs, which slurmd's autodetection does not recognise.
        (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
        try:
            self._daemon(0, "slurmctld -i")
            for i, host in enumerate(self.hosts):
                self._daemon(i, f"slurmd -N {host}")
            deadline = time.monotonic() + 30
            while f"idle {len(self.hosts)}" not in self.run(["sinfo", "-h", "-o", "%T %D"]).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Slurm nodes did not come up: {self.run(['sinfo']).stdout}")
                time.sleep(0.5)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _daemon(self, node: int, cmd: str) -> None:
        host = self.hosts[node]
        r = self.nodes.run(
            node,
            ["unshare", "--uts", "sh", "-c", f"hostname {host} && exec {cmd}"],
            check=False,
            env=self.env,
        )
        if r.returncode != 0:
            raise RuntimeError(f"{cmd} on {host} failed: {r.stderr[-2000:]}")

    def run(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        """A Slurm command on node 0 (`env` adds to the cluster's environment)."""
        env = {**self.env, **kwargs.pop("env", {})}
        return self.nodes.run(0, cmd, check=False, env=env, **kwargs)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", job_id, "-o"]).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait(
        self, job_id: str, timeout: float = 600, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    ) -> dict:
        """The job's record once its state is one of `until`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in until:
                return job
            if job.get("Reason") == "DependencyNeverSatisfied":
                raise RuntimeError(f"job {job_id} waits on a job that failed: {job}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.get('JobState')} after {timeout} s")
            time.sleep(1)

    def __exit__(self, *exc) -> None:
        for pid in self.dir.glob("*.pid"):
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        time.sleep(0.5)
