"""The ``local`` process runtime: each job script runs as a process on this machine.

The embedded default for a first try: no Slurm, no container. The same rendered script runs
(its ``#SBATCH`` lines are comments to bash); stdout/stderr go to ``local.out``/``local.err``
and the script's EXIT trap leaves the same exit-code marker a Slurm job leaves. Resource
limits are not enforced here; ``max_running`` caps how many run at once (the runner asks).

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
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from runtimes.base import JobRequest, JobState, JobStatus, Runtime, Submitted, TrackedJob
from runtimes.config import ClusterConfig
from runtimes.jobdir import SCRIPT_FILE, marker_path, parse_marker
from runtimes.transport import LocalTransport

PID_FILE = "local.pid"
LOCK_FILE = "local.lock"
_START = 'printf %s "$$" > local.pid && exec /bin/bash "$1"'
"""The child's first act: record its pid (one short write: a reader sees all or nothing of
it), then become the job script."""
PID_WAIT_S = 5.0
"""How long :meth:`find` waits for a live job's pid file (written at the child's start)."""


class ProcessRuntime(Runtime):
    """Jobs as local processes; job ids are ``local-<pid>``."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.name = cluster.name
        self.calls: Counter[str] = Counter()
        self.transport: LocalTransport = LocalTransport()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._started: dict[str, datetime] = {}
        self._cancelled: set[str] = set()

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        out = []
        for req in requests:
            try:
                self.transport.write_files({
                    **req.files, f"{req.jobdir}/{SCRIPT_FILE}": req.script.encode("utf-8"),
                })
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
        for job in live:
            job_id = str(job.job_id)
            raw = markers.get(marker_path(job.jobdir))
            marker = parse_marker(raw) if raw else None
            if marker is not None and not marker.belongs_to(job.token):
                marker = None
            if marker is None and alive[job_id]:
                out[job_id] = JobStatus(JobState.RUNNING, started_at=self._started.get(job_id))
                continue
            proc = self._children.pop(job_id, None)
            if proc is not None:
                proc.poll()  # reap it
            if marker is None:
                code = proc.returncode if proc else None
                if code is not None and code < 0 or job_id in self._cancelled:
                    sig = -code if code is not None and code < 0 else signal.SIGTERM
                    out[job_id] = JobStatus(JobState.CANCELLED, 128 + sig, f"signal {sig}",
                                            self._started.get(job_id))
                else:
                    out[job_id] = JobStatus(JobState.FAILED, code,
                                            "process ended without writing its exit code",
                                            self._started.get(job_id))
                continue
            state = JobState.COMPLETED if marker.exit_code == 0 else JobState.FAILED
            if job_id in self._cancelled and marker.exit_code != 0:
                state = JobState.CANCELLED
            out[job_id] = JobStatus(state, marker.exit_code, None, marker.start, marker.end)
        return out

    def _alive(self, job: TrackedJob) -> bool:
        """Whether the job (or anything it started) still holds its lock."""
        proc = self._children.get(str(job.job_id))
        if proc is not None and proc.poll() is None:
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
        for job_id in job_ids:
            self.calls["kill"] += 1
            self._cancelled.add(job_id)
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.killpg(int(job_id.removeprefix("local-")), signal.SIGTERM)

    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        path = Path(f"{job.jobdir}/local.{stream}")
        return path.read_bytes() if path.exists() else b""


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
