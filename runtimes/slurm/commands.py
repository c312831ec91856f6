"""Build Slurm command lines and parse their output (no I/O here: unit-tested on recordings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from runtimes.base import JobState

SEP = "|"
UTC_ENV = ("env", "TZ=UTC")
SQUEUE_FORMAT = "%i|%j|%T|%r|%S|%e"
SACCT_FIELDS = "JobIDRaw,JobName,State,ExitCode,Start,End,Elapsed,Reason,MaxRSS,TotalCPU"
"""The allocation line gives state, times, Elapsed and TotalCPU (summed over the steps);
MaxRSS is only on the step lines (``.batch``, ``.extern``, ``.0``) of a call without ``-X``."""
_MEM_UNITS = {"": 1, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3, "P": 1024**4}
"""Slurm memory suffixes in KiB (Slurm's 1024 base; a bare number is in its base unit, K)."""

_STATE_MAP: dict[str, JobState] = {
    "PENDING": JobState.QUEUED, "CONFIGURING": JobState.QUEUED, "REQUEUED": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED, "REQUEUE_HOLD": JobState.QUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED, "SUSPENDED": JobState.RUNNING, "STOPPED": JobState.RUNNING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "BOOT_FAIL": JobState.FAILED, "DEADLINE": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED, "REVOKED": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "CANCELLED": JobState.CANCELLED, "PREEMPTED": JobState.CANCELLED,
    "NODE_FAIL": JobState.NODE_FAIL,
}


@dataclass(frozen=True)
class QueueRow:
    """One line of squeue."""

    job_id: str
    name: str
    state: JobState
    slurm_state: str
    reason: str | None
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class AcctRow:
    """One job of sacct (its allocation line, with the usage of its step lines folded in)."""

    job_id: str
    name: str
    state: JobState
    slurm_state: str
    exit_code: int | None
    signal: int | None
    start: datetime | None
    end: datetime | None
    reason: str | None
    max_rss_kb: int | None = None
    elapsed_s: float | None = None
    cpu_s: float | None = None
    steps_ended: bool = True
    """No step line of the job is still live (its usage is complete in accounting)."""


def in_utc(argv: Sequence[str]) -> list[str]:
    """``argv`` run with ``TZ=UTC``, so Slurm prints (and reads) times in UTC whatever the
    zone of the login node or of the account's shell start-up files."""
    return [*UTC_ENV, *argv]


def squeue_argv() -> list[str]:
    """All of this user's jobs, finished ones included (one controller RPC)."""
    return ["squeue", "--me", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]


def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    """Final states and resource use of the given jobs (one call for all of them; no ``-X``:
    MaxRSS is on the step lines)."""
    return ["sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", SACCT_FIELDS]


def sacct_by_name_argv(names: Sequence[str]) -> list[str]:
    """Jobs with any of these names, for crash reconciliation (the last two days)."""
    return ["sacct", "-X", "-n", "-P", "-S", "now-2days", "--name", ",".join(names),
            "-o", SACCT_FIELDS]


def sbatch_argv(script_path: str) -> list[str]:
    return ["sbatch", "--parsable", script_path]


def scancel_argv(job_ids: Sequence[str]) -> list[str]:
    return ["scancel", *job_ids]


def scontrol_argv() -> list[str]:
    """Every job the controller still holds, one per line (one RPC)."""
    return ["scontrol", "--oneliner", "show", "job"]


def slurm_state(text: str) -> tuple[JobState | None, str]:
    """Map a Slurm state word (``CANCELLED by 0``, ``PENDING``) to a :class:`JobState`."""
    word = text.strip().split(" ")[0].rstrip("+")
    return _STATE_MAP.get(word), word


def parse_time(text: str) -> datetime | None:
    """Slurm timestamps (``2026-11-23T18:01:02``) as aware UTC datetimes: the commands run
    with ``TZ=UTC`` (:func:`in_utc`), so a naive time is UTC, never the bridge's own zone."""
    text = text.strip()
    if not text or text in ("N/A", "NONE", "Unknown", "None"):
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def parse_sbatch(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``)."""
    first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout.strip()!r}")
    return job_id


def parse_exit(text: str) -> tuple[int | None, int | None]:
    """Slurm's ``ExitCode`` ``3:0`` as (exit code, signal)."""
    code, _, sig = text.partition(":")
    return (int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


def _reason(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None", "(null)") else text


def parse_squeue(stdout: str) -> dict[str, QueueRow]:
    """squeue lines by job id; lines that are not ours to parse are skipped."""
    rows: dict[str, QueueRow] = {}
    for line in stdout.splitlines():
        parts = line.split(SEP)
        if len(parts) != 6:
            continue
        state, word = slurm_state(parts[2])
        if state is None:
            continue
        rows[parts[0].strip()] = QueueRow(
            parts[0].strip(), parts[1], state, word, _reason(parts[3]), parse_time(parts[4]),
            parse_time(parts[5]) if state.terminal else None,
        )
    return rows


def parse_mem_kb(text: str) -> int | None:
    """Slurm memory (``219868K``, ``1.50G``, ``0``) in KiB; ``None`` when empty/unreadable."""
    text = text.strip().upper()
    unit = text[-1:] if text[-1:].isalpha() else ""
    try:
        value = float(text[:-1] if unit else text)
    except ValueError:
        return None
    factor = _MEM_UNITS.get(unit)
    return None if factor is None or value < 0 else round(value * factor)


def parse_duration(text: str) -> float | None:
    """Slurm durations (``[D-]HH:MM:SS``, ``MM:SS.mmm``, ``HH:MM:SS.mmm``) in seconds;
    ``None`` when empty or not a duration (``INVALID``, ``UNLIMITED``)."""
    days, sep, rest = text.strip().partition("-")
    if not sep:
        days, rest = "0", days
    parts = rest.split(":")
    if not days.isdigit() or not 2 <= len(parts) <= 3 or not all(parts):
        return None
    try:
        secs = float(parts[-1])
        whole = [int(p) for p in parts[:-1]]
    except ValueError:
        return None
    if not 0 <= secs < 3600:  # also refuses nan and inf
        return None
    hours, minutes = (whole if len(whole) == 2 else [0, *whole])
    return ((int(days) * 24 + hours) * 60 + minutes) * 60 + secs


def parse_sacct(stdout: str) -> dict[str, AcctRow]:
    """sacct ``-P`` output by job id: each allocation line (the last wins when a job id
    repeats), with MaxRSS the largest of its steps' and TotalCPU the allocation's (or the
    steps' sum). Reads lines of :data:`SACCT_FIELDS` and of the older 8-field form."""
    rows: dict[str, AcctRow] = {}
    step_rss: dict[str, int] = {}
    step_cpu: dict[str, float] = {}
    step_live: set[str] = set()
    for line in stdout.splitlines():
        parts = line.split(SEP)
        if len(parts) not in (8, 10):
            continue
        rss, cpu = (parse_mem_kb(parts[8]), parse_duration(parts[9])) if len(parts) == 10 \
            else (None, None)
        job_id, dot, _ = parts[0].strip().partition(".")
        if dot:  # a step: only its usage counts
            step_state, _ = slurm_state(parts[2])
            if step_state is None or not step_state.terminal:
                step_live.add(job_id)
            if rss is not None:
                step_rss[job_id] = max(rss, step_rss.get(job_id, 0))
            if cpu is not None:
                step_cpu[job_id] = step_cpu.get(job_id, 0.0) + cpu
            continue
        state, word = slurm_state(parts[2])
        if state is None:
            continue
        code, sig = parse_exit(parts[3])
        rows[job_id] = AcctRow(
            job_id=job_id, name=parts[1], state=state, slurm_state=word,
            exit_code=code, signal=sig,
            start=parse_time(parts[4]), end=parse_time(parts[5]), reason=_reason(parts[7]),
            max_rss_kb=rss, elapsed_s=parse_duration(parts[6]), cpu_s=cpu,
        )
    for job_id, row in rows.items():
        rss = max((r for r in (row.max_rss_kb, step_rss.get(job_id)) if r is not None),
                  default=None)
        cpu = row.cpu_s if row.cpu_s is not None else step_cpu.get(job_id)
        live = job_id in step_live
        if rss != row.max_rss_kb or cpu != row.cpu_s or live:
            rows[job_id] = replace(row, max_rss_kb=rss, cpu_s=cpu, steps_ended=not live)
    return rows


def parse_scontrol(stdout: str) -> dict[str, AcctRow]:
    """``scontrol --oneliner show job`` records by job id, as :class:`AcctRow`."""
    rows: dict[str, AcctRow] = {}
    for line in stdout.splitlines():
        fields = dict(
            tok.split("=", 1) for tok in line.split() if "=" in tok
        )
        job_id = fields.get("JobId")
        state, word = slurm_state(fields.get("JobState", ""))
        if not job_id or state is None:
            continue
        code, sig = parse_exit(fields.get("ExitCode", ""))
        rows[job_id] = AcctRow(
            job_id=job_id, name=fields.get("JobName", ""), state=state, slurm_state=word,
            exit_code=code, signal=sig,
            start=parse_time(fields.get("StartTime", "")),
            end=parse_time(fields.get("EndTime", "")), reason=_reason(fields.get("Reason", "")),
            elapsed_s=parse_duration(fields.get("RunTime", "")),
        )
    return rows
