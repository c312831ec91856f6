"""What a job directory holds, and reading the exit-code marker its script leaves there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

SCRIPT_FILE = "job.sh"
COMMAND_FILE = "command.sh"
EXITCODE_FILE = "exitcode"


def marker_path(jobdir: str) -> str:
    return f"{jobdir}/{EXITCODE_FILE}"


@dataclass(frozen=True)
class Marker:
    """The exit-code file a job script's EXIT trap writes:
    ``<rc> <start> <end> <job id or -> <token>``."""

    exit_code: int
    start: datetime | None
    end: datetime | None
    job_id: str | None = None
    token: str | None = None

    def belongs_to(self, token: str, job_id: str | None = None) -> bool:
        """Whether this marker was written by the job of ``token`` (and ``job_id``).

        A marker without the token is not trusted: the job's own command may have written a
        file called ``exitcode`` into its working directory.
        """
        if self.token != token:
            return False
        return job_id is None or self.job_id == job_id


def parse_marker(data: bytes) -> Marker | None:
    parts = data.decode("ascii", "replace").split()
    if not parts or not parts[0].lstrip("-").isdigit():
        return None

    def stamp(i: int) -> datetime | None:
        try:
            return datetime.fromtimestamp(float(parts[i]), UTC)
        except (IndexError, ValueError):
            return None

    job_id = parts[3] if len(parts) > 3 and parts[3].isdigit() else None
    token = parts[4] if len(parts) > 4 else None
    return Marker(int(parts[0]), stamp(1), stamp(2), job_id, token)
