"""A bridge killed at any instant restarts and finishes without a lost or doubled Slurm job."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from conftest import REPO, SLURM_CONF, slurm
from runtimes import JobRequest, Runtime, Submitted, open_runtime
from runtimes.config import ClusterConfig, Clusters

pytestmark = pytest.mark.slurm

CHAIN = """\
name: chain
spec:
  activities:
    - name: first
      run: echo first
    - name: second
      run: echo second
      dependsOn: [first]
"""


class Crash(Exception):
    pass


class CrashAfterSbatch(Runtime):
    """Wraps a real runtime; sbatch runs, then the 'daemon' dies before recording the id."""

    def __init__(self, inner: Runtime, before: bool = False) -> None:
        self.inner, self.before = inner, before
        self.name, self.calls, self.transport = inner.name, inner.calls, inner.transport

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        if not self.before:
            self.inner.submit(requests)
        raise Crash

    def poll(self, jobs):  # type: ignore[no-untyped-def]
        return self.inner.poll(jobs)

    def find(self, jobs):  # type: ignore[no-untyped-def]
        return self.inner.find(jobs)

    def cancel(self, job_ids):  # type: ignore[no-untyped-def]
        self.inner.cancel(job_ids)

    def read_log(self, job, stream="out"):  # type: ignore[no-untyped-def]
        return self.inner.read_log(job, stream)


def slurm_jobs_named(prefix: str) -> Counter[str]:
    out = slurm("sacct", "-X", "-n", "-P", "-S", "now-1hour", "-o", "JobName")
    queue = slurm("squeue", "--me", "-h", "-t", "all", "-o", "%i %j")
    names = Counter(n for n in out.split() if n.startswith(prefix))
    for line in queue.splitlines():
        job_id, name = line.split()
        if name.startswith(prefix) and name not in names:
            names[name] += 1
    return names


@pytest.mark.parametrize("crash_before_sbatch", [False, True])
def test_lost_sbatch_reply_is_adopted_not_doubled(
    devslurm: ClusterConfig, tmp_path: Path, crash_before_sbatch: bool,
) -> None:
    state = tmp_path / "state"
    store = Store(state / "akobridge.db")
    crashing = Bridge(store, Clusters([devslurm]), state,
                      runtime_factory=lambda c: CrashAfterSbatch(open_runtime(c),
                                                                 crash_before_sbatch))
    wf_id = crashing.submit(parse_akoflow(CHAIN).workflow.model_copy(
        update={"runtime": devslurm.name}))
    with pytest.raises(Crash):
        crashing.run([wf_id], timeout_s=30)
    [attempt] = store.live_attempts()
    assert attempt.state.value == "SUBMITTING" and attempt.job_id is None
    store.close()

    store = Store(state / "akobridge.db")  # the restarted daemon
    bridge = Bridge(store, Clusters([devslurm]), state)
    bridge.run([wf_id], idle_s=0.05, timeout_s=120)
    assert {a.state.value for a in store.activities(wf_id)} == {"COMPLETED"}
    # the sacct record of a job can lag its end by seconds: wait for both
    prefix = f"akb-{store.instance}-{wf_id}-"
    deadline = time.monotonic() + 15
    while len(names := slurm_jobs_named(prefix)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == 2 and set(names.values()) == {1}, names
    assert sum(bridge.runtimes[devslurm.name].calls[c] for c in ("sbatch",)) == (
        2 if crash_before_sbatch else 1)


WIDE = "name: wide\nspec:\n  activities:\n" + "".join(
    f"    - name: j{i}\n      run: sleep 1\n" + (f"      dependsOn: [j{i - 5}]\n" if i >= 5 else "")
    for i in range(20)
)


def test_sigkill_at_random_instants_then_resume(devslurm: ClusterConfig, tmp_path: Path) -> None:
    """``akobridge run`` killed with SIGKILL again and again; ``resume`` finishes the work."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "devslurm.yaml").write_text(yaml.safe_dump(devslurm.model_dump(mode="json")))
    wf_file = tmp_path / "wide.yaml"
    wf_file.write_text(WIDE.replace("spec:\n", "spec:\n  runtime: devslurm\n", 1))
    env = {**os.environ, "AKOBRIDGE_STATE_DIR": str(tmp_path / "state"),
           "AKOBRIDGE_CLUSTERS_DIR": str(clusters), "SLURM_CONF": SLURM_CONF}
    cli = [sys.executable, "-m", "bridge", "--state-dir", str(tmp_path / "state")]
    rng = random.Random(7)
    proc = subprocess.Popen([*cli, "run", str(wf_file)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills = 0
    deadline = time.monotonic() + 60
    while not (tmp_path / "state" / "akobridge.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed before storing, there would be nothing to resume
    for _ in range(6):
        time.sleep(rng.uniform(0.3, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = subprocess.Popen([*cli, "resume"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert kills >= 2
    store = Store(tmp_path / "state" / "akobridge.db")
    [wf] = store.workflows()
    assert wf.state.value == "COMPLETED"
    prefix = f"akb-{store.instance}-{wf.id}-"
    deadline = time.monotonic() + 15
    while len(names := slurm_jobs_named(prefix)) < 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == 20, names
    assert set(names.values()) == {1}, {k: v for k, v in names.items() if v > 1}
