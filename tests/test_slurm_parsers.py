"""Slurm output parsers on outputs recorded from the real test cluster (tests/data/)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtimes.base import JobState
from runtimes.jobdir import parse_marker
from runtimes.slurm import commands as cmd

DATA = Path(__file__).parent / "data"


def data(name: str) -> str:
    return (DATA / name).read_text()


def test_sbatch_parsable() -> None:
    assert cmd.parse_sbatch(data("sbatch_parsable.txt")) == "1358"
    assert cmd.parse_sbatch("4242;akblab\n") == "4242"
    with pytest.raises(ValueError, match="no job id"):
        cmd.parse_sbatch(data("sbatch_invalid_partition.stderr.txt"))


def test_squeue_live() -> None:
    rows = cmd.parse_squeue(data("squeue_all_live.txt"))
    assert {k: r.state for k, r in rows.items()} == {
        "1362": JobState.CANCELLED, "1358": JobState.COMPLETED, "1360": JobState.FAILED,
        "1415": JobState.QUEUED, "1416": JobState.QUEUED, "1414": JobState.RUNNING,
    }
    assert rows["1416"].reason == "JobHeldUser" and rows["1415"].reason == "Dependency"
    assert rows["1360"].reason == "NonZeroExitCode" and rows["1358"].reason is None
    assert rows["1414"].start == datetime(2026, 11, 23, 18, 10, 13, tzinfo=UTC)
    assert rows["1414"].end is None and rows["1415"].start is None
    assert rows["1362"].end == datetime(2026, 11, 23, 18, 10, 11, tzinfo=UTC)
    assert rows["1414"].name == "akb-sleep5"


def test_squeue_final_and_empty() -> None:
    rows = cmd.parse_squeue(data("squeue_all_final.txt"))
    assert rows["1416"].state is JobState.CANCELLED and rows["1416"].reason == "JobHeldUser"
    assert cmd.parse_squeue(data("squeue_jobs_finished.txt")) == {}
    assert cmd.parse_squeue(data("squeue_jobs_unknown.stderr.txt")) == {}


def test_sacct_final() -> None:
    rows = cmd.parse_sacct(data("sacct_final.txt"))
    assert rows["1358"].state is JobState.COMPLETED and rows["1358"].exit_code == 0
    assert rows["1360"].state is JobState.FAILED and rows["1360"].exit_code == 3
    cancelled = rows["1362"]
    assert cancelled.state is JobState.CANCELLED and cancelled.slurm_state == "CANCELLED"
    assert cancelled.end == datetime(2026, 11, 23, 18, 10, 11, tzinfo=UTC)


def test_sacct_live_pending_has_no_times() -> None:
    rows = cmd.parse_sacct(data("sacct_live.txt"))
    assert rows["1414"].state is JobState.RUNNING and rows["1414"].end is None
    assert rows["1415"].state is JobState.QUEUED and rows["1415"].start is None


def test_scontrol_records() -> None:
    done = cmd.parse_scontrol(data("scontrol_show_job_completed.txt"))["1358"]
    assert done.state is JobState.COMPLETED and done.exit_code == 0 and done.name == "akb-true"
    failed = cmd.parse_scontrol(data("scontrol_show_job_failed.txt"))["1360"]
    assert failed.state is JobState.FAILED and failed.exit_code == 3
    assert failed.reason == "NonZeroExitCode"
    cancelled = cmd.parse_scontrol(data("scontrol_show_job_cancelled.txt"))["1362"]
    assert cancelled.state is JobState.CANCELLED and cancelled.signal == 15
    assert cmd.parse_scontrol(data("scontrol_show_job_unknown.stderr.txt")) == {}


@pytest.mark.parametrize("word,state", [
    ("PENDING", JobState.QUEUED), ("CONFIGURING", JobState.QUEUED),
    ("RUNNING", JobState.RUNNING), ("COMPLETING", JobState.RUNNING),
    ("COMPLETED", JobState.COMPLETED), ("FAILED", JobState.FAILED),
    ("BOOT_FAIL", JobState.FAILED), ("TIMEOUT", JobState.TIMEOUT),
    ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY), ("CANCELLED by 1000", JobState.CANCELLED),
    ("PREEMPTED", JobState.CANCELLED), ("NODE_FAIL", JobState.NODE_FAIL),
    ("DEADLINE", JobState.FAILED), ("REQUEUED", JobState.QUEUED),
])
def test_state_words(word: str, state: JobState) -> None:
    assert cmd.slurm_state(word)[0] is state


def test_unknown_state_word_is_ignored() -> None:
    assert cmd.slurm_state("SOMETHING_NEW")[0] is None
    assert cmd.parse_squeue("1|x|SOMETHING_NEW|None|N/A|N/A\n") == {}


def test_argv_are_single_calls_for_many_jobs() -> None:
    assert cmd.sacct_argv(["1", "2", "3"])[:6] == ["sacct", "-X", "-n", "-P", "-j", "1,2,3"]
    assert "--me" in cmd.squeue_argv() and "--states=all" in cmd.squeue_argv()


def test_marker() -> None:
    m = parse_marker(b"3 1795456771.5 1795456772.25 1360\n")
    assert m is not None and m.exit_code == 3 and m.job_id == "1360"
    assert m.end is not None and m.start is not None and (m.end - m.start).total_seconds() == 0.75
    assert parse_marker(b"0 1795456771.5 1795456772.25 \n").job_id is None  # type: ignore[union-attr]
    assert parse_marker(b"") is None and parse_marker(b"garbage") is None
