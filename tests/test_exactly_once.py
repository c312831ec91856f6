"""Every activity runs exactly once and is reported truthfully: under load with staggered
ends on the embedded default, and with the bridge interrupted (SIGINT) or killed (SIGKILL) at
random instants again and again, on the local runtime and on the real Slurm.

Executions are counted from inside the jobs (each appends its name to a file); on Slurm the
job names in sacct/squeue are counted as well.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from conftest import REPO, SLURM_CONF
from runtimes.config import LOCAL, ClusterConfig, Clusters

STAGGER = (0.0, 0.05, 0.4, 0.1, 2.5 / 4, 0.2, 0.01, 0.3)


def staggered(name: str, count: int, runs: Path, parents_every: int = 0) -> str:
    """A workflow of ``count`` activities whose ends are spread out; each job appends its name
    to ``runs``. With ``parents_every`` = k, activity i depends on activity i - k."""
    acts = []
    for i in range(count):
        act: dict[str, object] = {
            "name": f"a{i}", "run": f"echo a{i} >> {runs}; sleep {STAGGER[i % len(STAGGER)]}"}
        if parents_every and i >= parents_every:
            act["dependsOn"] = [f"a{i - parents_every}"]
        acts.append(act)
    return yaml.safe_dump({"name": name, "spec": {"activities": acts}})


def executions(runs: Path) -> Counter[str]:
    return Counter(runs.read_text().split()) if runs.exists() else Counter()


def test_300_staggered_local_activities_no_false_failure(tmp_path: Path) -> None:
    """The race that made finished jobs look dead: three rounds of 300 activities ending at
    staggered instants; every one COMPLETED once, with a true (non-zero) duration."""
    local = LOCAL.model_copy(update={"max_running": 100})
    for round_ in range(3):
        state = tmp_path / f"state{round_}"
        runs = tmp_path / f"runs{round_}"
        store = Store(state / "akobridge.db")
        bridge = Bridge(store, Clusters([local]), state)
        wf_id = bridge.submit(parse_akoflow(staggered("stress", 300, runs)).workflow)
        try:
            bridge.run([wf_id], idle_s=0.02, timeout_s=240)
        finally:
            bridge.close()
        acts = store.activities(wf_id)
        bad = {a.name: (a.state.value, a.reason) for a in acts if a.state.value != "COMPLETED"}
        assert not bad, f"round {round_}: {bad}"
        assert set(executions(runs).values()) == {1} and len(executions(runs)) == 300
        for a in acts:
            assert a.attempt == 1, a
            assert a.started_at and a.finished_at
            took = (a.finished_at - a.started_at).total_seconds()
            want = STAGGER[int(a.name[1:]) % len(STAGGER)]
            assert took >= want * 0.9 and (want == 0.0 or took > 0.0), (a.name, took)
        assert store.workflow(wf_id).state.value == "COMPLETED"  # type: ignore[union-attr]
        store.close()


def _cli(state: Path, clusters: Path | None) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "SLURM_CONF": SLURM_CONF}
    env.pop("AKOBRIDGE_CLUSTERS_DIR", None)
    cli = [sys.executable, "-m", "bridge", "--state-dir", str(state)]
    if clusters is not None:
        cli += ["--clusters-dir", str(clusters)]
    return cli, env


def interrupt_again_and_again(tmp_path: Path, wf_text: str, rounds: int,
                              clusters: Path | None = None, seed: int = 11) -> Store:
    """``run``, then ``rounds`` times: wait a random instant, SIGINT or SIGKILL the bridge,
    ``resume``; finally let a ``resume`` finish. The finished store."""
    state = tmp_path / "state"
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(wf_text)
    cli, env = _cli(state, clusters)
    rng = random.Random(seed)
    quiet = {"env": env, "cwd": REPO, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen([*cli, "run", str(wf_file), "--webhook-wait", "0"], **quiet)
    signals = Counter[str]()
    deadline = time.monotonic() + 60
    while not (state / "akobridge.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # a kill before the workflow is stored would leave nothing to resume
    for _ in range(rounds):
        time.sleep(rng.uniform(0.15, 1.2))
        if proc.poll() is not None:
            break
        sig = rng.choice([signal.SIGINT, signal.SIGKILL])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, err.decode()
        signals[sig.name] += 1
        proc = subprocess.Popen([*cli, "resume"], **quiet)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert signals["SIGINT"] + signals["SIGKILL"] >= rounds * 0.6, signals
    return Store(state / "akobridge.db")


def test_local_run_interrupted_20_times_runs_each_activity_once(tmp_path: Path) -> None:
    """On the embedded default (no cluster config at all)."""
    runs = tmp_path / "runs"
    store = interrupt_again_and_again(tmp_path, staggered("crashy", 100, runs, 10), 20)
    [wf] = store.workflows()
    assert wf.state.value == "COMPLETED"
    counts = executions(runs)
    assert len(counts) == 100
    assert {n: c for n, c in counts.items() if c != 1} == {}
    assert {a.attempt for a in store.activities(wf.id)} == {1}


@pytest.mark.slurm
def test_slurm_run_interrupted_20_times_submits_each_job_once(
    devslurm_local: ClusterConfig, tmp_path: Path,
) -> None:
    from test_crash_recovery import slurm_jobs_named

    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "devslurm.yaml").write_text(yaml.safe_dump(devslurm_local.model_dump(mode="json")))
    runs = tmp_path / "runs"
    text = staggered("crashy", 100, runs, 10).replace("spec:\n", "spec:\n  runtime: devslurm\n", 1)
    store = interrupt_again_and_again(tmp_path, text, 20, clusters, seed=5)
    [wf] = store.workflows()
    assert wf.state.value == "COMPLETED"
    counts = executions(runs)
    assert len(counts) == 100 and {n: c for n, c in counts.items() if c != 1} == {}
    prefix = f"akb-{store.instance}-{wf.id}-"
    deadline = time.monotonic() + 20
    while len(names := slurm_jobs_named(prefix)) < 100 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == 100, len(names)
    assert {k: v for k, v in names.items() if v > 1} == {}


def test_run_drives_only_its_workflow(tmp_path: Path) -> None:
    """``run X`` must not quietly resume the other unfinished workflows of the state dir."""
    state = tmp_path / "state"
    store = Store(state / "akobridge.db")
    bridge = Bridge(store, Clusters([]), state)
    other = bridge.submit(parse_akoflow(staggered("other", 3, tmp_path / "o")).workflow)
    mine = bridge.submit(parse_akoflow(staggered("mine", 3, tmp_path / "m")).workflow)
    try:
        bridge.run([mine], idle_s=0.02, timeout_s=60)
    finally:
        bridge.close()
    assert store.workflow(mine).state.value == "COMPLETED"  # type: ignore[union-attr]
    assert store.workflow(other).state.value == "RUNNING"  # type: ignore[union-attr]
    assert {a.state.value for a in store.activities(other)} == {"PENDING"}
    assert all(not store.attempts(a.id) for a in store.activities(other))
    assert not (tmp_path / "o").exists()


def test_two_runs_started_at_once_on_one_state_dir(tmp_path: Path) -> None:
    """Both start in the same instant: one owns the state dir, the other is refused before it
    stores anything; every activity runs once."""
    runs = tmp_path / "runs"
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(staggered("twice", 12, runs, 4).replace("sleep 0.0", "sleep 0.5"))
    cli, env = _cli(tmp_path / "state", None)
    procs = [subprocess.Popen([*cli, "run", str(wf_file), "--webhook-wait", "0"], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1].decode()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "pid" in refused and "Traceback" not in refused, refused
    store = Store(tmp_path / "state" / "akobridge.db")
    assert len(store.workflows()) == 1
    counts = executions(runs)
    assert len(counts) == 12 and set(counts.values()) == {1}, counts
