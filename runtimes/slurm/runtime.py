"""The Slurm runtime: sbatch/squeue/sacct/scancel over any :class:`Transport`.

Per poll: the jobs' exit-code markers are read in one batch (no controller RPC); squeue is
called at most once, and only every ``poll_interval`` (sooner when a marker says a job failed
and Slurm must say how); sacct at most once, for jobs that left the queue without a marker
that tells their fate. Without accounting, ``scontrol show job`` replaces sacct.

Resource use (MaxRSS, Elapsed, TotalCPU) comes from that same sacct call. Jobs that ended
without one (a clean exit seen in its marker, an end seen in squeue) get theirs later through
:meth:`SlurmRuntime.usage`: their ids ride along on the next sacct the poll makes anyway, or,
when none comes, one sacct for all of them at most every :data:`USAGE_EVERY` poll intervals —
never more than one sacct in a round, and none once nothing is waiting for its usage.

The controller budget: the scheduled calls (squeue, and the sacct made only for usage) share
one slot per ``poll_interval`` — a usage sacct takes the slot of a squeue, which then comes one
interval later — so jobs that end cleanly cost the controller at most one call per interval
(DESIGN.md: one RPC per 5 s at steady state). Only failures (a non-zero marker, a job gone
without one) and the look-up after an unclear sbatch spend calls outside the slot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from runtimes.base import (
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
from runtimes.slurm import commands as cmd
from runtimes.transport import Completed, Transport, TransportError

VANISHED_AFTER_S = 60.0
"""A job that neither squeue, sacct nor its marker knows for this long is declared lost."""
FAILED_MARKER_RECHECK_S = 1.0
"""Earliest squeue after a marker reports a non-zero exit (Slurm names the cause)."""
USAGE_EVERY = 3
"""Poll intervals between two sacct calls made only for the usage of ended jobs."""
USAGE_SETTLE_S = 2.0
"""How long after a job ended before a sacct is made for its usage (accounting lags)."""
CLOSING_EVERY_S = 1.0
"""Seconds between two usage sacct calls while a run that is ending waits for the last ones."""


class SlurmRuntime(Runtime):
    """Jobs on one Slurm cluster."""

    deferred_usage = True

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
        self._last_slot = float("-inf")
        """When the last scheduled controller call (squeue or usage sacct) was made."""
        self._queue: dict[str, cmd.QueueRow] = {}
        self._accounting: bool | None = {"sacct": True, "none": False}.get(
            cluster.slurm.accounting
        )
        self._unknown_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last_sacct = float("-inf")
        self._usage_wanted: dict[str, float] = {}
        """Ended job id → when its usage was first asked for."""
        self._usage_found: dict[str, JobStatus] = {}

    # -- commands ---------------------------------------------------------------------------
    def _run(self, argv: list[str], stdin: bytes | None = None) -> Completed:
        with self._lock:
            self.calls[argv[0]] += 1
        return self.transport.run(cmd.in_utc(argv), stdin=stdin)

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        try:  # a TransportError here propagates: nothing was submitted, try again later
            write_job_files(self.transport, requests, SCRIPT_FILE)
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

    def _read_paths(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        return dict(self.transport.read_files(paths))

    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        if not job.job_id:
            return b""
        path = f"{job.jobdir}/slurm-{job.job_id}.{stream}"
        return self.transport.read_files([path]).get(path) or b""

    # -- following --------------------------------------------------------------------------
    def _squeue(self) -> dict[str, cmd.QueueRow]:
        res = self._run(cmd.squeue_argv())
        self._last_squeue = self._last_slot = self._clock()
        if res.ok:
            self._queue = cmd.parse_squeue(res.stdout)
        return self._queue

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, cmd.AcctRow]:
        """One sacct for these jobs and for the ended ones whose usage is awaited."""
        if not job_ids or self._accounting is False:
            return {}
        asked = set(job_ids)
        extra = [j for j in self._usage_wanted if j not in asked and j not in self._usage_found]
        res = self._run(cmd.sacct_argv([*job_ids, *extra]))
        self._last_sacct = self._clock()
        if not res.ok:
            if self._accounting is None and "disabled" in res.stderr.lower():
                self._accounting = False
            return {}
        self._accounting = True
        rows = cmd.parse_sacct(res.stdout)
        for job_id in self._usage_wanted:
            rec = rows.get(job_id)
            if rec is not None and rec.state.terminal and rec.steps_ended:
                self._usage_found[job_id] = _final(rec)
        return rows

    def usage(self, jobs: Sequence[TrackedJob], *, closing: bool = False) -> dict[str, JobStatus]:
        """Usage of ended jobs from accounting (see the module doc for when sacct runs;
        ``closing``: at most one sacct per :data:`CLOSING_EVERY_S`, outside the slot)."""
        if self._accounting is False:
            self._usage_wanted.clear()
            self._usage_found.clear()
            return {}
        now = self._clock()
        ids = [str(j.job_id) for j in jobs if j.job_id]
        self._usage_wanted = {i: self._usage_wanted.get(i, now) for i in ids}
        self._usage_found = {i: s for i, s in self._usage_found.items()
                             if i in self._usage_wanted}
        ripe = [i for i, since in self._usage_wanted.items()
                if i not in self._usage_found and now - since >= USAGE_SETTLE_S]
        if ripe and closing and now - self._last_sacct >= CLOSING_EVERY_S:
            self._sacct(ripe)
        elif ripe and self._usage_due(now):
            self._sacct(ripe)
            self._last_slot = now
        out = {i: self._usage_found.pop(i) for i in ids if i in self._usage_found}
        for job_id in out:
            self._usage_wanted.pop(job_id, None)
        return out

    def _slot_free(self, now: float) -> bool:
        return now - self._last_slot >= self.cluster.slurm.poll_interval

    def _usage_due(self, now: float) -> bool:
        """Whether a sacct only for usage may run now (it then takes this interval's slot)."""
        every = USAGE_EVERY * self.cluster.slurm.poll_interval
        ripe = any(i not in self._usage_found and now - since >= USAGE_SETTLE_S
                   for i, since in self._usage_wanted.items())
        return ripe and now - self._last_sacct >= every and self._slot_free(now)

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
                out[job_id] = JobStatus(JobState.COMPLETED, 0, None, m.start, m.end,
                                        elapsed_s=_elapsed(m.start, m.end))
        pending = [j for j in live if j.job_id not in out]
        if not pending:
            return out
        due = self._slot_free(now) and not self._usage_due(now)  # usage first: see module doc
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
                start = marker.start if marker else row.start
                end = marker.end if marker else row.end
                out[job_id] = JobStatus(row.state, code, row.reason, start, end,
                                        elapsed_s=_elapsed(start, end))
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
                out[job_id] = _final(rec, marker)
                if not rec.steps_ended:  # usage incomplete: asked for again later
                    out[job_id] = replace(out[job_id], max_rss_kb=None, cpu_s=None)
            elif row is not None:  # terminal in squeue, no marker, no record (yet)
                out[job_id] = JobStatus(row.state, None, row.reason, row.start, row.end,
                                        elapsed_s=_elapsed(row.start, row.end))
            elif rec is not None:
                out[job_id] = JobStatus(rec.state, None, rec.reason, rec.start)
            elif marker is not None and self._accounting is False:
                state = JobState.COMPLETED if marker.exit_code == 0 else JobState.FAILED
                out[job_id] = JobStatus(state, marker.exit_code, None, marker.start, marker.end,
                                        elapsed_s=_elapsed(marker.start, marker.end))
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


def _elapsed(start: datetime | None, end: datetime | None) -> float | None:
    return max(0.0, (end - start).total_seconds()) if start and end else None


def _final(rec: cmd.AcctRow, marker: Marker | None = None) -> JobStatus:
    """The status of a job that accounting (or scontrol) shows ended, with its usage."""
    code = rec.exit_code
    if rec.state is not JobState.COMPLETED and not code and marker:
        code = marker.exit_code  # sacct's allocation line says 0:0 for a cancelled job
    start = marker.start if marker else rec.start
    end = marker.end if marker else rec.end
    return JobStatus(
        rec.state, code, rec.reason if rec.state is not JobState.COMPLETED else None,
        start, end, max_rss_kb=rec.max_rss_kb,
        elapsed_s=rec.elapsed_s if rec.elapsed_s is not None else _elapsed(start, end),
        cpu_s=rec.cpu_s,
    )


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
