"""A job's stdout/stderr for ``akobridge logs`` and the failure details: read through the
cluster's runtime, or straight from the job directory when it is on this machine.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from bridge.store import AttemptRow
from runtimes import Runtime, TrackedJob

log = structlog.get_logger("akobridge.logview")

STREAMS = ("out", "err")


def local_log(attempt: AttemptRow, stream: str) -> bytes | None:
    """The log file in a job directory on this machine (``local.*`` of the process runtime,
    ``slurm-<job>.*`` of Slurm); ``None`` when the job directory is not here."""
    jobdir = attempt.jobdir
    if not os.path.isdir(jobdir):
        return None
    candidates = [f"{jobdir}/local.{stream}"]
    if attempt.job_id:
        candidates.append(f"{jobdir}/slurm-{attempt.job_id}.{stream}")
    candidates += sorted(glob.glob(f"{glob.escape(jobdir)}/slurm-*.{stream}"))
    for path in candidates:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return b""


class LogReader:
    """Reads attempts' logs; opens a cluster's runtime only when the job directory is not on
    this machine, and remembers a cluster that cannot be reached (asked once)."""

    def __init__(self, runtime: Callable[[str], Runtime] | None,
                 remote: Callable[[str], bool] = lambda _name: False) -> None:
        self._runtime = runtime
        self._remote = remote
        self.problems: dict[str, str] = {}

    def __call__(self, attempt: AttemptRow, stream: str) -> bytes | None:
        if self._runtime is None or not self._remote(attempt.cluster):
            here = local_log(attempt, stream)
            if here is not None or self._runtime is None:
                return here
        if attempt.cluster in self.problems:
            return None
        try:
            rt = self._runtime(attempt.cluster)
            return rt.read_log(TrackedJob(attempt.token, attempt.jobdir, attempt.job_id),
                               stream)
        except Exception as exc:  # unknown cluster, unreachable host: say so, not a traceback
            self.problems[attempt.cluster] = f"{type(exc).__name__}: {exc}"
            log.info("cannot read job logs", cluster=attempt.cluster, error=str(exc))
            return None
