"""The ``local`` process runtime: each job script runs as a process on this machine.

The embedded default for a first try: no Slurm, no container. The same rendered script runs
(its ``#SBATCH`` lines are comments to bash); stdout/stderr go to ``local.out``/``local.err``
and the script's EXIT trap leaves the same exit-code marker a Slurm job leaves. The script's
``#SBATCH --time`` is enforced as Slurm does it: past the limit the job's process group gets
SIGTERM, :data:`KILL_WAIT_S` later SIGKILL, and the job ends TIMEOUT (checked at each poll, so
only while a bridge follows the job). A cancel is level-triggered the same way: SIGTERM to the
job's process group at once, again every :data:`CANCEL_RESEND_S` while the job lives, and
SIGKILL :data:`KILL_WAIT_S` after the cancel (see :meth:`ProcessRuntime.cancel` for the SIGTERM
bash can lose). Memory and CPU limits and the temporary disk request
(``--tmp``, Peak's ``resources.storage``) are not enforced: the job uses this machine's CPUs,
memory and disk as they are; ``max_running`` caps how many jobs run at once (the runner asks).

A job's resource use is its process's ``wait4`` rusage (CPU time and peak RSS of the job and
the descendants it waited for), taken when this runtime reaps its own child; a job adopted
after a restart is not our child, so it only gets its wall time (from its marker). The marker
is written by the EXIT trap just before bash exits: a poll that sees it first waits for the
process (see :meth:`ProcessRuntime._reap_soon`), or the rusage would be lost.

Exactly once, whatever instant the bridge dies at:

- Before the process is forked, the bridge takes an exclusive ``flock`` on
  ``<jobdir>/local.lock`` and hands that open file to the child: the lock is held from the
  fork on, by the job and whatever it starts, until all of them have exited — even when the
  bridge is killed a microsecond after the fork. "The lock is held" is how the bridge knows a
  job is alive, also after a restart (no pid that might be reused, no zombie to misread).
- The child writes ``local.pid`` before any of the job's own code runs. So "the job's code
  ran" implies "``local.pid`` exists": :meth:`ProcessRuntime.find` adopts an attempt exactly
  when its pid file exists, and a spawn that died before that point is safely spawned again.
- Liveness is checked *before* the marker is read: a job that writes its marker and exits
  between the two reads is seen as ended with its marker, never as dead without one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from runtimes.base import (
    JOB_FILE_MAX,
    JobRequest,
    JobState,
    JobStatus,
    Runtime,
    Submitted,
    TrackedJob,
    write_job_files,
)
from runtimes.config import ClusterConfig
from runtimes.jobdir import SCRIPT_FILE, Marker, marker_path, parse_marker
from runtimes.transport import LocalTransport

PID_FILE = "local.pid"
LOCK_FILE = "local.lock"
TIMEOUT_FILE = "local.timeout"
"""Written when the job is signalled for its time limit: its end is then a TIMEOUT (also
for a bridge that restarts in between)."""
KILL_WAIT_S = 10.0
"""Seconds between the SIGTERM at the time limit or a cancel and the SIGKILL (Slurm's
``KillWait``)."""
CANCEL_RESEND_S = 1.0
"""A cancelled job still alive (no exit-code marker) gets SIGTERM again this often, at a poll."""
_TIME_LINE = re.compile(r"^#SBATCH --time=(\S+)[ \t]*$", re.MULTILINE)
_START = 'printf %s "$$" > local.pid && exec /bin/bash "$1"'
"""The child's first act: record its pid (one short write: a reader sees all or nothing of
it), then become the job script."""
REAP_WAIT_S = 0.05
"""How long a poll waits in all for jobs' processes to exit once their exit-code markers are
written (bash exits right after its EXIT trap writes the marker)."""
REAP_GRACE_S = 5.0
"""A job's process still there this long after its marker's end is let go (no rusage)."""
PID_WAIT_S = 5.0
"""How long :meth:`find` waits for a live job's pid file (written at the child's start)."""


class ProcessRuntime(Runtime):
    """Jobs as local processes; job ids are ``local-<pid>``."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.name = cluster.name
        self.calls: Counter[str] = Counter()
        self.transport: LocalTransport = LocalTransport()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._rusage: dict[str, tuple[int, float]] = {}
        """Job id → (peak RSS in KiB — Linux's ``ru_maxrss`` unit —, CPU seconds) of a
        reaped child."""
        self._started: dict[str, datetime] = {}
        self._cancelled: dict[str, float] = {}
        """Job id → when it was first cancelled (monotonic)."""
        self._termed: dict[str, float] = {}
        """Job id → when its process group last got SIGTERM for a cancel (monotonic)."""
        self._limits: dict[str, int | None] = {}
        """Job id → its ``--time`` in seconds (``None``: no limit), read once per job."""

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        out = []
        for req in requests:
            try:
                write_job_files(self.transport, [req], SCRIPT_FILE)
                out.append(Submitted(req.token, self._spawn(req.jobdir)))
            except OSError as exc:
                out.append(Submitted(req.token, None, f"cannot start job: {exc}"))
        return out

    def _spawn(self, jobdir: str) -> str:
        self.calls["spawn"] += 1
        lock = os.open(f"{jobdir}/{LOCK_FILE}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live job holds it: never twice
            with open(f"{jobdir}/local.out", "wb") as out, \
                    open(f"{jobdir}/local.err", "wb") as err:
                proc = subprocess.Popen(
                    ["/bin/bash", "-c", _START, "akb-job", f"{jobdir}/{SCRIPT_FILE}"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=jobdir,
                    start_new_session=True, pass_fds=(lock,),
                )
        finally:
            os.close(lock)
        job_id = f"local-{proc.pid}"
        self._children[job_id] = proc
        self._started[job_id] = datetime.now(UTC)
        return job_id

    def poll(self, jobs: Sequence[TrackedJob]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        live = [j for j in jobs if j.job_id]
        alive = {str(j.job_id): self._alive(j) for j in live}  # before reading the markers
        markers = self.transport.read_files(marker_path(j.jobdir) for j in live)
        reap_until = time.monotonic() + REAP_WAIT_S  # for all the jobs of this poll
        for job in live:
            job_id = str(job.job_id)
            raw = markers.get(marker_path(job.jobdir))
            marker = parse_marker(raw) if raw else None
            if marker is not None and not marker.belongs_to(job.token):
                marker = None
            if marker is None and alive[job_id]:
                if job_id in self._cancelled:
                    self._enforce_cancel(job_id)
                else:
                    self._enforce_time_limit(job)
                out[job_id] = JobStatus(JobState.RUNNING, started_at=self._started.get(job_id))
                continue
            proc = self._children.get(job_id)
            if proc is not None and marker is not None \
                    and not self._reap_soon(job_id, proc, marker, reap_until):
                out[job_id] = JobStatus(JobState.RUNNING, started_at=self._started.get(job_id))
                continue  # its marker is written, its process not yet gone: its rusage next poll
            timed_out = os.path.exists(f"{job.jobdir}/{TIMEOUT_FILE}")
            self._limits.pop(job_id, None)
            self._children.pop(job_id, None)  # reaped above (by _alive or _reap_soon)
            rss, cpu = self._rusage.pop(job_id, (None, None))
            if marker is None:
                code = proc.returncode if proc else None
                started = self._started.get(job_id)
                reason: str | None
                if timed_out and job_id not in self._cancelled:  # SIGKILLed at the limit
                    state, reason = JobState.TIMEOUT, "time limit reached"
                    code = 128 - code if code is not None and code < 0 else code
                elif code is not None and code < 0 or job_id in self._cancelled:
                    sig = -code if code is not None and code < 0 else signal.SIGTERM
                    state, code, reason = JobState.CANCELLED, 128 + sig, f"signal {sig}"
                else:
                    state, reason = JobState.FAILED, "process ended without writing its exit code"
                out[job_id] = JobStatus(state, code, reason, started, max_rss_kb=rss,
                                        elapsed_s=_since(started), cpu_s=cpu)
                continue
            state = JobState.COMPLETED if marker.exit_code == 0 else JobState.FAILED
            reason = None
            if job_id in self._cancelled and marker.exit_code != 0:
                state = JobState.CANCELLED
            elif timed_out and marker.exit_code != 0:
                state, reason = JobState.TIMEOUT, "time limit reached"
            elapsed = (marker.end - marker.start).total_seconds() \
                if marker.start and marker.end else None
            out[job_id] = JobStatus(state, marker.exit_code, reason, marker.start, marker.end,
                                    max_rss_kb=rss, elapsed_s=elapsed, cpu_s=cpu)
        return out

    def _reap(self, job_id: str, proc: subprocess.Popen[bytes]) -> bool:
        """Reap our child if it has exited (keeping its rusage); whether it has."""
        if proc.returncode is not None:
            return True
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: no rusage
            return proc.poll() is not None
        if pid == 0:
            return False
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._rusage[job_id] = (usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
        return True

    def _reap_soon(self, job_id: str, proc: subprocess.Popen[bytes], marker: Marker,
                   deadline: float) -> bool:
        """Reap a child whose marker is written; whether it is reaped or given up on.

        The EXIT trap writes the marker just before bash exits: the process is waited for
        until ``deadline`` (a poll waits :data:`REAP_WAIT_S` at most in all). A child still
        there :data:`REAP_GRACE_S` after its marker's end is let go without its rusage
        (Python reaps it later)."""
        while not self._reap(job_id, proc):
            if time.monotonic() >= deadline:
                end = marker.end.timestamp() if marker.end else 0.0
                return time.time() - end > REAP_GRACE_S
            time.sleep(0.002)
        return True

    def _enforce_time_limit(self, job: TrackedJob) -> None:
        """SIGTERM a live job past its ``--time``, SIGKILL it :data:`KILL_WAIT_S` later."""
        job_id = str(job.job_id)
        if job_id not in self._limits:
            try:
                script = Path(f"{job.jobdir}/{SCRIPT_FILE}").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                script = ""
            m = _TIME_LINE.search(script)
            self._limits[job_id] = slurm_time_s(m.group(1)) if m else None
        limit = self._limits[job_id]
        if limit is None:
            return
        started = self._started.get(job_id)
        start = started.timestamp() if started else _mtime(f"{job.jobdir}/{PID_FILE}")
        if start is None:
            return
        over = time.time() - start - limit
        if over < 0:
            return
        marker = Path(f"{job.jobdir}/{TIMEOUT_FILE}")
        if not marker.exists():
            with contextlib.suppress(OSError):  # the kill matters more than the note
                marker.write_text(f"{limit}\n", encoding="utf-8")
            self.calls["timeout"] += 1
            sig = signal.SIGTERM
        elif over >= KILL_WAIT_S:
            sig = signal.SIGKILL
        else:
            return
        _killpg(job_id, sig)

    def _enforce_cancel(self, job_id: str) -> None:
        """SIGTERM a cancelled job that still lives, again; SIGKILL it :data:`KILL_WAIT_S` after
        the cancel."""
        now = time.monotonic()
        if now - self._cancelled[job_id] >= KILL_WAIT_S:
            self.calls["kill_hard"] += 1
            _killpg(job_id, signal.SIGKILL)
        elif now - self._termed.get(job_id, 0.0) >= CANCEL_RESEND_S:
            self.calls["kill_again"] += 1
            self._termed[job_id] = now
            _killpg(job_id, signal.SIGTERM)

    def _alive(self, job: TrackedJob) -> bool:
        """Whether the job (or anything it started) still holds its lock."""
        job_id = str(job.job_id)
        proc = self._children.get(job_id)
        if proc is not None and not self._reap(job_id, proc):
            return True
        return _locked(f"{job.jobdir}/{LOCK_FILE}")

    def find(self, jobs: Sequence[TrackedJob]) -> dict[str, str]:
        """Adopt every attempt whose job started (its pid file exists; see the module doc)."""
        found = {}
        for job in jobs:
            pid = _read_pid(job.jobdir)
            if pid is None and _locked(f"{job.jobdir}/{LOCK_FILE}"):
                deadline = time.monotonic() + PID_WAIT_S  # forked, pid file not written yet
                while pid is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                    pid = _read_pid(job.jobdir)
            if pid is not None:
                found[job.token] = f"local-{pid}"
        return found

    def cancel(self, job_ids: Sequence[str]) -> None:
        """SIGTERM each job's process group now; :meth:`poll` repeats it while the job lives.

        One SIGTERM is not enough. The job script's bash defers a trapped SIGTERM while its
        command runs in the foreground, until the command ends; and a SIGTERM that arrives while
        that bash is inside ``fork()`` of the command (it blocks SIGTERM across the fork) reaches
        bash alone: the command, not yet in the process group when the signal was sent, never
        gets it and runs to its end (``sleep 30``: 30 s, then CANCELLED). The next SIGTERM
        reaches the command, which ends, and bash exits 143.
        """
        now = time.monotonic()
        for job_id in job_ids:
            self.calls["kill"] += 1
            self._cancelled.setdefault(job_id, now)
            self._termed[job_id] = now
            _killpg(job_id, signal.SIGTERM)

    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        path = Path(f"{job.jobdir}/local.{stream}")
        return path.read_bytes() if path.exists() else b""

    def _read_paths(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    out[path] = fh.read(JOB_FILE_MAX)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                out[path] = None
        return out


def slurm_time_s(text: str) -> int | None:
    """Seconds in a Slurm ``--time`` (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``); ``None`` for no limit (``0``, ``UNLIMITED``, ``INFINITE``) or an unreadable
    value (the cluster config's ``default_time`` is checked when it is loaded)."""
    days, sep, rest = text.partition("-")
    if not sep:
        days, rest = "0", text
    parts = rest.split(":")
    if not days.isdigit() or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    n = [int(p) for p in parts]
    if sep:  # D-H, D-H:M, D-H:M:S
        h, m, sec = (n + [0, 0])[:3]
    elif len(n) == 3:
        h, m, sec = n
    else:  # M or M:S
        h, m, sec = 0, n[0], n[1] if len(n) == 2 else 0
    total = ((int(days) * 24 + h) * 60 + m) * 60 + sec
    return total or None


def _killpg(job_id: str, sig: int) -> None:
    """Signal the process group of ``local-<pid>`` (the job's session, led by its script); a
    group that has ended (or an id not ours to signal) is no error."""
    with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
        os.killpg(int(job_id.removeprefix("local-")), sig)


def _since(start: datetime | None) -> float | None:
    return (datetime.now(UTC) - start).total_seconds() if start else None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _read_pid(jobdir: str) -> int | None:
    try:
        text = Path(f"{jobdir}/{PID_FILE}").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def _locked(path: str) -> bool:
    """Whether some process holds an exclusive lock on ``path`` (a missing file: no)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False
