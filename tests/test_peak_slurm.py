"""Peak executions on the real Slurm cluster: every step is a Slurm job (its id in the
details, its record in sacct); stop → Stopping → Stopped with the jobs gone from squeue;
``resources.storage`` is the job's ``--tmp`` (scontrol's MinTmpDiskNode), refused by sbatch
above the node's TmpDisk and at create above the instance type's ``max_storage``; an instance
type's ``partition`` places the job there (sacct's Partition) and its gres reaches sbatch; on
a cluster whose containers run with ``--cleanenv`` (the test-only singularity stand-in, which
passes only SINGULARITYENV_* variables then) env, params, secrets, inherited values and
``AKB_JOBDIR`` still reach the command."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_peak_definitions_api import Api, files_holding, peak_daemon, private_file
from test_peak_executions_api import definition, details, execute, steps_of, wait

from conftest import STANDIN_BIN, lab_cluster, slurm_env
from runtimes.config import ContainerSettings

pytestmark = pytest.mark.slurm

NO_PARTITION = "akb-no-such-partition"
SECRET = "cl3anenv-" + uuid.uuid4().hex
PEAK = {"images": [{"id": 1, "version": 1, "image": "docker://alpine:3.20"}],
        "instance_types": [{"id": 31, "cluster": "devslurm", "cpus": 1, "memory": "256Mi"},
                           {"id": 32, "cluster": "devslurm", "cpus": 1, "memory": "256Mi",
                            "max_storage": "2GB"},
                           # devnopart's own default partition does not exist: only the
                           # instance type's partition lets its jobs run
                           {"id": 33, "cluster": "devnopart", "cpus": 1, "memory": "256Mi",
                            "partition": "debug"},
                           {"id": 34, "cluster": "devslurm", "cpus": 1, "memory": "256Mi",
                            "gpus": 1},  # gres gpu:1; the lab node has no GPU
                           {"id": 35, "cluster": "devsing", "cpus": 1, "memory": "256Mi"}],
        "defaults": {"instance_type": 31, "storage": "1GB"}}


@pytest.fixture(scope="module")
def slurm_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    subprocess.run(["sinfo", "-h"], env=slurm_env(), check=True, capture_output=True)
    tmp = tmp_path_factory.mktemp("peak-slurm")
    clusters = tmp / "clusters"
    clusters.mkdir()
    cluster = lab_cluster("local", tmp)
    variants = {
        "devslurm": cluster,
        "devnopart": cluster.model_copy(update={
            "name": "devnopart", "aliases": (),
            "slurm": cluster.slurm.model_copy(update={"partition": NO_PARTITION})}),
        "devsing": cluster.model_copy(update={
            "name": "devsing", "aliases": (),
            "container": ContainerSettings(engine="singularity", exec_flags=("--cleanenv",),
                                           image_cache=str(tmp / "cache")),
            "env": {**cluster.env, "PATH": f"{STANDIN_BIN}:{os.environ['PATH']}"}})}
    for name, config in variants.items():
        (clusters / f"{name}.yaml").write_text(
            yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    secrets = private_file(tmp / "secrets", f"secret-1={SECRET}\n")
    # its lists replace the shipped ones
    yield from peak_daemon(tmp, {"peak": {**PEAK, "secrets_file": secrets}})


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%i"], env=slurm_env(), text=True,
                         capture_output=True, check=True).stdout
    return set(out.split())


def test_each_step_is_a_slurm_job(slurm_api: Api) -> None:
    wf_id = slurm_api.create(definition("slurm-steps", {
        "first": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 31},
                  "command": "echo on $(hostname)"},
        "second": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 31},
                   "command": "echo second", "parents": ["first"]}}))
    ex = execute(slurm_api, wf_id)
    got = wait(slurm_api, wf_id, ex, {"Success", "Failed"}, timeout=120)
    assert got["status"] == "Success", got["steps"]
    ids = [s["jobId"] for s in got["steps"]]
    assert all(i and i.isdigit() for i in ids) and len(set(ids)) == 2
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State"],
                           env=slurm_env(), text=True, capture_output=True, check=True).stdout
    assert sorted(line.split("|")[1] for line in sacct.split()) == ["COMPLETED", "COMPLETED"]


def test_stop_cancels_the_jobs_in_slurm(slurm_api: Api) -> None:
    wf_id = slurm_api.create(definition("slurm-stop", {
        "long": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 31},
                 "command": "sleep 300"}}))
    ex = execute(slurm_api, wf_id)
    deadline = time.monotonic() + 60
    while True:
        step = steps_of(details(slurm_api, wf_id, ex))["long"]
        if step["status"] == "Running" and step["jobId"] and step["jobId"] in squeue_ids():
            break
        assert time.monotonic() < deadline, step
        time.sleep(0.3)
    job = step["jobId"]
    r = slurm_api.call("POST", f"/workflows/{wf_id}/executions/{ex}/stop")
    assert r.status_code == 200
    assert details(slurm_api, wf_id, ex)["status"] in ("Stopping", "Stopped")
    got = wait(slurm_api, wf_id, ex, {"Stopped"}, timeout=60)
    assert steps_of(got)["long"]["status"] == "Stopped"
    assert job not in squeue_ids()


def test_the_jobs_have_the_instance_types_shape(slurm_api: Api) -> None:
    wf_id = slurm_api.create(definition("slurm-shape", {
        "a": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 31},
              "command": "true"}}))
    got = wait(slurm_api, wf_id, execute(slurm_api, wf_id), {"Success", "Failed"},
               timeout=120)
    job = got["steps"][0]["jobId"]
    deadline = time.monotonic() + 20
    tres = ""
    while "cpu=" not in tres and time.monotonic() < deadline:  # accounting lags a moment
        tres = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "ReqTRES"],
                              env=slurm_env(), text=True, capture_output=True,
                              check=True).stdout.strip()
        time.sleep(0.5)
    asked = dict(kv.split("=") for kv in tres.split(","))
    assert (asked["cpu"], asked["mem"]) == ("1", "256M")


def node_tmp_disk_mb() -> int:
    """The lab node's configured TmpDisk (tests/cluster/setup.sh sets 4096)."""
    out = subprocess.run(["scontrol", "show", "node"], env=slurm_env(), text=True,
                         capture_output=True, check=True).stdout
    found = re.search(r"TmpDisk=(\d+)", out)
    assert found, out
    if int(found.group(1)) < 1024:
        pytest.fail(f"the test node has TmpDisk={found.group(1)} MB: re-run "
                    "`bash tests/cluster/setup.sh` (it declares TmpDisk=4096)")
    return int(found.group(1))


def test_storage_is_the_jobs_tmp_disk(slurm_api: Api) -> None:
    node_tmp_disk_mb()
    wf_id = slurm_api.create(definition("slurm-storage", {
        "a": {"imageId": 1, "imageVersionId": 1, "command": "true",
              "resources": {"instanceTypeId": 31, "storage": "1GB"}}}))
    got = wait(slurm_api, wf_id, execute(slurm_api, wf_id), {"Success", "Failed"},
               timeout=120)
    assert got["status"] == "Success", got["steps"]
    [step] = got["steps"]
    assert step["resources"] == {"instanceTypeId": 31, "storage": "1GB"}
    shown = subprocess.run(["scontrol", "show", "job", step["jobId"]], env=slurm_env(),
                           text=True, capture_output=True, check=True).stdout  # MinJobAge 300
    assert re.search(r"MinTmpDiskNode=(1G|1024M)\b", shown), shown


def test_storage_above_the_nodes_tmp_disk_fails_the_step_saying_why(slurm_api: Api) -> None:
    too_much = node_tmp_disk_mb() // 1024 + 1
    wf_id = slurm_api.create(definition("slurm-storage-big", {
        "a": {"imageId": 1, "imageVersionId": 1, "command": "true",
              "resources": {"instanceTypeId": 31, "storage": f"{too_much}GB"}}}))
    got = wait(slurm_api, wf_id, execute(slurm_api, wf_id), {"Success", "Failed"},
               timeout=60)  # sbatch refuses it at once: no job pends for ever
    assert got["status"] == "Failed", got["steps"]
    [step] = got["steps"]
    assert step["status"] == "Failed" and not step["jobId"]
    assert "Temporary disk specification can not be satisfied" in step["output"]["message"]


def test_storage_above_the_instance_types_max_storage_is_refused(slurm_api: Api) -> None:
    r = slurm_api.call("POST", "/workflows/", definition("slurm-storage-max", {
        "a": {"imageId": 1, "imageVersionId": 1, "command": "true",
              "resources": {"instanceTypeId": 32, "storage": "3GB"}}}))
    assert r.status_code == 400, r.text
    [problem] = r.json()["detail"]
    assert problem["field"] == "steps.a.resources.storage"
    assert "at most 2GB" in problem["message"], problem
    assert slurm_api.create(definition("slurm-storage-max", {
        "a": {"imageId": 1, "imageVersionId": 1, "command": "true",
              "resources": {"instanceTypeId": 32, "storage": "2GB"}}}))


def sacct_field(job: str, field: str) -> str:
    """One accounting field of a job (accounting lags its end a moment)."""
    deadline = time.monotonic() + 20
    while True:
        value = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", field],
                               env=slurm_env(), text=True, capture_output=True,
                               check=True).stdout.strip()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def log_lines(api: Api, wf_id: int, ex: str, step: str) -> list[str]:
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": step}).json()
    return [line["message"] for line in page["logs"]]


def test_an_instance_types_partition_places_the_job(slurm_api: Api) -> None:
    """Type 33's cluster defaults to a partition Slurm does not have (sbatch would refuse
    it); the type's ``partition: debug`` replaces it, and the job runs there."""
    wf_id = slurm_api.create(definition("slurm-partition", {
        "a": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 33},
              "command": 'echo "partition=$SLURM_JOB_PARTITION"'}}))
    ex = execute(slurm_api, wf_id)
    got = wait(slurm_api, wf_id, ex, {"Success", "Failed"}, timeout=120)
    assert got["status"] == "Success", got["steps"]
    assert sacct_field(got["steps"][0]["jobId"], "Partition") == "debug"
    assert log_lines(slurm_api, wf_id, ex, "a") == ["partition=debug"]


def test_an_instance_types_gres_reaches_sbatch(slurm_api: Api) -> None:
    """Type 34 has ``gpus: 1`` (so ``--gres=gpu:1``); the lab node declares no GRES, so
    sbatch refuses the job and the step fails with its message instead of running."""
    wf_id = slurm_api.create(definition("slurm-gres", {
        "a": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 34},
              "command": "true"}}))
    got = wait(slurm_api, wf_id, execute(slurm_api, wf_id), {"Success", "Failed"},
               timeout=60)
    [step] = got["steps"]
    assert (got["status"], step["status"], step["jobId"]) == ("Failed", "Failed", None), step
    assert "Invalid generic resource (gres) specification" in step["output"]["message"]


def test_variables_reach_a_cleanenv_container(slurm_api: Api) -> None:
    """``exec_flags: [--cleanenv]``: the stand-in then gives the command only the
    SINGULARITYENV_* variables (and PATH, HOME...), as Singularity does — not even
    SLURM_JOB_ID. The step's env, an execute param, a secret, an inherited output and
    AKB_JOBDIR all arrive; the secret's value is in no file the bridge wrote."""
    wf_id = slurm_api.create(definition("slurm-cleanenv", {
        "up": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 35},
               "command": "printf from-up > up.txt", "outputParameters": {"UP": "up.txt"}},
        "show": {"imageId": 1, "imageVersionId": 1, "resources": {"instanceTypeId": 35},
                 "parents": ["up"], "parameters": {
                     "env": {"GREETING": "hi there"}, "secrets": ["secret-1"],
                     "inherit": {"FROM_UP": "UP"}},
                 "command": 'echo "env=$GREETING param=$WHO inherit=$FROM_UP '
                            'slurm=${SLURM_JOB_ID:-none}"; echo "jobdir=$AKB_JOBDIR"; '
                            f'test "$secret_1" = {SECRET[:9]}"${{secret_1#{SECRET[:9]}}}" '
                            '&& echo "secret length ${#secret_1}"'}}))
    ex = execute(slurm_api, wf_id, {"params": {"global": {"WHO": "all"}}})
    got = wait(slurm_api, wf_id, ex, {"Success", "Failed"}, timeout=120)
    assert got["status"] == "Success", got["steps"]
    lines = log_lines(slurm_api, wf_id, ex, "show")
    assert lines[0] == "env=hi there param=all inherit=from-up slurm=none", lines
    assert lines[2] == f"secret length {len(SECRET)}", lines
    jobdir = Path(lines[1].removeprefix("jobdir="))
    argv = (jobdir / "container-argv").read_bytes().split(b"\0")
    assert argv[1:3] == [b"exec", b"--cleanenv"], argv  # the container ran clean
    tmp = slurm_api.daemon.state.parent
    assert files_holding(tmp, SECRET) == []
