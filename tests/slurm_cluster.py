"""A real single-node Slurm on loopback, for tests/test_slurm.py and bench/executor_latency.py.

Debian's `munged`, `slurmctld` and `slurmd` (tests/ensure_slurm.sh installs them) run as root with
their key, state, spool and logs in a temporary folder and `ProctrackType=proctrack/linuxproc`,
`TaskPlugin=task/none`. The node offers two CPUs whatever the machine has (a 2-CPU job fills it) in
two partitions: `debug` (the default) and `busy`, on the same node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def slurm_installed() -> bool:
    return all(shutil.which(tool) or Path("/usr/sbin", tool).exists() for tool in TOOLS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the test cluster: {what} did not happen within {timeout:.0f} s")


def _answers(argv: list[str], word: str) -> bool:
    try:
        return word in subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return False


@contextmanager
def single_node_slurm() -> Iterator[Path]:
    """Start the cluster; yield its slurm.conf (exported as SLURM_CONF meanwhile); stop it all."""
    temp = Path(tempfile.mkdtemp(prefix="chatops-slurm-"))
    for sub in ("state", "spool"):
        (temp / sub).mkdir()
    key = temp / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = temp / "munge.sock"
    munged = shutil.which("munged") or "/usr/sbin/munged"
    subprocess.run([munged, "-f", f"--key-file={key}", f"--socket={sock}", f"--pid-file={temp / 'munged.pid'}",
                    f"--log-file={temp / 'munged.log'}", f"--seed-file={temp / 'munged.seed'}"],
                   check=True, timeout=30)  # fmt: skip
    conf = temp / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=chatops", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={sock}", "CredType=cred/munge", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1", "MpiDefault=none", f"StateSaveLocation={temp / 'state'}",
        f"SlurmdSpoolDir={temp / 'spool'}", f"SlurmctldPidFile={temp / 'slurmctld.pid'}",
        f"SlurmdPidFile={temp / 'slurmd.pid'}", f"SlurmctldLogFile={temp / 'slurmctld.log'}",
        f"SlurmdLogFile={temp / 'slurmd.log'}", "ReturnToService=2", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none", "MinJobAge=600",
        "KillWait=5", "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "PartitionName=busy Nodes=localhost MaxTime=INFINITE State=UP",
    ]) + "\n")  # fmt: skip
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    ctld = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
    slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    daemons = [subprocess.Popen([ctld, "-D", "-i", "-f", str(conf)], **quiet)]  # type: ignore[call-overload]
    try:
        _until("slurmctld answering", lambda: _answers(["scontrol", "ping"], "UP"))
        daemons.append(subprocess.Popen([slurmd, "-D", "-N", "localhost", "-f", str(conf)], **quiet))  # type: ignore[call-overload]
        _until("the node idle", lambda: _answers(["sinfo", "-h", "-o", "%T"], "idle"))
        yield conf
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=30)
        for proc in reversed(daemons):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["pkill", "-f", f"slurmstepd.*{temp}"], capture_output=True)
        subprocess.run([munged, f"--socket={sock}", "--stop"], capture_output=True, timeout=30)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(temp, ignore_errors=True)
