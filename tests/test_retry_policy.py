"""The akobridge extensions ``retry`` and ``timeLimit`` (docs/akoflow-extensions.md): strict
validation with field paths and lines, activity > workflow > cluster > no retry field by field,
real retries on the local runtime (counter files), backoff, exit-code filters, time limits in
the rendered ``#SBATCH --time`` and enforced by the local runtime."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_cli import Cli, no_traceback

from bridge.engine import MAX_RETRY_DELAY_S, ActivityState, ActivityView, observe
from bridge.jobs import render_step
from bridge.spec import Problem, SpecError, parse_akoflow
from bridge.spec.model import RetryPolicy
from bridge.spec.quantities import parse_backoff_s, parse_duration_s, parse_time_limit_s
from conftest import Harness
from runtimes import JobRequest, JobState, JobStatus, TrackedJob
from runtimes.config import ClusterConfig, ContainerSettings, SlurmSettings
from runtimes.process import ProcessRuntime, slurm_time_s


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "clusters").mkdir()
    return Cli(tmp_path / "state", tmp_path / "clusters", tmp_path)


def cluster(name: str = "box", *, default_time: str = "01:00:00",
            retry: dict[str, object] | None = None) -> ClusterConfig:
    """A ``kind: process`` cluster (local processes, no container), polled often."""
    return ClusterConfig.model_validate({
        "name": name, "kind": "process", "container": ContainerSettings(engine="none"),
        "slurm": SlurmSettings(default_time=default_time, poll_interval=0.1,
                               marker_interval=0.05),
        "retry": retry or {},
    })


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        parse_akoflow(text)
    return info.value.problems


def doc(activity: str = "", spec: str = "") -> str:
    """One activity ``a``; ``spec`` lines start at line 4, ``activity`` lines at line 7 + the
    number of ``spec`` lines."""
    return (f"name: wf\nspec:\n  runtime: local\n{spec}  activities:\n    - name: a\n"
            f"      run: echo a\n{activity}")


def flaky(tmp_path: Path, succeed_on: int, exit_code: int = 1, name: str = "flaky") -> str:
    """A command that fails (``exit_code``) until its ``succeed_on``-th run; each run appends
    its start time (epoch seconds) to ``<name>.times``."""
    counter, times = tmp_path / f"{name}.count", tmp_path / f"{name}.times"
    return (f"date +%s.%N >> {times}; n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); "
            f"echo $n > {counter}; echo run $n; [ $n -ge {succeed_on} ] || exit {exit_code}")


def starts(tmp_path: Path, name: str = "flaky") -> list[float]:
    path = tmp_path / f"{name}.times"
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def one_activity(run: str, retry: str = "", spec: str = "", extra: str = "") -> str:
    return (f"name: r\nspec:\n{spec}  activities:\n    - name: a\n      run: {run!r}\n"
            f"{retry}{extra}")


# --- parsing and precedence within the file ---------------------------------------------------


def test_workflow_default_and_activity_override_field_by_field() -> None:
    text = doc(
        spec="  timeLimit: 2h\n"
             "  retry: {retries: 2, backoff: 10s, factor: 3, exitCodes: [1, 137]}\n",
        activity="    - name: b\n      run: echo b\n      timeLimit: 90\n"
                 "      retry: {retries: 5, exitCodes: []}\n"
                 "    - name: c\n      run: echo c\n      retry: {}\n      timeLimit: 1.5m\n",
    )
    wf = parse_akoflow(text).workflow
    a, b, c = wf.steps
    assert a.retry == RetryPolicy(retries=2, backoff_s=10.0, factor=3.0, exit_codes=(1, 137),
                                  given=("backoff_s", "exit_codes", "factor", "retries"))
    assert a.resources.time_limit_s == 7200
    assert (b.retry.retries, b.retry.backoff_s, b.retry.factor, b.retry.exit_codes) == (
        5, 10.0, 3.0, ())  # the activity wins where it says something, the rest is inherited
    assert b.resources.time_limit_s == 90
    assert c.retry == a.retry and c.resources.time_limit_s == 90


def test_nothing_set_means_no_retry_and_the_cluster_time() -> None:
    [step] = parse_akoflow(doc()).workflow.steps
    assert step.retry == RetryPolicy() and step.retry.retries == 0 and step.retry.given == ()
    assert step.resources.time_limit_s is None


def test_duplicate_and_zero_exit_codes_warn_and_are_deduplicated() -> None:
    parsed = parse_akoflow(doc(activity="      retry: {retries: 1, exitCodes: [2, 2, 0]}\n"))
    assert parsed.workflow.steps[0].retry.exit_codes == (2, 0)
    assert [(w.path, w.line) for w in parsed.warnings] == [
        ("spec.activities[0].retry.exitCodes[1]", 7),
        ("spec.activities[0].retry.exitCodes[2]", 7),
    ]
    assert "listed twice" in parsed.warnings[0].message
    assert "0 is success" in parsed.warnings[1].message


@pytest.mark.parametrize(
    ("spec", "activity", "path", "line", "fragment"),
    [
        ("  retry: {retries: 21}\n", "", "spec.retry.retries", 4, "from 0 to 20, not int 21"),
        ("  retry: {retries: -1}\n", "", "spec.retry.retries", 4, "from 0 to 20"),
        ("", "      retry: {retries: true}\n", "spec.activities[0].retry.retries", 7,
         "not true"),
        ("", "      retry: {retries: '2'}\n", "spec.activities[0].retry.retries", 7,
         "not the string '2'"),
        ("", "      retry: {retries: 1.5}\n", "spec.activities[0].retry.retries", 7,
         "whole number"),
        ("  retry: {backoff: -1s}\n", "", "spec.retry.backoff", 4, "cannot be negative"),
        ("  retry: {backoff: 2d}\n", "", "spec.retry.backoff", 4, "too long (at most 1d)"),
        ("  retry: {backoff: soon}\n", "", "spec.retry.backoff", 4, "not a duration: 'soon'"),
        ("  retry: {factor: 0.5}\n", "", "spec.retry.factor", 4, "from 1 to 10"),
        ("  retry: {factor: 11}\n", "", "spec.retry.factor", 4, "from 1 to 10"),
        ("  retry: {factor: '2'}\n", "", "spec.retry.factor", 4, "not the string '2'"),
        ("", "      retry: {exitCodes: 1}\n", "spec.activities[0].retry.exitCodes", 7,
         "must be a list"),
        ("", "      retry: {exitCodes: [1, 256]}\n", "spec.activities[0].retry.exitCodes[1]", 7,
         "from 0 to 255, not int 256"),
        ("", "      retry: {exitCodes: [-1]}\n", "spec.activities[0].retry.exitCodes[0]", 7,
         "from 0 to 255"),
        ("", "      retry: {exitCodes: [false]}\n", "spec.activities[0].retry.exitCodes[0]", 7,
         "not false"),
        ("", "      retry: 3\n", "spec.activities[0].retry", 7, "expected a mapping, got int 3"),
        ("  retry: [1]\n", "", "spec.retry", 4, "expected a mapping"),
        ("", "      retry:\n        retires: 2\n", "spec.activities[0].retry.retires", 8,
         "unknown field 'retires'; did you mean 'retries'?"),
        ("", "      retry: {exit_codes: [1]}\n", "spec.activities[0].retry.exit_codes", 7,
         "did you mean 'exitCodes'?"),
        ("", "      retry: {retries: 1, jitter: 1}\n", "spec.activities[0].retry.jitter", 7,
         "allowed here: retries, backoff, factor, exitCodes"),
        ("  timeLimit: 0\n", "", "spec.timeLimit", 4, "must be positive"),
        ("  timeLimit: 0s\n", "", "spec.timeLimit", 4, "must be positive"),
        ("", "      timeLimit: -5m\n", "spec.activities[0].timeLimit", 7, "cannot be negative"),
        ("", "      timeLimit: 400d\n", "spec.activities[0].timeLimit", 7, "at most 365d"),
        ("", "      timeLimit: '01:30:00'\n", "spec.activities[0].timeLimit", 7,
         "clock notation is not accepted"),
        ("", "      timeLimit: 30m1h\n", "spec.activities[0].timeLimit", 7, "not a duration"),
        ("", "      timeLimit: true\n", "spec.activities[0].timeLimit", 7, "not a duration: true"),
        ("", "      timelimit: 5m\n", "spec.activities[0].timelimit", 7,
         "did you mean 'timeLimit'?"),
    ],
)
def test_each_bad_value_names_its_field_and_line(spec: str, activity: str, path: str, line: int,
                                                 fragment: str) -> None:
    [problem] = problems_of(doc(activity=activity, spec=spec))
    assert (problem.path, problem.line) == (path, line), problem
    assert fragment in problem.message, problem


def test_retry_at_the_top_level_points_under_spec() -> None:
    [problem] = problems_of("name: wf\nretry: {retries: 1}\nspec:\n  activities:\n"
                            "    - name: a\n      run: echo a\n")
    assert (problem.path, problem.line) == ("retry", 2)
    assert "did you mean 'spec.retry'" in problem.message


def test_every_bad_field_is_reported_at_once() -> None:
    problems = problems_of(doc(
        spec="  retry: {retries: 99, factor: 0}\n",
        activity="      timeLimit: never\n      retry: {backoff: x, exitCodes: [1, 999]}\n"))
    assert [p.path for p in problems] == [
        "spec.retry.factor", "spec.retry.retries", "spec.activities[0].timeLimit",
        "spec.activities[0].retry.backoff", "spec.activities[0].retry.exitCodes[1]"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90), (1.5, 1.5), ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
     ("1h30m", 5400), ("1d", 86400), ("1.5h", 5400), ("1d2h3m4s", 93784), (" 10s ", 10),
     (0, 0), ("0s", 0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration_s(value) == seconds


@pytest.mark.parametrize("value", ["", "s", "10 s", "5ms", "1h1h", "30m1h", "1w", "1e3",
                                   None, True, [1], float("inf"), float("nan")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(value)


def test_time_limit_rounds_up_to_whole_seconds_and_backoff_may_be_zero() -> None:
    assert parse_time_limit_s("0.2s") == 1 and parse_time_limit_s(59.5) == 60
    assert parse_backoff_s(0) == 0.0 and parse_backoff_s("1.5s") == 1.5
    assert parse_backoff_s("1d") == 86400.0


def test_validate_cli_exits_2_with_field_and_line(cli: Cli) -> None:
    path = cli.write("bad.yaml", doc(activity="      retry: {retries: 50, backoff: -3}\n"))
    res = cli("validate", path)
    no_traceback(res)
    assert res.returncode == 2
    assert f"{path}: spec.activities[0].retry.retries (line 7): retries must be a whole " \
        "number from 0 to 20, not int 50" in res.stderr
    assert "spec.activities[0].retry.backoff (line 7): a duration cannot be negative" in res.stderr
    res = cli("run", path)
    assert res.returncode == 2 and "retry.retries (line 7)" in res.stderr
    assert cli.workflows() == []


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("retry: {retries: 21}", "retry.retries: Input should be less than or equal to 20"),
        ("retry: {retries: true}", "retry.retries: Input should be a valid integer"),
        ("retry: {backoff: -1}", "retry.backoff: Input should be greater than or equal to 0"),
        ("retry: {backoff: 10s}", "retry.backoff: Input should be a valid number"),
        ("retry: {factor: 0.5}", "retry.factor: Input should be greater than or equal to 1"),
        ("retry: {exit_codes: [300]}", "retry.exit_codes: exit codes are whole"),
        ("retry: {exit_codes: 1}", "retry.exit_codes: must be a list"),
        ("retry: {retires: 1}", "retry.retires: Extra inputs are not permitted"),
    ],
)
def test_bad_cluster_retry_defaults_name_the_field(cli: Cli, section: str,
                                                   fragment: str) -> None:
    (cli.clusters / "box.yaml").write_text(f"name: box\nkind: process\n{section}\n")
    res = cli("validate", cli.write("ok.yaml", doc()))
    no_traceback(res)
    assert res.returncode == 2
    assert f"box.yaml: {fragment}" in res.stderr, res.stderr


# --- the engine --------------------------------------------------------------------------------


def test_backoff_grows_by_factor_and_is_capped_at_a_day() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    failed = JobStatus(JobState.FAILED, 1)
    policy = RetryPolicy(retries=20, backoff_s=3, factor=2)
    for attempt, delay in ((1, 3), (2, 6), (3, 12)):
        tr = observe(ActivityView("a", ActivityState.RUNNING, attempt=attempt, retry=policy),
                     failed, now)
        assert tr.state is ActivityState.RETRY_WAIT and tr.retry_at is not None
        assert (tr.retry_at - now).total_seconds() == delay
    huge = RetryPolicy(retries=20, backoff_s=86400, factor=10)
    tr = observe(ActivityView("a", ActivityState.RUNNING, attempt=20, retry=huge), failed, now)
    assert tr.retry_at is not None and (tr.retry_at - now).total_seconds() == MAX_RETRY_DELAY_S
    tr = observe(ActivityView("a", ActivityState.RUNNING, attempt=21, retry=huge), failed, now)
    assert tr.state is ActivityState.FAILED


def test_cluster_defaults_fill_only_what_the_file_left_open() -> None:
    text = doc(spec="  retry: {exitCodes: [7]}\n",
               activity="      retry: {backoff: 1}\n    - name: b\n      run: echo b\n"
                        "      runtime: other\n")
    wf = parse_akoflow(text).workflow
    per_cluster = {"local": {"retries": 4, "backoff_s": 30.0, "exit_codes": (1,)},
                   "other": {"retries": 1, "factor": 5.0}}
    a, b = wf.with_retry_defaults(lambda name: per_cluster[name]).steps
    assert (a.retry.retries, a.retry.backoff_s, a.retry.factor, a.retry.exit_codes) == (
        4, 1.0, 2.0, (7,))
    assert (b.retry.retries, b.retry.backoff_s, b.retry.factor, b.retry.exit_codes) == (
        1, 5.0, 5.0, (7,))


# --- real retries on the local runtime ---------------------------------------------------------


def attempts(h: Harness, wf_id: int, name: str = "a") -> list[tuple[str, int | None]]:
    [act] = [a for a in h.store.activities(wf_id) if a.name == name]
    return [(t.state.value, t.exit_code) for t in h.store.attempts(act.id)]


def test_two_failures_then_success_with_two_retries(harness: Callable[..., Harness],
                                                    tmp_path: Path) -> None:
    h = harness(cluster())
    wf_id = h.submit(one_activity(flaky(tmp_path, 3), "      retry: {retries: 2, backoff: 0}\n"))
    h.run(wf_id, timeout=60)
    assert h.store.workflow(wf_id).state.value == "COMPLETED"
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.attempt) == ("COMPLETED", 3)
    assert attempts(h, wf_id) == [("FAILED", 1), ("FAILED", 1), ("COMPLETED", 0)]
    assert len(starts(tmp_path)) == 3


def test_one_retry_is_not_enough(harness: Callable[..., Harness], tmp_path: Path) -> None:
    h = harness(cluster())
    wf_id = h.submit(one_activity(flaky(tmp_path, 3), "      retry: {retries: 1, backoff: 0}\n"))
    h.run(wf_id, timeout=60)
    assert h.store.workflow(wf_id).state.value == "FAILED"
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.attempt, act.exit_code) == ("FAILED", 2, 1)
    assert attempts(h, wf_id) == [("FAILED", 1), ("FAILED", 1)]
    assert (tmp_path / "flaky.count").read_text().strip() == "2"


def test_exit_codes_filter_which_failures_are_retried(harness: Callable[..., Harness],
                                                      tmp_path: Path) -> None:
    h = harness(cluster())
    text = (
        "name: codes\nspec:\n  retry: {retries: 2, backoff: 0}\n  activities:\n"
        f"    - name: listed\n      run: {flaky(tmp_path, 3, 3, 'listed')!r}\n"
        "      retry: {exitCodes: [3, 4]}\n"
        f"    - name: unlisted\n      run: {flaky(tmp_path, 3, 3, 'unlisted')!r}\n"
        "      retry: {exitCodes: [1]}\n"
    )
    wf_id = h.submit(text)
    h.run(wf_id, timeout=60)
    assert h.states(wf_id) == {"listed": "COMPLETED", "unlisted": "FAILED"}
    assert attempts(h, wf_id, "listed") == [("FAILED", 3), ("FAILED", 3), ("COMPLETED", 0)]
    assert attempts(h, wf_id, "unlisted") == [("FAILED", 3)]
    assert len(starts(tmp_path, "unlisted")) == 1


def test_backoff_is_waited_and_grows_by_factor(harness: Callable[..., Harness],
                                               tmp_path: Path) -> None:
    h = harness(cluster())
    wf_id = h.submit(one_activity(flaky(tmp_path, 3),
                                  "      retry: {retries: 2, backoff: 1s, factor: 2}\n"))
    h.run(wf_id, timeout=60)
    assert h.states(wf_id) == {"a": "COMPLETED"}
    t1, t2, t3 = starts(tmp_path)
    assert t2 - t1 >= 1.0, (t1, t2)
    assert t3 - t2 >= 2.0, (t2, t3)
    assert t3 - t1 < 15  # waited, but not absurdly long


def test_cluster_default_applies_when_the_file_sets_none(harness: Callable[..., Harness],
                                                         tmp_path: Path) -> None:
    h = harness(cluster(retry={"retries": 2, "backoff": 0, "exit_codes": [1]}))
    wf_id = h.submit(one_activity(flaky(tmp_path, 3)))
    [act] = h.store.activities(wf_id)
    assert act.spec.retry.retries == 2 and act.spec.retry.exit_codes == (1,)  # as stored
    h.run(wf_id, timeout=60)
    assert h.states(wf_id) == {"a": "COMPLETED"}
    assert [s for s, _ in attempts(h, wf_id)] == ["FAILED", "FAILED", "COMPLETED"]


def test_the_file_overrides_the_cluster(harness: Callable[..., Harness],
                                        tmp_path: Path) -> None:
    h = harness(cluster(retry={"retries": 5, "backoff": 0}))
    no_retry = h.submit(one_activity(flaky(tmp_path, 3, name="once"),
                                     "      retry: {retries: 0}\n"))
    workflow_level = h.submit(
        one_activity(flaky(tmp_path, 3, 1, "wl"), spec="  retry: {exitCodes: [9]}\n"))
    for wf_id in (no_retry, workflow_level):
        h.run(wf_id, timeout=60)
    assert attempts(h, no_retry) == [("FAILED", 1)]
    # spec.retry names the exit codes; the number of retries still comes from the cluster
    [act] = h.store.activities(workflow_level)
    assert (act.spec.retry.retries, act.spec.retry.exit_codes) == (5, (9,))
    assert attempts(h, workflow_level) == [("FAILED", 1)]  # exit 1 is not in [9]


def test_run_cli_applies_the_cluster_default(cli: Cli, tmp_path: Path) -> None:
    (cli.clusters / "box.yaml").write_text(
        "name: box\nkind: process\ncontainer: {engine: none}\n"
        "slurm: {poll_interval: 0.1, marker_interval: 0.05}\nretry: {retries: 2, backoff: 0}\n")
    path = cli.write("wf.yaml", one_activity(flaky(tmp_path, 3), spec="  runtime: box\n"))
    res = cli("run", path, "--webhook-wait", "0", columns=200)
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    assert cli.workflows() == [(1, "r", "COMPLETED")]
    assert len(starts(tmp_path)) == 3


# --- time limits ---------------------------------------------------------------------------------


def test_time_limit_reaches_the_rendered_sbatch_time(cli: Cli) -> None:
    (cli.clusters / "hpc.yaml").write_text(
        "name: hpc\ncontainer: {engine: none}\nslurm: {default_time: '00:20:00'}\n")
    text = ("name: t\nspec:\n  runtime: hpc\n  timeLimit: 2h\n  activities:\n"
            "    - name: own\n      run: echo own\n      timeLimit: 90s\n"
            "    - name: inherits\n      run: echo inherits\n")
    res = cli("render", cli.write("t.yaml", text))
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    own, inherits = res.stdout.split("# ---- inherits ----")
    assert "#SBATCH --time=0-00:02:00\n" in own  # rounded up to whole minutes
    assert "#SBATCH --time=0-02:00:00\n" in inherits
    res = cli("render", cli.write("n.yaml", text.replace("  timeLimit: 2h\n", "")))
    assert "#SBATCH --time=00:20:00\n" in res.stdout.split("# ---- inherits ----")[1]


@pytest.mark.parametrize(("text", "seconds"), [
    ("1", 60), ("0:03", 3), ("1:30", 90), ("01:00:00", 3600), ("2-0", 172800),
    ("1-2:3", 93780), ("1-02:03:04", 93784), ("0-00:01:00", 60),
    ("0", None), ("UNLIMITED", None), ("INFINITE", None), ("x", None), ("1:2:3:4", None),
])
def test_slurm_time_notation(text: str, seconds: int | None) -> None:
    assert slurm_time_s(text) == seconds


def test_local_runtime_times_out_a_job_over_its_limit(harness: Callable[..., Harness],
                                                      tmp_path: Path) -> None:
    h = harness(cluster(default_time="0:02"))  # Slurm's MM:SS: two seconds
    child = tmp_path / "child.pid"
    wf_id = h.submit(one_activity(f"sleep 300 & echo $! > {child}; wait",
                                  "      retry: {retries: 1, backoff: 0}\n"))
    began = time.monotonic()
    h.run(wf_id, timeout=60)
    assert time.monotonic() - began < 20
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.attempt, act.reason) == ("TIMEOUT", 2, "time limit reached")
    assert attempts(h, wf_id) == [("TIMEOUT", 143), ("TIMEOUT", 143)]  # a timeout is retried
    assert h.store.workflow(wf_id).state.value == "FAILED"
    pid = int(child.read_text())
    deadline = time.monotonic() + 5  # the job's whole process group is gone (a zombie that
    while not dead(pid) and time.monotonic() < deadline:  # waits for its reaper is dead)
        time.sleep(0.05)
    assert dead(pid), f"pid {pid} of the timed-out job is still running"


def dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_job_ignoring_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch,
                                          harness: Callable[..., Harness]) -> None:
    monkeypatch.setattr("runtimes.process.KILL_WAIT_S", 1.0)
    h = harness(cluster(default_time="0:01"))
    wf_id = h.submit(one_activity("trap '' TERM; sleep 300"))
    h.run(wf_id, timeout=60)
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.exit_code) == ("TIMEOUT", 128 + signal.SIGKILL)


def test_a_restarted_bridge_still_enforces_the_limit(tmp_path: Path) -> None:
    box = cluster(default_time="0:02")
    text = "name: wf\nspec:\n  activities:\n    - name: a\n      run: sleep 300\n"
    wf = parse_akoflow(text).workflow
    jobdir = str(tmp_path / "jobs" / "a" / "1")
    rendered = render_step(wf, wf.steps[0], box, workflow_id=1, token="akb-t-1-1-1",
                           jobdir=jobdir, attempt=1)
    first = ProcessRuntime(box)
    [sub] = first.submit([JobRequest("akb-t-1-1-1", jobdir, rendered.script, rendered.files)])
    assert sub.job_id is not None
    job = TrackedJob("akb-t-1-1-1", jobdir, sub.job_id)
    assert first.poll([job])[sub.job_id].state is JobState.RUNNING
    second = ProcessRuntime(box)  # the bridge restarted: nothing in memory about the job
    deadline = time.monotonic() + 20
    status = second.poll([job])[sub.job_id]
    while not status.state.terminal and time.monotonic() < deadline:
        time.sleep(0.1)
        status = second.poll([job])[sub.job_id]
    assert (status.state, status.exit_code) == (JobState.TIMEOUT, 143)
    assert status.reason == "time limit reached"
    assert second.calls["timeout"] == 1 and first.calls["timeout"] == 0
    first._children.pop(sub.job_id).wait(timeout=5)


@pytest.mark.slow
def test_time_limit_from_the_file_is_enforced_locally(harness: Callable[..., Harness]) -> None:
    """``timeLimit: 5s`` renders as one minute (Slurm's granularity), enforced as such."""
    h = harness(cluster())
    wf_id = h.submit(one_activity("sleep 300", extra="      timeLimit: 5s\n"))
    h.run(wf_id, timeout=120)
    [act] = h.store.activities(wf_id)
    assert act.state.value == "TIMEOUT"
    assert act.started_at and act.finished_at
    assert 58 <= (act.finished_at - act.started_at).total_seconds() <= 75


# --- the documentation ---------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "akoflow-extensions.md"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "retry.yaml"


def doc_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]


def test_documented_workflows_parse_as_described() -> None:
    workflows = [b for b in doc_blocks() if b.startswith("name:") and "activities:" in b]
    assert len(workflows) == 2
    retry, limits = (parse_akoflow(b).workflow for b in workflows)
    fetch, train = retry.steps
    assert (fetch.retry.retries, fetch.retry.backoff_s, fetch.retry.factor,
            fetch.retry.exit_codes) == (5, 30.0, 2.0, (1, 137))
    assert (train.retry.retries, train.retry.exit_codes) == (0, (1, 137))
    assert [s.resources.time_limit_s for s in limits.steps] == [90, 7200]


def test_documented_cluster_retry_section_is_valid() -> None:
    import yaml

    [block] = [b for b in doc_blocks() if "exit_codes:" in b]
    data = yaml.safe_load(block)
    box = cluster(retry=data["retry"])
    assert box.retry.policy() == {"retries": 2, "backoff_s": 60.0, "factor": 2.0,
                                  "exit_codes": (137,)}


def test_documented_error_lines_are_what_validate_prints(cli: Cli) -> None:
    text = DOC.read_text(encoding="utf-8")
    shown = [line.removeprefix("error: wf.yaml: ") for line in text.splitlines()
             if line.startswith("error: wf.yaml: ")]
    path = cli.write("wf.yaml", "name: wf\nspec:\n  runtime: local\n  timeLimit: \"01:30:00\"\n"
                     "  activities:\n    - name: a\n      run: echo a\n      retry:\n"
                     "        retries: 50\n        exit_codes: [1]\n")
    res = cli("validate", path)
    assert res.returncode == 2
    printed = [line.removeprefix(f"error: {path}: ") for line in res.stderr.splitlines()]
    assert printed == shown


def test_the_example_runs_with_one_retry(cli: Cli) -> None:
    res = cli("run", EXAMPLE, "--webhook-wait", "0", columns=200)
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    assert cli.workflows() == [(1, "retry-example", "COMPLETED")]
    rows = {line.split("│")[1].strip(): line.split("│")[6].strip()
            for line in res.stdout.splitlines() if line.startswith("│")}
    assert rows == {"flaky": "2", "quick": "1"}  # the try column
