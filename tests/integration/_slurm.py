"""A private one-node SLURM cluster for the tests: munged, slurmctld and slurmd on this machine, every file
(configuration, state, spool, logs, munge key and socket) in one folder, on free ports, without accounting
(``sacct`` fails, as on many small clusters).

Needs Debian's ``slurm-wlm`` (slurmctld, slurmd, slurm-client) and ``munge`` packages and root (slurmd runs jobs
as their user). The client commands (sbatch, squeue, scancel, and submitit, which calls them) find the cluster
through ``SLURM_CONF``: :meth:`SlurmCluster.env`.

    cluster = SlurmCluster(tmp_path / "slurm").start()
    try:
        subprocess.run(["sinfo"], env={**os.environ, **cluster.env()})
    finally:
        cluster.stop()
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def missing() -> str | None:
    """Why no cluster can start here (None when it can)."""
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return (f"SLURM / munge binaries not found ({', '.join(absent)}); install Debian's slurm-wlm and munge "
                "packages (.ci/run does)")
    if os.geteuid() != 0:
        return "a private SLURM cluster needs root (slurmd runs jobs as their user)"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


CONF = """\
ClusterName=vitscope-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root``; :meth:`start` waits until the node takes jobs."""

    def __init__(self, root: str | Path, cpus: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.cpus = int(cpus or os.cpu_count() or 1)
        self.node = f"vsnode{os.getpid()}"
        self.procs: list[subprocess.Popen] = []

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _cmd(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([_which(args[0]), *args[1:]], capture_output=True, text=True, check=check,
                              timeout=timeout, env={**os.environ, **self.env()})

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                out += [f"--- {name}", *p.read_text(errors="replace").splitlines()[-n:]]
        return "\n".join(out)

    def start(self, timeout: float = 60) -> SlurmCluster:
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key, sock = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        self._cmd("mungekey", "--create", f"--keyfile={key}", "--force")
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(CONF.format(host=host, ctld_port=ctld_port, slurmd_port=slurmd_port, root=self.root,
                                         munge_socket=sock, node=self.node, cpus=self.cpus))
        devnull = subprocess.DEVNULL
        self.procs.append(subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}",
             f"--log-file={self.root / 'munged.log'}"], stdout=devnull, stderr=devnull, start_new_session=True))
        self._wait(lambda: sock.exists(), timeout, "munged did not create its socket")
        env = {**os.environ, **self.env()}
        self.procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], env=env,
                                           stdout=devnull, stderr=devnull, start_new_session=True))
        self.procs.append(subprocess.Popen([_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)], env=env,
                                           stdout=devnull, stderr=devnull, start_new_session=True))
        self._wait(self._node_idle, timeout, "the node never became idle")
        return self

    def _node_idle(self) -> bool:
        r = self._cmd("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
        return r.returncode == 0 and r.stdout.strip().startswith("idle")

    def _wait(self, ok, timeout: float, what: str) -> None:
        t0 = time.time()
        while not ok():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.time() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{what} ({'exited: ' + ', '.join(dead) if dead else f'{timeout:.0f} s'})\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, stop the daemons (slurmd, slurmctld, munged) and wait for them."""
        if any(p.poll() is None for p in self.procs[1:]):
            self._cmd("scancel", "--full", f"--nodelist={self.node}", check=False, timeout=10)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
