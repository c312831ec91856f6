"""What each attempt used (peak RSS, wall time, CPU time): the Slurm runtime's sacct timing on
recorded output (tests/data/sacct_usage*.txt), then real workflows on the test Slurm cluster
and on the local process runtime."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_process_runtime import request, wait_end

from conftest import Harness
from runtimes.base import JobState, TrackedJob
from runtimes.config import LOCAL, ClusterConfig, ContainerSettings, SlurmSettings
from runtimes.process import ProcessRuntime
from runtimes.slurm import commands as slurm_commands
from runtimes.slurm import runtime as slurm_runtime
from runtimes.slurm.runtime import SlurmRuntime
from runtimes.transport import Completed, LocalTransport

DATA = Path(__file__).parent / "data"
USAGE_FINAL = (DATA / "sacct_usage.txt").read_text()
USAGE_LIVE = (DATA / "sacct_usage_live.txt").read_text()
MIB = 1024


class FakeSlurm(LocalTransport):
    """Real job directories; squeue prints nothing, sacct prints ``self.sacct``."""

    def __init__(self, sacct: str = USAGE_FINAL, squeue: str = "") -> None:
        super().__init__()
        self.sacct = sacct
        self.squeue = squeue
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        argv = list(argv)[2:]  # without `env TZ=UTC`
        self.ran.append(argv)
        out = {"sacct": self.sacct, "squeue": self.squeue}.get(argv[0], "")
        return Completed(tuple(argv), 0, out, "")

    def sacct_ids(self) -> list[list[str]]:
        return [a[a.index("-j") + 1].split(",") for a in self.ran if a[0] == "sacct"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_runtime(tmp_path: Path, transport: FakeSlurm, clock: Clock,
                 accounting: str = "auto") -> SlurmRuntime:
    cluster = ClusterConfig(name="fake", workdir=str(tmp_path), slurm=SlurmSettings(
        partition="debug", poll_interval=1.0, accounting=accounting),
        container=ContainerSettings(engine="none"))
    return SlurmRuntime(cluster, transport, clock=clock)


def job(tmp_path: Path, job_id: str, exit_code: int | None = 0) -> TrackedJob:
    """A tracked job; with ``exit_code``, its script's marker (a 2.5 s run)."""
    token = f"akb-t-{job_id}"
    jobdir = tmp_path / job_id
    jobdir.mkdir()
    if exit_code is not None:
        marker = f"{exit_code} 1796298931.0 1796298933.5 {job_id} {token}\n"
        (jobdir / "exitcode").write_text(marker)
    return TrackedJob(token, str(jobdir), job_id)


def test_a_clean_exit_gets_its_usage_from_one_later_sacct(tmp_path: Path) -> None:
    transport, clock = FakeSlurm(), Clock()
    rt = fake_runtime(tmp_path, transport, clock)
    mem = job(tmp_path, "1818")
    [status] = rt.poll([mem]).values()
    assert status.state is JobState.COMPLETED and status.elapsed_s == 2.5  # from the marker
    assert status.max_rss_kb is None and not status.has_usage and transport.ran == []
    assert rt.usage([mem]) == {} and transport.ran == []  # accounting lags: not yet
    clock.now += slurm_runtime.USAGE_SETTLE_S
    got = rt.usage([mem])["1818"]
    assert (got.max_rss_kb, got.elapsed_s, got.cpu_s) == (219624, 3.0, 0.35)
    assert transport.sacct_ids() == [["1818"]]
    clock.now += 60
    assert rt.usage([]) == {} and len(transport.ran) == 1  # nothing waits: no call


def test_usage_waits_until_every_step_has_ended(tmp_path: Path) -> None:
    transport, clock = FakeSlurm(USAGE_LIVE), Clock()
    rt = fake_runtime(tmp_path, transport, clock)
    steps, sleeper = job(tmp_path, "1819"), job(tmp_path, "1823")
    clock.now += 10
    rt.usage([steps, sleeper])  # first asked: settles first
    clock.now += slurm_runtime.USAGE_SETTLE_S
    assert rt.usage([steps, sleeper]) == {}  # allocation PENDING, steps RUNNING
    clock.now += 1.0
    assert rt.usage([steps, sleeper]) == {} and len(transport.sacct_ids()) == 1  # rate cap
    transport.sacct = USAGE_FINAL
    clock.now += slurm_runtime.USAGE_EVERY * 1.0
    got = rt.usage([steps, sleeper])
    assert got["1819"].max_rss_kb == 320612 and got["1823"].max_rss_kb == 3112
    assert transport.sacct_ids() == [["1819", "1823"]] * 2


def test_waiting_usage_rides_on_the_sacct_the_poll_makes(tmp_path: Path) -> None:
    transport, clock = FakeSlurm(), Clock()
    rt = fake_runtime(tmp_path, transport, clock)
    mem, gone = job(tmp_path, "1818"), job(tmp_path, "1821", exit_code=None)
    rt.poll([mem])
    rt.usage([mem])  # now awaited
    clock.now += 0.5  # before the settle time: no sacct of its own yet
    statuses = rt.poll([gone])  # left squeue without a marker: one sacct, 1818 rides along
    failed = statuses["1821"]
    assert failed.state is JobState.FAILED and failed.exit_code == 3
    assert (failed.max_rss_kb, failed.elapsed_s, failed.cpu_s) == (66100, 1.0, 0.216)
    assert transport.sacct_ids() == [["1821", "1818"]]
    clock.now += slurm_runtime.USAGE_SETTLE_S
    assert rt.usage([mem])["1818"].max_rss_kb == 219624
    assert len(transport.sacct_ids()) == 1  # one sacct for both


def test_usage_and_squeue_share_one_controller_call_per_interval(tmp_path: Path) -> None:
    """Steady state (DESIGN.md: one RPC per poll_interval): jobs running, others ending
    cleanly and waiting for their usage; rounds every 0.25 s for 60 s."""
    running = [job(tmp_path, f"20{i}", exit_code=None) for i in range(3)]
    sep = slurm_commands.SEP
    queue = "".join(f"{j.job_id}{sep}{j.token}{sep}RUNNING{sep}None{sep}"
                    f"2026-12-03T10:00:00{sep}N/A\n" for j in running)
    transport, clock = FakeSlurm(squeue=queue), Clock()
    rt = fake_runtime(tmp_path, transport, clock)
    ended: list[TrackedJob] = []
    for tick in range(240):
        if tick % 8 == 0:  # a job ends cleanly every 2 s
            ended.append(job(tmp_path, str(1000 + tick)))
        statuses = rt.poll([*running, *ended])
        assert all(statuses[j.job_id].state is JobState.RUNNING for j in running
                   if j.job_id in statuses)
        got = rt.usage(ended)
        ended = [j for j in ended if j.job_id not in got]
        clock.now += 0.25
    calls = [a[0] for a in transport.ran]
    assert len(calls) <= 60 / 1.0 + 1  # poll_interval 1.0: at most one call per second
    assert calls.count("squeue") >= 60 * 2 / 3 - 1  # usage takes at most every 3rd slot
    assert calls.count("sacct") >= 60 / slurm_runtime.USAGE_EVERY - 2  # and usage is asked


def test_no_accounting_no_usage_calls(tmp_path: Path) -> None:
    transport, clock = FakeSlurm(), Clock()
    rt = fake_runtime(tmp_path, transport, clock, accounting="none")
    mem = job(tmp_path, "1818")
    rt.poll([mem])
    clock.now += 60
    assert rt.usage([mem]) == {} and transport.sacct_ids() == []


# -- real workflows -------------------------------------------------------------------------

ALLOC = 'python3 -c "import time; b = bytearray(200 * 1024 * 1024); time.sleep(2)"'


def workflow(follow_s: float | None) -> str:
    """``mem`` holds 200 MiB for 2 s; with ``follow_s``, ``after`` runs that long after it
    (the bridge is still following the cluster when accounting has ``mem``'s record)."""
    text = ("name: usage\nspec:\n  activities:\n"
            f"    - name: mem\n      run: '{ALLOC}'\n      memoryLimit: 1Gi\n")
    if follow_s:
        text += f"    - name: after\n      run: sleep {follow_s}\n      dependsOn: [mem]\n"
    return text


def attempt_of(h: Harness, wf_id: int, name: str):  # noqa: ANN201 - AttemptRow
    act = next(a for a in h.store.activities(wf_id) if a.name == name)
    [attempt] = h.store.attempts(act.id)
    return attempt


@pytest.mark.slurm
def test_slurm_attempt_records_sacct_usage(harness, devslurm: ClusterConfig) -> None:
    h: Harness = harness(devslurm)
    wf_id = h.submit(workflow(follow_s=8))
    h.run(wf_id)
    assert h.states(wf_id) == {"mem": "COMPLETED", "after": "COMPLETED"}
    mem = attempt_of(h, wf_id, "mem")
    assert mem.max_rss_kb is not None and mem.max_rss_kb >= 150 * MIB, mem
    assert mem.elapsed_s is not None and mem.elapsed_s >= 2
    assert mem.cpu_s is not None
    after = attempt_of(h, wf_id, "after")  # the last job: its wall time at least, at once
    assert after.elapsed_s is not None and after.elapsed_s >= 7
    runtime = h.bridge.runtimes["devslurm"]
    assert runtime.calls["sacct"] <= runtime.calls["squeue"]  # never more sacct than squeue


@pytest.mark.slurm
def test_a_run_waits_a_moment_for_its_last_jobs_usage(harness, devslurm: ClusterConfig) -> None:
    """The last job ends through its marker; accounting has its MaxRSS a moment later: the
    run collects it before it returns (it used to return without it)."""
    h: Harness = harness(devslurm)
    wf_id = h.submit(workflow(follow_s=None))
    started = time.monotonic()
    h.run(wf_id)
    assert h.states(wf_id) == {"mem": "COMPLETED"}
    mem = attempt_of(h, wf_id, "mem")
    assert mem.max_rss_kb is not None and mem.max_rss_kb >= 150 * MIB, mem
    assert mem.cpu_s is not None
    runtime = h.bridge.runtimes["devslurm"]
    assert runtime.calls["sacct"] <= 1 + (time.monotonic() - started)  # ≤ 1 a second


def test_local_attempt_records_rusage(harness, tmp_path: Path) -> None:
    local = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")})
    h: Harness = harness(local)
    wf_id = h.submit(workflow(follow_s=None))
    h.run(wf_id)
    assert h.states(wf_id) == {"mem": "COMPLETED"}
    mem = attempt_of(h, wf_id, "mem")
    assert mem.max_rss_kb is not None and mem.max_rss_kb >= 150 * MIB, mem
    assert mem.elapsed_s is not None and mem.elapsed_s >= 2
    assert mem.cpu_s is not None and mem.cpu_s > 0


def test_a_local_job_adopted_after_a_restart_has_only_its_wall_time(tmp_path: Path) -> None:
    first = ProcessRuntime(LOCAL)
    req = request(tmp_path, "sleep 1")
    [submitted] = first.submit([req])
    job = TrackedJob(req.token, req.jobdir, submitted.job_id)
    again = ProcessRuntime(LOCAL)  # a restarted bridge: the job is not its child
    try:
        status = wait_end(again, job)
    finally:
        for proc in first._children.values():
            proc.wait(timeout=10)
    assert status.state is JobState.COMPLETED and status.elapsed_s is not None
    assert status.elapsed_s >= 1 and status.max_rss_kb is None and status.cpu_s is None


def test_a_local_job_seen_between_its_marker_and_its_exit_keeps_its_rusage(tmp_path: Path) -> None:
    """The EXIT trap writes the marker, then bash exits: a poll in between used to end the job
    without waiting for its process, so its rusage was lost (a CI failure of the test above).
    Here the marker is written 0.5 s before the process exits."""
    rt = ProcessRuntime(LOCAL)
    req = request(tmp_path, (
        "python3 -c 'b = bytearray(160 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096])'\n"
        "now=$(date +%s.%N); printf '0 %s %s - %s\\n' \"$now\" \"$now\" akb-test-1-step-1 "
        "> \"$AKB_JOBDIR/exitcode\"\n"
        "sleep 0.5"))
    [submitted] = rt.submit([req])
    job = TrackedJob(req.token, req.jobdir, submitted.job_id)
    deadline = time.monotonic() + 10
    while not (Path(req.jobdir) / "exitcode").exists():  # the early marker is there
        assert time.monotonic() < deadline
        time.sleep(0.01)
    early = rt.poll([job])[str(job.job_id)]
    assert early.state is JobState.RUNNING, early  # its process is still there
    status = wait_end(rt, job)
    assert status.state is JobState.COMPLETED, status
    assert status.max_rss_kb is not None and status.max_rss_kb >= 150 * MIB, status
    assert status.cpu_s is not None and status.cpu_s > 0
