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
    argv = cmd.sacct_argv(["1", "2", "3"])
    assert argv[:5] == ["sacct", "-n", "-P", "-j", "1,2,3"]
    assert "-X" not in argv  # MaxRSS is on the step lines
    assert argv[-1].split(",")[-2:] == ["MaxRSS", "TotalCPU"]
    assert "--me" in cmd.squeue_argv() and "--states=all" in cmd.squeue_argv()


# -- resource use (tests/data/sacct_usage*.txt, see sacct_usage.README.txt) ------------------


def test_sacct_usage_final() -> None:
    rows = cmd.parse_sacct(data("sacct_usage.txt"))
    assert set(rows) == {"1818", "1819", "1820", "1821", "1822", "1823"}  # steps folded in
    mem = rows["1818"]
    assert mem.state is JobState.COMPLETED and mem.name == "akb-mem200"
    assert (mem.max_rss_kb, mem.elapsed_s, mem.cpu_s) == (219624, 3.0, 0.35)
    assert mem.steps_ended
    steps = rows["1819"]  # batch 10900K, .0 115808K, .1 320612K: the largest step's
    assert steps.max_rss_kb == 320612 and steps.elapsed_s == 4.0
    assert steps.cpu_s == 0.708  # the allocation line's TotalCPU (the steps' sum)
    assert rows["1820"].cpu_s == 1.673 and rows["1820"].max_rss_kb == 14876
    failed = rows["1821"]
    assert failed.state is JobState.FAILED and failed.exit_code == 3
    assert failed.max_rss_kb == 66100 and failed.elapsed_s == 1.0
    held = rows["1822"]  # cancelled while pending: no steps, empty MaxRSS
    assert held.state is JobState.CANCELLED and held.start is None
    assert (held.max_rss_kb, held.elapsed_s, held.cpu_s) == (None, 0.0, 0.0)
    assert rows["1823"].elapsed_s == 8.0 and rows["1823"].cpu_s == 0.003


def test_sacct_usage_live_is_not_settled() -> None:
    """While jobs run, accounting shows their allocation as PENDING "allocation" lines and
    steps still RUNNING with empty MaxRSS: not final usage."""
    rows = cmd.parse_sacct(data("sacct_usage_live.txt"))
    assert "1822" not in rows  # the pending job has no record yet
    done = rows["1818"]
    assert done.state is JobState.COMPLETED and done.steps_ended
    assert done.max_rss_kb == 219624
    steps = rows["1819"]
    assert steps.state is JobState.QUEUED and not steps.steps_ended
    assert steps.max_rss_kb == 115808  # so far: only step .0 has ended
    assert rows["1823"].max_rss_kb is None and not rows["1823"].steps_ended
    assert rows["1823"].cpu_s == 0.0


def test_sacct_without_usage_fields_still_parses() -> None:
    rows = cmd.parse_sacct(data("sacct_final.txt"))  # the older 8-field recording
    assert rows["1414"].elapsed_s == 5.0
    assert rows["1414"].max_rss_kb is None and rows["1414"].cpu_s is None


def test_scontrol_run_time_is_the_elapsed_time() -> None:
    done = cmd.parse_scontrol(data("scontrol_show_job_completed.txt"))["1358"]
    assert done.elapsed_s == 0.0 and done.max_rss_kb is None


@pytest.mark.parametrize(("text", "kib"), [
    ("219624K", 219624), ("0", 0), ("512", 512), ("1.5M", 1536), ("300M", 307200),
    ("2G", 2 * 1024**2), ("1.25T", round(1.25 * 1024**3)), ("16k", 16), ("  8K ", 8),
    ("", None), ("K", None), ("12Q", None), ("-5K", None), ("n/a", None), ("16KB", None),
])
def test_mem_units(text: str, kib: int | None) -> None:
    assert cmd.parse_mem_kb(text) == kib


@pytest.mark.parametrize(("text", "secs"), [
    ("00:00:03", 3.0), ("00:01.673", 1.673), ("59:59.999", 3599.999), ("12:34:56", 45296.0),
    ("01:02:03.500", 3723.5), ("1-02:03:04", 93784.0), ("10-00:00:00", 864000.0),
    ("", None), ("INVALID", None), ("UNLIMITED", None), ("5", None), ("1:2:3:4", None),
    ("00:xx", None), ("x-01:00:00", None), ("00::01", None), ("00:nan", None), ("00:inf", None),
])
def test_durations(text: str, secs: float | None) -> None:
    assert cmd.parse_duration(text) == secs


def test_marker() -> None:
    m = parse_marker(b"3 1795456771.5 1795456772.25 1360\n")
    assert m is not None and m.exit_code == 3 and m.job_id == "1360"
    assert m.end is not None and m.start is not None and (m.end - m.start).total_seconds() == 0.75
    assert parse_marker(b"0 1795456771.5 1795456772.25 \n").job_id is None  # type: ignore[union-attr]
    assert parse_marker(b"") is None and parse_marker(b"garbage") is None
