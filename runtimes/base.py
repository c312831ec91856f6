"""The one interface every runtime implements, and the job records that cross it.

A runtime turns rendered job scripts into jobs on a cluster (or local processes), reports
their states in bulk, cancels them and reads their logs. It never touches the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from runtimes.transport import Transport


class JobState(StrEnum):
    """A job's state as the bridge understands it (Slurm's many states folded into these)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED = "CANCELLED"
    NODE_FAIL = "NODE_FAIL"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobRequest:
    """One attempt to submit: a unique token (the Slurm job name), its job directory on the
    cluster, the sbatch script, and extra files (name → bytes) to place in that directory."""

    token: str
    jobdir: str
    script: str
    files: dict[str, bytes] = field(default_factory=dict)
    private_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Files only the job's user may read (mode 0600): the step's secrets."""


def write_job_files(transport: Transport, requests: Sequence[JobRequest],
                    script_name: str) -> None:
    """Every request's files and script in one write, then the private files (0600) in a
    second one when there are any."""
    files: dict[str, bytes] = {}
    private: dict[str, bytes] = {}
    for req in requests:
        files.update(req.files)
        files[f"{req.jobdir}/{script_name}"] = req.script.encode("utf-8")
        private.update(req.private_files)
    transport.write_files(files)
    if private:
        transport.write_files(private, mode=0o600)


@dataclass(frozen=True)
class Submitted:
    """The answer to one :class:`JobRequest`: a job id, or the error that stopped it."""

    token: str
    job_id: str | None
    error: str | None = None
    lost: bool = False
    """The job may exist although no id came back (the connection broke, sbatch timed out or
    failed on the controller link): look it up by token before submitting again."""


@dataclass(frozen=True)
class TrackedJob:
    """A job the bridge follows (``job_id`` is ``None`` while its submission is unconfirmed)."""

    token: str
    jobdir: str
    job_id: str | None = None


@dataclass(frozen=True)
class JobStatus:
    """What a runtime observed about one job."""

    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    max_rss_kb: int | None = None
    """Peak resident memory in KiB (the largest of the job's steps or processes)."""
    elapsed_s: float | None = None
    """Wall-clock seconds the job ran."""
    cpu_s: float | None = None
    """CPU seconds (user + system) the job's processes used."""

    @property
    def has_usage(self) -> bool:
        """Whether the cluster reported memory or CPU use (elapsed time alone does not count)."""
        return self.max_rss_kb is not None or self.cpu_s is not None


class RuntimeFailure(Exception):
    """A runtime could not do what was asked (the message says what to check)."""


JOB_FILE_MAX = 64 * 1024
"""Largest part of a job file (an output parameter) that is read back."""


def checked_name(name: str) -> str:
    """A file name inside a job directory: relative, no ``..`` part, no NUL."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\0" in name or ".." in parts:
        raise ValueError(f"{name!r} is not a relative path inside the job directory")
    return name


class Runtime(ABC):
    """Submit, follow and cancel jobs on one cluster. All calls take many jobs at once."""

    name: str
    calls: Counter[str]
    """How many times each external command (sbatch, squeue, sacct, ...) was run."""
    transport: Transport
    """Where the runtime's commands and files go (staging and image checks use it too)."""

    @abstractmethod
    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        """Write each job directory and submit; one :class:`Submitted` per request, in order.

        A :class:`~runtimes.transport.TransportError` raised from here means that nothing
        was submitted (the job files could not be written): the requests can be sent again.
        """

    @abstractmethod
    def poll(self, jobs: Sequence[TrackedJob]) -> dict[str, JobStatus]:
        """States of the given jobs by job id; a job absent from the reply is not known yet."""

    @abstractmethod
    def find(self, jobs: Sequence[TrackedJob]) -> dict[str, str]:
        """Job ids of jobs whose submission was unconfirmed, by token (crash reconciliation)."""

    deferred_usage: bool = False
    """Whether jobs reported ended without their resource use may get it later from
    :meth:`usage` (accounting that lags behind the job's end)."""

    def usage(self, jobs: Sequence[TrackedJob], *, closing: bool = False) -> dict[str, JobStatus]:
        """Final statuses with resource use of ended jobs, by job id, as far as the cluster
        knows them yet (a job absent from the reply: not known, ask again later).
        ``closing``: the caller is about to stop (a CLI run whose workflows ended) and asks
        for the last ones now rather than at the steady-state rate."""
        return {}

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Ask for these jobs to be cancelled."""

    @abstractmethod
    def read_log(self, job: TrackedJob, stream: str = "out") -> bytes:
        """The job's stdout (``out``) or stderr (``err``) as far as it has been written."""

    def read_job_files(self, job: TrackedJob, names: Sequence[str]) -> dict[str, bytes]:
        """Files the job left in its directory, by name (relative, no ``..``), each cut at
        :data:`JOB_FILE_MAX` bytes; absent ones are left out. One batch for all."""
        paths = {f"{job.jobdir}/{checked_name(n)}": n for n in names}
        return {paths[p]: data[:JOB_FILE_MAX] for p, data in self._read_paths(list(paths)).items()
                if data is not None}

    def _read_paths(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        raise NotImplementedError(f"{type(self).__name__} cannot read job files")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and processes the runtime holds."""
