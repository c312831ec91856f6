"""Submissions whose answer is unclear are looked up by name, never blindly repeated:
an sbatch that submits and then times out or reports a controller error (a test-only sbatch
wrapper on PATH in front of the real one), and an SSH session killed while the job files are
written or in the middle of a chunk of sbatch calls."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from test_crash_recovery import slurm_jobs_named
from test_ssh import _session_processes

from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from conftest import lab_cluster
from runtimes import Runtime, open_runtime
from runtimes.config import ClusterConfig, Clusters
from runtimes.transport import Completed

pytestmark = pytest.mark.slurm

WRAPPER = """#!/bin/bash
# test-only sbatch: submits with the real one, then answers like a broken controller link
real=$(PATH=${PATH#*:} command -v sbatch)
echo "$@" >> "$AKB_FAKE_DIR/calls"
case "$AKB_FAKE_MODE" in
  timeout) "$real" "$@" > /dev/null; exit 124 ;;
  socket) "$real" "$@" > /dev/null
          echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv" \
               "operation" >&2
          exit 1 ;;
  refuse-first) if [ ! -e "$AKB_FAKE_DIR/seen-${!#//\\//_}" ]; then
                  : > "$AKB_FAKE_DIR/seen-${!#//\\//_}"
                  echo "sbatch: error: Unable to contact slurm controller (connect failure)" >&2
                  exit 1
                fi
                exec "$real" "$@" ;;
esac
exec "$real" "$@"
"""

FAN = """\
name: fan
spec:
  activities:
    - {{name: a, run: "echo a >> {runs}"}}
    - {{name: b, run: "echo b >> {runs}"}}
    - {{name: c, run: "echo c >> {runs}"}}
    - {{name: d, run: "echo d >> {runs}", dependsOn: [a, b, c]}}
"""


def with_wrapper(cluster: ClusterConfig, tmp_path: Path, mode: str) -> ClusterConfig:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(WRAPPER)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**cluster.env, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "AKB_FAKE_MODE": mode, "AKB_FAKE_DIR": str(tmp_path)}
    return cluster.model_copy(update={"env": env})


def run_fan(cluster: ClusterConfig, tmp_path: Path,
            factory: type | None = None) -> tuple[Store, int, Bridge]:
    state = tmp_path / "state"
    store = Store(state / "akobridge.db")
    kwargs = {} if factory is None else {"runtime_factory": factory}
    bridge = Bridge(store, Clusters([cluster]), state, **kwargs)
    wf = parse_akoflow(FAN.format(runs=tmp_path / "runs")).workflow
    wf_id = bridge.submit(wf.model_copy(update={"runtime": cluster.name}))
    try:
        bridge.run([wf_id], idle_s=0.05, timeout_s=180)
    finally:
        bridge.close()
    return store, wf_id, bridge


def assert_once(store: Store, wf_id: int, tmp_path: Path, jobs: int = 4) -> None:
    acts = store.activities(wf_id)
    assert {a.name: a.state.value for a in acts} == dict.fromkeys("abcd", "COMPLETED"), [
        (a.name, a.state.value, a.reason) for a in acts]
    assert Counter((tmp_path / "runs").read_text().split()) == Counter("abcd")
    prefix = f"akb-{store.instance}-{wf_id}-"
    deadline = time.monotonic() + 15
    while len(names := slurm_jobs_named(prefix)) < jobs and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == jobs and set(names.values()) == {1}, names


@pytest.mark.parametrize("mode", ["timeout", "socket"])
def test_sbatch_that_submits_then_fails_ambiguously_is_adopted(
    devslurm_local: ClusterConfig, tmp_path: Path, mode: str,
) -> None:
    store, wf_id, _ = run_fan(with_wrapper(devslurm_local, tmp_path, mode), tmp_path)
    assert_once(store, wf_id, tmp_path)
    assert len((tmp_path / "calls").read_text().splitlines()) == 4  # looked up, not submitted again
    assert {a.attempt for a in store.activities(wf_id)} == {1}


def test_sbatch_refused_on_the_controller_link_is_looked_up_then_resubmitted(
    devslurm_local: ClusterConfig, tmp_path: Path,
) -> None:
    store, wf_id, _ = run_fan(with_wrapper(devslurm_local, tmp_path, "refuse-first"), tmp_path)
    assert_once(store, wf_id, tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 8  # each: unclear answer, looked up (absent), submitted
    assert {a.attempt for a in store.activities(wf_id)} == {1}  # the same attempt, same name


def _kill_sessions() -> int:
    pids = _session_processes()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


class KillDuring(Runtime):
    """The real SSH runtime; the sshd session is killed once, at the chosen moment."""

    kills: list[int] = []

    def __init__(self, cluster: ClusterConfig, moment: str) -> None:
        self.inner = open_runtime(cluster)
        self.name, self.calls, self.transport = self.inner.name, self.inner.calls, \
            self.inner.transport
        transport = self.inner.transport
        write_files, run_many = transport.write_files, transport.run_many

        def killing_write(files: Mapping[str, bytes], **kw: object) -> None:
            if moment == "write" and not KillDuring.kills:
                transport.run(["true"])  # the session exists (connections open lazily) …
                KillDuring.kills.append(_kill_sessions())  # … and dies before the files go
            write_files(files, **kw)  # type: ignore[arg-type]

        def killing_run_many(argvs: Sequence[Sequence[str]], **kw: object) -> list[Completed]:
            if moment == "chunk" and not KillDuring.kills and len(argvs) > 1:
                half = len(argvs) // 2
                first = run_many(argvs[:half], **kw)  # type: ignore[arg-type]
                KillDuring.kills.append(_kill_sessions())
                return first + run_many(argvs[half:], **kw)  # type: ignore[arg-type]
            return run_many(argvs, **kw)  # type: ignore[arg-type]

        transport.write_files = killing_write  # type: ignore[method-assign]
        transport.run_many = killing_run_many  # type: ignore[method-assign]

    def submit(self, requests):  # type: ignore[no-untyped-def]
        return self.inner.submit(requests)

    def poll(self, jobs):  # type: ignore[no-untyped-def]
        return self.inner.poll(jobs)

    def find(self, jobs):  # type: ignore[no-untyped-def]
        return self.inner.find(jobs)

    def cancel(self, job_ids):  # type: ignore[no-untyped-def]
        self.inner.cancel(job_ids)

    def read_log(self, job, stream="out"):  # type: ignore[no-untyped-def]
        return self.inner.read_log(job, stream)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("moment", ["write", "chunk"])
def test_ssh_session_killed_while_submitting_runs_each_job_once(
    slurm_cluster: Path, tmp_path: Path, moment: str,
) -> None:
    KillDuring.kills = []
    cluster = lab_cluster("ssh", tmp_path)
    store, wf_id, bridge = run_fan(cluster, tmp_path, lambda c: KillDuring(c, moment))
    assert KillDuring.kills and KillDuring.kills[0] >= 1, "no session was killed"
    assert_once(store, wf_id, tmp_path)
    assert bridge.runtimes[cluster.name].transport.connects >= 2
