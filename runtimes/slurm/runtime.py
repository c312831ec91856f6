"""The Slurm runtime: sbatch/squeue/sacct/scancel over any :class:`Transport`.

Per poll: the jobs' exit-code markers are read in one batch (no controller RPC); squeue is
called at most once, and only every ``poll_interval`` (sooner when a marker says a job failed
and Slurm must say how); sacct at most once, for jobs that left the queue without a marker
that tells their fate. Without accounting, ``scontrol show job`` replaces sacct.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from runtimes.base import JobRequest, JobState, JobStatus, Runtime, Submitted, TrackedJob
from runtimes.config import ClusterConfig
from runtimes.jobdir import SCRIPT_FILE, Marker, marker_path, parse_marker
from runtimes.slurm import commands as cmd
from runtimes.transport import Completed, Transport, TransportError

VANISHED_AFTER_S = 60.0
"""A job that neither squeue, sacct nor its marker knows for this long is declared lost."""
FAILED_MARKER_RECHECK_S = 1.0
"""Earliest squeue after a marker reports a non-zero exit (Slurm names the cause)."""


class SlurmRuntime(Runtime):
    """Jobs on one Slurm cluster."""

    def __init__(
        self, cluster: ClusterConfig, transport: Transport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = cluster.name
        self.cluster = cluster
        self.transport = transport
        self.calls: Counter[str] = Counter()
        self._clock = clock
        self._last_squeue = float("-inf")
        self._queue: dict[str, cmd.QueueRow] = {}
        self._accounting: bool | None = {"sacct": True, "none": False}.get(
            cluster.slurm.accounting
        )
        self._unknown_since: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- commands ---------------------------------------------------------------------------
    def _run(self, argv: list[str], stdin: bytes | None = None) -> Completed:
        with self._lock:
            self.calls[argv[0]] += 1
        return self.transport.run(cmd.in_utc(argv), stdin=stdin)

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        files: dict[str, bytes] = {}
        for req in requests:
            files.update(req.files)
            files[f"{req.jobdir}/{SCRIPT_FILE}"] = req.script.encode("utf-8")
        try:  # a TransportError here propagates: nothing was submitted, try again later
            self.transport.write_files(files)
        except OSError as exc:
            error = f"cannot write job directory: {exc}"
            return [Submitted(r.token, None, error) for r in requests]
        argvs = [cmd.in_utc(cmd.sbatch_argv(f"{r.jobdir}/{SCRIPT_FILE}")) for r in requests]
        with self._lock:
            self.calls["sbatch"] += len(argvs)
        try:
            results = self.transport.run_many(
                argvs, concurrency=self.cluster.slurm.submit_concurrency, retry=False)
        except TransportError as exc:  # sbatch may or may not have run: find out by name
            return [Submitted(r.token, None, str(exc), lost=True) for r in requests]
        return [_submitted(r.token, res) for r, res in zip(requests, results, strict=True)]

    def close(self) -> None:
        self.transport.close()

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._run(cmd.scancel_argv(list(job_ids)))

    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        if not job.job_id:
            return b""
        path = f"{job.jobdir}/slurm-{job.job_id}.{stream}"
        return self.transport.read_files([path]).get(path) or b""

    # -- following --------------------------------------------------------------------------
    def _squeue(self) -> dict[str, cmd.QueueRow]:
        res = self._run(cmd.squeue_argv())
        self._last_squeue = self._clock()
        if res.ok:
            self._queue = cmd.parse_squeue(res.stdout)
        return self._queue

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, cmd.AcctRow]:
        if not job_ids or self._accounting is False:
            return {}
        res = self._run(cmd.sacct_argv(job_ids))
        if not res.ok:
            if self._accounting is None and "disabled" in res.stderr.lower():
                self._accounting = False
            return {}
        self._accounting = True
        return cmd.parse_sacct(res.stdout)

    def _scontrol(self) -> dict[str, cmd.AcctRow]:
        res = self._run(cmd.scontrol_argv())
        return cmd.parse_scontrol(res.stdout) if res.ok else {}

    def _markers(self, jobs: Sequence[TrackedJob]) -> dict[str, Marker]:
        paths = {marker_path(j.jobdir): j for j in jobs}
        found: dict[str, Marker] = {}
        for path, data in self.transport.read_files(paths).items():
            marker = parse_marker(data) if data else None
            job = paths[path]
            if marker and job.job_id and marker.belongs_to(job.token, job.job_id):
                found[job.job_id] = marker
        return found

    def poll(self, jobs: Sequence[TrackedJob]) -> dict[str, JobStatus]:
        live = [j for j in jobs if j.job_id]
        if not live:
            return {}
        now = self._clock()
        markers = self._markers(live)
        out: dict[str, JobStatus] = {}
        for job_id, m in markers.items():
            if m.exit_code == 0:  # the fast path: a clean exit needs no controller RPC
                out[job_id] = JobStatus(JobState.COMPLETED, 0, None, m.start, m.end)
        pending = [j for j in live if j.job_id not in out]
        if not pending:
            return out
        due = now - self._last_squeue >= self.cluster.slurm.poll_interval
        failed_marker = any(j.job_id in markers for j in pending)
        refresh = due or (failed_marker and now - self._last_squeue >= FAILED_MARKER_RECHECK_S)
        queue = self._squeue() if refresh else self._queue
        need_acct: list[str] = []
        for job in pending:
            job_id = str(job.job_id)
            row = queue.get(job_id)
            marker = markers.get(job_id)
            if row is not None and not row.state.terminal:
                if marker is None:
                    out[job_id] = JobStatus(row.state, None, row.reason, row.start)
                continue  # marker written but Slurm not done yet: wait for Slurm's word
            if row is not None and (row.state is JobState.COMPLETED or marker is not None):
                code = 0 if row.state is JobState.COMPLETED else (
                    marker.exit_code if marker else None)
                out[job_id] = JobStatus(
                    row.state, code, row.reason,
                    marker.start if marker else row.start, marker.end if marker else row.end,
                )
                continue
            need_acct.append(job_id)
        if need_acct and refresh:
            out.update(self._resolve(need_acct, queue, markers, now))
        return out

    def _resolve(
        self, job_ids: list[str], queue: dict[str, cmd.QueueRow],
        markers: dict[str, Marker], now: float,
    ) -> dict[str, JobStatus]:
        """Final states for jobs that left the queue (or ended without a marker)."""
        records = self._sacct(job_ids)
        if self._accounting is False:
            records = self._scontrol()
        out: dict[str, JobStatus] = {}
        for job_id in job_ids:
            rec, marker, row = records.get(job_id), markers.get(job_id), queue.get(job_id)
            if rec is not None and rec.state.terminal:
                code = rec.exit_code
                if rec.state is not JobState.COMPLETED and not code and marker:
                    code = marker.exit_code  # sacct -X says 0:0 for a cancelled job
                out[job_id] = JobStatus(
                    rec.state, code, rec.reason if rec.state is not JobState.COMPLETED else None,
                    marker.start if marker else rec.start, marker.end if marker else rec.end,
                )
            elif row is not None:  # terminal in squeue, no marker, no record (yet)
                out[job_id] = JobStatus(row.state, None, row.reason, row.start, row.end)
            elif rec is not None:
                out[job_id] = JobStatus(rec.state, None, rec.reason, rec.start)
            elif marker is not None and self._accounting is False:
                state = JobState.COMPLETED if marker.exit_code == 0 else JobState.FAILED
                out[job_id] = JobStatus(state, marker.exit_code, None, marker.start, marker.end)
            else:
                since = self._unknown_since.setdefault(job_id, now)
                if now - since >= VANISHED_AFTER_S:
                    code = marker.exit_code if marker else None
                    out[job_id] = JobStatus(
                        JobState.FAILED, code, "job vanished from Slurm without a record"
                    )
                continue
            self._unknown_since.pop(job_id, None)
        return out

    def find(self, jobs: Sequence[TrackedJob]) -> dict[str, str]:
        if not jobs:
            return {}
        tokens = {j.token for j in jobs}
        found = {row.name: row.job_id for row in self._squeue().values() if row.name in tokens}
        missing = [t for t in tokens if t not in found]
        if missing and self._accounting is not False:
            res = self._run(cmd.sacct_by_name_argv(missing))
            if res.ok:
                for rec in cmd.parse_sacct(res.stdout).values():
                    found.setdefault(rec.name, rec.job_id)
        unknown = {marker_path(j.jobdir): j.token for j in jobs if j.token not in found}
        for path, raw in self.transport.read_files(unknown).items():  # one batch for all
            marker = parse_marker(raw) if raw else None
            if marker and marker.job_id and marker.belongs_to(unknown[path]):
                found[unknown[path]] = marker.job_id
        return found


AMBIGUOUS_RC = frozenset({124, 137, 143, 255})
"""sbatch exit statuses after which the job may exist: timed out, killed, batch cut short."""
AMBIGUOUS_ERRORS = (
    "socket timed out", "unable to contact slurm controller", "zero bytes were transmitted",
    "communication connection failure", "connection refused", "connection timed out",
    "connection reset", "transport endpoint", "resource temporarily unavailable",
    "slurm_receive_msg", "backup controller", "unexpected message received",
    "insane message length", "protocol authentication error", "timed out",
)
"""sbatch errors from the controller's link, not from the job: it may have been accepted."""


def ambiguous(res: Completed) -> bool:
    """Whether a failed sbatch may still have created the job (look it up by name)."""
    text = (res.stderr + res.stdout).lower()
    return res.returncode < 0 or res.returncode in AMBIGUOUS_RC or any(
        e in text for e in AMBIGUOUS_ERRORS)


def _submitted(token: str, res: Completed) -> Submitted:
    if not res.ok:
        return Submitted(token, None, (res.stderr or res.stdout).strip(), lost=ambiguous(res))
    try:
        return Submitted(token, cmd.parse_sbatch(res.stdout))
    except ValueError as exc:
        return Submitted(token, None, str(exc))
