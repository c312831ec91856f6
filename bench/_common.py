"""Helpers shared by the benchmarks: the test cluster's queue and accounting, waiting for a
quiet cluster between phases, machine facts and number formatting.

Both ``bench/submit_throughput.py`` and ``bench/ssh_submit.py`` import these (run as scripts,
``bench/`` is on ``sys.path``).
"""

from __future__ import annotations

import cProfile
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the project is normally installed editable; be safe anyway
    sys.path.insert(0, str(REPO))

LAB = Path(os.environ.get("AKB_LAB", "/var/tmp/akb-lab"))


def slurm_env(conf: str) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": conf}


def sh(argv: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return res.stdout if res.returncode == 0 else ""


def queued_ids(env: dict[str, str]) -> set[str]:
    """This user's jobs still in the queue (pending, running, completing ...)."""
    out = sh(["squeue", "--me", "--noheader", "--format=%i"], env)
    return {line.strip() for line in out.splitlines() if line.strip()}


def wait_queue_empty(env: dict[str, str], timeout: float, label: str) -> int:
    """Wait for ``squeue --me`` to be empty; the number of jobs still there at the timeout."""
    deadline = time.monotonic() + timeout
    ids = queued_ids(env)
    while ids and time.monotonic() < deadline:
        time.sleep(0.5)
        ids = queued_ids(env)
    if ids:
        print(f"  ! {label}: {len(ids)} job(s) of this user still queued after {timeout:g} s "
              f"(not ours, e.g. a test run: {', '.join(sorted(ids)[:5])}); going on",
              flush=True)
    return len(ids)


def dbd_queue(env: dict[str, str]) -> int | None:
    """slurmctld's backlog of accounting messages to slurmdbd (``sdiag``), None if unknown."""
    for line in sh(["sdiag"], env).splitlines():
        if line.strip().startswith("DBD Agent queue size:"):
            return int(line.split(":", 1)[1])
    return None


def settle(env: dict[str, str], timeout: float, label: str, seconds: float) -> int:
    """Empty queue, accounting caught up, then a short pause: every phase starts alike."""
    left = wait_queue_empty(env, timeout, label)
    deadline = time.monotonic() + 30
    while (dbd_queue(env) or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(seconds)
    return left


def wait_gone(ids: set[str], env: dict[str, str], t0: float, poll: float,
              timeout: float) -> float | None:
    """Seconds from ``t0`` until none of ``ids`` is in squeue any more (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ids & queued_ids(env):
            return time.perf_counter() - t0
        time.sleep(poll)
    return None


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def workflow_yaml(n: int) -> str:
    acts = "".join(f'    - name: a{i}\n      run: "true"\n' for i in range(n))
    return f"name: bench\nspec:\n  activities:\n{acts}"


def machine_facts(env: dict[str, str], conf: str) -> list[str]:
    version = sh(["sbatch", "--version"], env).strip() or "sbatch not answering"
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nodes = sh(["sinfo", "--noheader", "--format=%N cpus=%c state=%T"], env).strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "bridge",
                            "runtimes"], capture_output=True, text=True, check=False).stdout
    code = f"{head or '?'}" + (f" + {len(dirty.splitlines())} uncommitted file(s) in "
                               "bridge/ runtimes/" if dirty.strip() else "")
    return [
        f"code             {code}",
        f"nproc            {os.cpu_count()} ({cpu or platform.machine()})",
        f"slurm            {version} (SLURM_CONF={conf}; node: {nodes})",
        f"python           {platform.python_version()} on {platform.platform()}",
        f"load average     {load}",
    ]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def profile_text(prof: cProfile.Profile | None, lines: int) -> str:
    """The top ``lines`` functions by cumulative time, or "" without a profile."""
    if prof is None:
        return ""
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(lines)
    return buf.getvalue()
