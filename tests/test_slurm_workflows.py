"""Workflows end to end on the real test Slurm cluster (tests/cluster/setup.sh)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from conftest import Harness, Receiver, slurm
from runtimes.config import ClusterConfig

pytestmark = pytest.mark.slurm


def diamond(run_b: str = "echo b", hook: str | None = None) -> str:
    hooks = f"  webhooks:\n    - name: t\n      url: {hook}\n" if hook else ""
    return textwrap.dedent("""\
        name: diamond
        spec:
        {hooks}  activities:
            - name: a
              run: sleep 1; echo a
            - name: b
              run: {run_b}
              dependsOn: [a]
            - name: c
              run: sleep 1; echo c
              dependsOn: [a]
            - name: d
              run: echo d
              dependsOn: [b, c]
        """).format(hooks=hooks, run_b=run_b)


def test_diamond_runs_in_dependency_order(harness, devslurm: ClusterConfig) -> None:
    h: Harness = harness(devslurm)
    wf_id = h.submit(diamond())
    h.run(wf_id)
    acts = {a.name: a for a in h.store.activities(wf_id)}
    assert {n: a.state.value for n, a in acts.items()} == dict.fromkeys("abcd", "COMPLETED")
    assert h.store.workflow(wf_id).state.value == "COMPLETED"
    a, b, c, d = (acts[n] for n in "abcd")
    assert all(x.started_at and x.finished_at for x in (a, b, c, d))
    assert b.started_at >= a.finished_at and c.started_at >= a.finished_at
    assert d.started_at >= max(b.finished_at, c.finished_at)
    assert len({x.job_id for x in (a, b, c, d)}) == 4  # four distinct Slurm jobs


def test_failure_skips_dependents_and_reports(harness, devslurm, receiver: Receiver) -> None:
    h: Harness = harness(devslurm)
    wf_id = h.submit(diamond(run_b="echo failing; exit 3", hook=receiver.url))
    h.run(wf_id)
    acts = {a.name: a for a in h.store.activities(wf_id)}
    assert acts["b"].state.value == "FAILED" and acts["b"].exit_code == 3
    assert acts["c"].state.value == "COMPLETED"
    assert acts["d"].state.value == "SKIPPED" and "b" in (acts["d"].reason or "")
    assert h.store.attempts(acts["d"].id) == []  # never submitted
    token_prefix = f"akb-{h.store.instance}-{wf_id}-{acts['d'].id}-"
    names = slurm("sacct", "-X", "-n", "-P", "-S", "now-1hour", "-o", "JobName")
    assert not any(n.startswith(token_prefix) for n in names.split())
    assert h.store.workflow(wf_id).state.value == "FAILED"

    h.deliver_all()
    receiver.wait_for(5)
    done = receiver.of_type("ACTIVITY_COMPLETED")
    by_name = {e["data"]["Name"]: e["data"] for e in done}
    assert by_name["b"]["Status"] == 3 and by_name["b"]["ExitCode"] == 3
    assert by_name["b"]["State"] == "FAILED"
    assert by_name["d"]["Status"] == 8 and by_name["d"]["State"] == "SKIPPED"
    assert by_name["a"]["Status"] == 1
    [wf_done] = receiver.of_type("WORKFLOW_DONE")
    assert wf_done["data"]["Status"] == 3 and wf_done["data"]["State"] == "FAILED"
    # every ACTIVITY_COMPLETED arrives before WORKFLOW_DONE
    assert receiver.requests[-1].body["type"] == "WORKFLOW_DONE"


def _wait_running(h: Harness, wf_id: int, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h.bridge.cycle()
        act = next(a for a in h.store.activities(wf_id) if a.name == name)
        if act.state.value == "RUNNING":
            return str(act.job_id)
        time.sleep(0.1)
    raise AssertionError(f"{name} never ran")


def test_scancel_gives_cancelled(harness, devslurm) -> None:
    h: Harness = harness(devslurm)
    wf_id = h.submit("name: c\nspec:\n  activities:\n    - name: long\n      run: sleep 300\n")
    job_id = _wait_running(h, wf_id, "long")
    slurm("scancel", job_id)
    h.run(wf_id, timeout=60)
    [act] = h.store.activities(wf_id)
    assert act.state.value == "CANCELLED"
    assert h.store.workflow(wf_id).state.value == "CANCELLED"


@pytest.mark.slow
def test_time_limit_gives_timeout(harness, devslurm_local) -> None:
    one_minute = devslurm_local.model_copy(update={
        "slurm": devslurm_local.slurm.model_copy(update={"default_time": "1"})})
    h: Harness = harness(one_minute)
    wf_id = h.submit("name: t\nspec:\n  activities:\n    - name: slow\n      run: sleep 120\n")
    h.run(wf_id, timeout=200)
    [act] = h.store.activities(wf_id)
    assert act.state.value == "TIMEOUT", act
    assert act.finished_at and act.started_at
    assert 55 <= (act.finished_at - act.started_at).total_seconds() <= 150


TRICKY = "quotes ' \" and $HOME and `hostname` and \\ back\\slash\n\ttab, ünïcødé ✓ 日本\n"


def test_run_text_reaches_the_job_byte_exact(harness, devslurm, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "heredoc.txt", tmp_path / "expanded.txt"
    run = (
        f"cat > {out1} <<'AKB_EOF'\n{TRICKY}AKB_EOF\n"
        f"x='a  b'; printf '%s|%s|%s\\n' \"$x\" `echo tick` \"$(echo 'sub $x')\" > {out2}\n"
    )
    import yaml

    doc = {"name": "bytes", "spec": {"activities": [{"name": "echo", "run": run}]}}
    h: Harness = harness(devslurm)
    wf_id = h.submit(yaml.safe_dump(doc, allow_unicode=True))
    h.run(wf_id)
    [act] = h.store.activities(wf_id)
    assert act.state.value == "COMPLETED", act.reason
    assert out1.read_bytes() == TRICKY.encode("utf-8")
    assert out2.read_text() == "a  b|tick|sub $x\n"
    [attempt] = h.store.attempts(act.id)
    assert Path(attempt.jobdir, "command.sh").read_bytes() == run.encode("utf-8")


def test_fifty_in_flight_one_squeue_per_cycle(harness, devslurm) -> None:
    acts = "".join(f"    - name: s{i}\n      run: sleep 4\n" for i in range(50))
    h: Harness = harness(devslurm)
    wf_id = h.submit(f"name: wide\nspec:\n  activities:\n{acts}")
    per_cycle: list[tuple[int, int, int]] = []
    in_flight_max = 0

    def count() -> None:
        nonlocal in_flight_max
        rt = h.bridge.runtimes.get(devslurm.name)
        if rt is None:
            return
        per_cycle.append((rt.calls["squeue"], rt.calls["sacct"], rt.calls["scontrol"]))
        in_flight_max = max(in_flight_max, len(h.store.live_attempts()))

    h.run(wf_id, on_cycle=count)
    assert set(h.states(wf_id).values()) == {"COMPLETED"}
    assert in_flight_max == 50
    deltas = [
        tuple(b - a for a, b in zip(prev, cur, strict=True))
        for prev, cur in zip([(0, 0, 0), *per_cycle], per_cycle, strict=False)
    ]
    assert max(d[0] for d in deltas) == 1  # never more than one squeue in a cycle
    assert max(d[1] for d in deltas) <= 1 and max(d[2] for d in deltas) <= 1
    rt = h.bridge.runtimes[devslurm.name]
    assert rt.calls["sbatch"] == 50
    # the poll interval, not the number of jobs, sets the squeue rate
    assert rt.calls["squeue"] < 60


def test_without_accounting_markers_and_scontrol_decide(harness, devslurm) -> None:
    no_acct = devslurm.slurm.model_copy(update={"accounting": "none"})
    h: Harness = harness(devslurm.model_copy(update={"slurm": no_acct}))
    wf_id = h.submit(diamond(run_b="exit 3"))
    h.run(wf_id)
    assert h.states(wf_id) == {"a": "COMPLETED", "b": "FAILED", "c": "COMPLETED", "d": "SKIPPED"}
    assert next(a for a in h.store.activities(wf_id) if a.name == "b").exit_code == 3

    held = no_acct.model_copy(update={"extra_options": ("--hold",)})
    h2: Harness = harness(devslurm.model_copy(update={"slurm": held}))
    wf2 = h2.submit("name: h\nspec:\n  activities:\n    - name: held\n      run: 'true'\n")
    deadline = time.monotonic() + 30
    while not (job := h2.store.activities(wf2)[0].job_id) and time.monotonic() < deadline:
        h2.bridge.cycle()
    assert job, "the held job was never submitted"
    slurm("scancel", str(job))  # cancelled while pending: no marker is ever written
    h2.run(wf2, timeout=60)
    [act] = h2.store.activities(wf2)
    assert act.state.value == "CANCELLED"
    calls = h.bridge.runtimes[devslurm.name].calls + h2.bridge.runtimes[devslurm.name].calls
    assert calls["sacct"] == 0 and calls["scontrol"] >= 1
