"""The ``local`` process runtime: each job script runs as a process on this machine.

The embedded default for a first try: no Slurm, no container. The same rendered script runs
(its ``#SBATCH`` lines are comments to bash); stdout/stderr go to ``local-<pid>.out/err`` and
the script's EXIT trap leaves the same exit-code marker a Slurm job leaves. Resource limits are
not enforced here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from runtimes.base import JobRequest, JobState, JobStatus, Runtime, Submitted, TrackedJob
from runtimes.config import ClusterConfig
from runtimes.jobdir import SCRIPT_FILE, marker_path, parse_marker
from runtimes.transport import LocalTransport

PID_FILE = "local.pid"


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
        with open(f"{jobdir}/local.out", "wb") as out, open(f"{jobdir}/local.err", "wb") as err:
            proc = subprocess.Popen(
                ["/bin/bash", f"{jobdir}/{SCRIPT_FILE}"], stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, cwd=jobdir, start_new_session=True,
            )
        job_id = f"local-{proc.pid}"
        Path(f"{jobdir}/{PID_FILE}").write_text(job_id)
        self._children[job_id] = proc
        self._started[job_id] = datetime.now(UTC)
        return job_id

    def poll(self, jobs: Sequence[TrackedJob]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        live = [j for j in jobs if j.job_id]
        markers = self.transport.read_files(marker_path(j.jobdir) for j in live)
        for job in live:
            job_id = str(job.job_id)
            proc = self._children.get(job_id)
            raw = markers.get(marker_path(job.jobdir))
            marker = parse_marker(raw) if raw else None
            # not our child (a job from before a restart): its exit-code marker says it ended,
            # even while its pid lingers as a zombie nobody reaps, or has been reused
            running = proc.poll() is None if proc else marker is None and _alive(job_id)
            if running:
                out[job_id] = JobStatus(JobState.RUNNING, started_at=self._started.get(job_id))
                continue
            self._children.pop(job_id, None)
            if marker is None:
                code = proc.returncode if proc else None
                reason = "process ended without writing its exit code"
                if code is not None and code < 0:
                    out[job_id] = JobStatus(JobState.CANCELLED, 128 - code, f"signal {-code}")
                else:
                    out[job_id] = JobStatus(JobState.FAILED, code, reason)
                continue
            state = JobState.COMPLETED if marker.exit_code == 0 else JobState.FAILED
            if job_id in self._cancelled and marker.exit_code != 0:
                state = JobState.CANCELLED
            out[job_id] = JobStatus(state, marker.exit_code, None, marker.start, marker.end)
        return out

    def find(self, jobs: Sequence[TrackedJob]) -> dict[str, str]:
        found = {}
        for job in jobs:
            try:
                found[job.token] = Path(f"{job.jobdir}/{PID_FILE}").read_text().strip()
            except FileNotFoundError:
                continue
        return found

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.calls["kill"] += 1
            self._cancelled.add(job_id)
            try:
                os.killpg(int(job_id.removeprefix("local-")), signal.SIGTERM)
            except (ProcessLookupError, ValueError, PermissionError):
                continue

    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        path = Path(f"{job.jobdir}/local.{stream}")
        return path.read_bytes() if path.exists() else b""


def _alive(job_id: str) -> bool:
    """Whether a process from an earlier bridge run is still there."""
    try:
        os.kill(int(job_id.removeprefix("local-")), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
