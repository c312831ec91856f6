"""The pyslurm backend: the version guard (on this machine: pyslurm is not installed), and the
runtime's logic against a stand-in module with pyslurm 22.5's API shape (no real pyslurm)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from bridge.jobs import render_step
from bridge.runner import Bridge
from bridge.spec.model import Resources, Step, Workflow
from bridge.store import Store
from conftest import REPO, SLURM_CONF
from runtimes import open_runtime
from runtimes.base import JobRequest, JobState, RuntimeFailure, TrackedJob
from runtimes.config import (
    ClusterConfig,
    Clusters,
    ContainerSettings,
    SlurmSettings,
    load_cluster,
)
from runtimes.slurm.pyslurm_backend import (
    PyslurmRuntime,
    check_pyslurm,
    parse_pyslurm_version,
    parse_slurm_version,
    pyslurm_release,
    slurm_release,
    submit_description,
)
from runtimes.transport import Completed, LocalTransport

# `sbatch --version` as printed by Debian's, SchedMD's and release-candidate builds.
RECORDED = [
    ("slurm-wlm 22.05.8\n", "22.05"),
    ("slurm 23.11.4\n", "23.11"),
    ("slurm 24.05.0-0rc1\n", "24.05"),
    ("slurm 25.11.1\n", "25.11"),
    ("slurm 20.11.9\n", "20.11"),
    ("slurm 18.08.9\n", "18.08"),
]
NOT_INSTALLED = ("slurm.backend: pyslurm needs pyslurm 22.5.x for Slurm 22.05 but pyslurm is "
                 "not installed; use slurm.backend: cli or install a pyslurm built for this "
                 "Slurm")


@pytest.mark.parametrize(("text", "release"), RECORDED)
def test_slurm_release_from_recorded_sbatch_version(text: str, release: str) -> None:
    assert parse_slurm_version(text) == release


def test_unreadable_sbatch_version_is_a_runtime_failure() -> None:
    with pytest.raises(RuntimeFailure, match="cannot read a Slurm release"):
        parse_slurm_version("sbatch: command not found")


@pytest.mark.parametrize(("version", "release"), [
    ("22.5.0", "22.5"), ("22.5.3", "22.5"), ("25.11.1", "25.11"), ("18.8.2", "18.8"),
    ("17.11.0.1", "17.11"), ("23.2.2", "23.2"),
])
def test_pyslurm_release_normalised(version: str, release: str) -> None:
    assert parse_pyslurm_version(version) == release


@pytest.mark.parametrize(("slurm", "pyslurm"), [
    ("22.05", "22.5"), ("22.05", "22.05"), ("25.11", "25.11"), ("18.08", "18.8"),
    ("23.02", "23.2"),
])
def test_matching_pyslurm_is_accepted(slurm: str, pyslurm: str) -> None:
    check_pyslurm(slurm, pyslurm)


@pytest.mark.parametrize(("slurm", "pyslurm", "message"), [
    ("22.05", "25.11", "slurm.backend: pyslurm needs pyslurm 22.5.x for Slurm 22.05 but "
                       "pyslurm 25.11 is installed; use slurm.backend: cli or install a "
                       "pyslurm built for this Slurm"),
    ("22.05", "18.8", "needs pyslurm 22.5.x for Slurm 22.05 but pyslurm 18.8 is installed"),
    ("22.05", "22.6", "but pyslurm 22.6 is installed"),
    ("23.11", "23.2", "needs pyslurm 23.11.x for Slurm 23.11 but pyslurm 23.2 is installed"),
    ("22.05", None, NOT_INSTALLED),
])
def test_mismatched_or_missing_pyslurm_is_refused(slurm: str, pyslurm: str | None,
                                                  message: str) -> None:
    with pytest.raises(RuntimeFailure) as err:
        check_pyslurm(slurm, pyslurm)
    assert message in str(err.value)


def test_pyslurm_is_not_installed_on_this_machine() -> None:
    assert importlib.util.find_spec("pyslurm") is None  # the premise of the tests below
    assert pyslurm_release() is None


# --- on the real cluster ----------------------------------------------------------------------


def pyslurm_cluster(tmp_path: Path) -> ClusterConfig:
    base = load_cluster(REPO / "configs" / "devslurm.yaml")
    return base.model_copy(update={
        "name": "devpyslurm", "aliases": (), "workdir": str(tmp_path / "jobs"),
        "env": {**base.env, "SLURM_CONF": SLURM_CONF},
        "slurm": base.slurm.model_copy(update={"backend": "pyslurm"}),
    })


@pytest.mark.slurm
def test_slurm_release_of_the_lab(slurm_cluster: Path) -> None:
    assert slurm_release(LocalTransport({"SLURM_CONF": SLURM_CONF})) == "22.05"


@pytest.mark.slurm
def test_open_runtime_refuses_the_pyslurm_backend_here(slurm_cluster: Path,
                                                       tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure) as err:
        open_runtime(pyslurm_cluster(tmp_path))
    assert str(err.value) == NOT_INSTALLED


@pytest.mark.slurm
def test_the_bridge_refuses_to_start_on_a_pyslurm_cluster(slurm_cluster: Path,
                                                          tmp_path: Path) -> None:
    cfg = pyslurm_cluster(tmp_path)
    store = Store(tmp_path / "state" / "akobridge.db")
    bridge = Bridge(store, Clusters([cfg]), tmp_path / "state")
    try:
        with pytest.raises(RuntimeFailure, match="pyslurm is not installed"):
            bridge.runtime(cfg.name)
    finally:
        store.close()


@pytest.mark.slurm
def test_cluster_check_reports_the_pyslurm_mismatch(slurm_cluster: Path, tmp_path: Path) -> None:
    cfg = pyslurm_cluster(tmp_path)
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "devpyslurm.yaml").write_text(cfg.model_dump_json())  # JSON is valid YAML
    env = {**os.environ, "COLUMNS": "250", "PYTHONIOENCODING": "utf-8"}
    res = subprocess.run([sys.executable, "-m", "bridge", "cluster", "check", "devpyslurm",
                          "--clusters-dir", str(clusters)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert f"✗ sbatch: slurm-wlm 22.05.8; {NOT_INSTALLED}" in res.stderr.splitlines()


@pytest.mark.slurm
def test_run_refuses_before_storing_anything(slurm_cluster: Path, tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "devpyslurm.yaml").write_text(pyslurm_cluster(tmp_path).model_dump_json())
    res = subprocess.run(
        [sys.executable, "-m", "bridge", "--state-dir", str(tmp_path / "state"),
         "--clusters-dir", str(clusters), "run", "examples/hello.yaml", "--runtime",
         "devpyslurm"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"error: {NOT_INSTALLED}"]
    assert not (tmp_path / "jobs").exists()
    store = Store(tmp_path / "state" / "akobridge.db")
    try:
        assert store.workflows() == []
    finally:
        store.close()


# --- PyslurmRuntime against a stand-in with pyslurm 22.5's API shape --------------------------


class FakeJobSubmitDescription:
    submitted: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def submit(self) -> int:
        if self.kwargs.get("partitions") == "broken":
            raise RuntimeError("Invalid partition name specified")
        self.submitted.append(self.kwargs)
        return 1000 + len(self.submitted)


def fake_pyslurm(jobs: list[SimpleNamespace]) -> SimpleNamespace:
    class Jobs(dict[int, SimpleNamespace]):
        @staticmethod
        def load() -> Jobs:
            return Jobs({j.id: j for j in jobs})

    FakeJobSubmitDescription.submitted = []
    return SimpleNamespace(JobSubmitDescription=FakeJobSubmitDescription, Jobs=Jobs)


class RecordingTransport(LocalTransport):
    """Real files, recorded commands (sbatch answers with a job id)."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[list[str]] = []

    def run_many(self, argvs: Sequence[Sequence[str]], *, concurrency: int = 1,
                 retry: bool = True) -> list[Completed]:
        self.ran += [list(a) for a in argvs]
        return [Completed(tuple(a), 0, "777\n", "") for a in argvs]


def _cluster(tmp_path: Path, **slurm: Any) -> ClusterConfig:
    return ClusterConfig(name="fake", workdir=str(tmp_path), slurm=SlurmSettings(
        partition="debug", account="proj", qos="normal", backend="pyslurm", **slurm),
        container=ContainerSettings(engine="none"))


def _request(tmp_path: Path, cluster: ClusterConfig, name: str, **resources: Any) -> JobRequest:
    step = Step(name=name, run="echo hi", resources=Resources(**resources))
    wf = Workflow(name="w", steps=(step,))
    jobdir = str(tmp_path / name)
    rendered = render_step(wf, step, cluster, workflow_id=1, token=f"akb-t-{name}", jobdir=jobdir,
                           attempt=1)
    return JobRequest(f"akb-t-{name}", jobdir, rendered.script, rendered.files)


def test_every_option_the_renderer_emits_maps_to_job_submit_description(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    req = _request(tmp_path, cluster, "a", cpus=4, memory_mib=1908, time_limit_s=61,
                   node_selector={"constraint": "gpu"})
    kwargs = submit_description(req.script, f"{req.jobdir}/job.sh")
    assert kwargs == {
        "script": f"{req.jobdir}/job.sh", "name": "akb-t-a",
        "standard_output": f"{req.jobdir}/slurm-%j.out",
        "standard_error": f"{req.jobdir}/slurm-%j.err", "working_directory": req.jobdir,
        "cpus_per_task": 4, "memory_per_node": "1908M", "time_limit": "0-00:02:00",
        "is_requeueable": False, "comment": "akobridge:w/a", "partitions": "debug",
        "account": "proj", "qos": "normal", "constraints": "gpu",
    }
    exclusive = _cluster(tmp_path, extra_options=("--exclusive",))
    req = _request(tmp_path, exclusive, "b")
    assert submit_description(req.script, f"{req.jobdir}/job.sh") is None  # → sbatch


def test_submit_uses_pyslurm_and_falls_back_to_sbatch_per_job(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    transport = RecordingTransport()
    rt = PyslurmRuntime(cluster, transport, module=fake_pyslurm([]))
    plain = _request(tmp_path, cluster, "a")
    odd = JobRequest("akb-t-odd", str(tmp_path / "odd"),
                     "#!/bin/bash\n#SBATCH --job-name=akb-t-odd\n#SBATCH --exclusive\ntrue\n")
    bad = _request(tmp_path, cluster.model_copy(update={"slurm": SlurmSettings(
        partition="broken", backend="pyslurm")}), "c")
    results = rt.submit([plain, odd, bad])
    assert [(s.token, s.job_id) for s in results] == [
        ("akb-t-a", "1001"), ("akb-t-odd", "777"), ("akb-t-c", None)]
    assert results[2].error == "pyslurm: Invalid partition name specified"
    assert (tmp_path / "a" / "job.sh").read_text() == plain.script  # files written first
    assert (tmp_path / "odd" / "job.sh").is_file()
    assert transport.ran == [["env", "TZ=UTC", "sbatch", "--parsable", f"{tmp_path}/odd/job.sh"]]
    assert rt.calls["pyslurm.submit"] == 2 and rt.calls["sbatch"] == 1


def test_poll_reads_the_queue_with_one_jobs_load(tmp_path: Path) -> None:
    uid = os.getuid()

    def job(id_: int, state: str, user: int = uid, **kw: Any) -> SimpleNamespace:
        base = dict(id=id_, name=f"akb-{id_}", state=state, state_reason="None",
                    start_time=None, end_time=None, user_id=user, exit_code=0)
        return SimpleNamespace(**{**base, **kw})

    module = fake_pyslurm([
        job(1, "PENDING", state_reason="Priority"),
        job(2, "RUNNING", start_time=1_700_000_000),
        job(3, "COMPLETED", start_time=1_700_000_000, end_time=1_700_000_005),
        job(4, "RUNNING", user=uid + 1),  # someone else's job
    ])
    loads = 0
    real_load = module.Jobs.load

    def counting_load() -> Any:
        nonlocal loads
        loads += 1
        return real_load()

    module.Jobs.load = staticmethod(counting_load)
    rt = PyslurmRuntime(_cluster(tmp_path, accounting="none"), RecordingTransport(),
                        module=module)
    tracked = [TrackedJob(f"akb-{i}", str(tmp_path / str(i)), str(i)) for i in (1, 2, 3)]
    states = rt.poll(tracked)
    assert loads == 1 and rt.calls["pyslurm.Jobs.load"] == 1 and rt.calls["squeue"] == 0
    assert states["1"].state is JobState.QUEUED and states["1"].reason == "Priority"
    assert states["2"].state is JobState.RUNNING and states["2"].started_at is not None
    assert states["3"].state is JobState.COMPLETED and states["3"].exit_code == 0
    assert "4" not in rt._squeue()


def test_a_pyslurm_without_the_22_5_2_api_is_refused(tmp_path: Path) -> None:
    old = SimpleNamespace(job=object)  # pyslurm 22.5.0/22.5.1: only the old API
    with pytest.raises(RuntimeFailure, match=r"needs pyslurm >= 22.5.2"):
        PyslurmRuntime(_cluster(tmp_path), RecordingTransport(), module=old)
