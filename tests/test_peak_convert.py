"""A Peak definition and an execute body → the internal workflow the engine runs: images and
instance types through a catalogue, retry options, run rules, stepsToRun with runDAG, the
execute parameters; then a converted workflow run for real on the local runtime."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_peak_definition import CRON, MANUAL, WEBHOOK
from test_seed_workflow import SDUMONT_LIKE

from bridge.daemon.config import PeakSettings
from bridge.jobs import render_step
from bridge.peak.catalogue import Catalogue as PeakCatalogue
from bridge.peak.catalogue import InstanceType
from bridge.peak.convert import ConversionError, ExecuteRequest, retry_policy, to_workflow
from bridge.peak.definition import RetryOptions, parse_definition
from conftest import REPO, Harness, lab_cluster
from runtimes.config import LOCAL
from runtimes.render import job_token

PEAK_GOLDEN = REPO / "tests" / "golden" / "peak-step.sbatch"


class Catalogue:
    """The catalogue's lookups, over two dicts (the daemon's comes from its config)."""

    default_type: int | None = 21

    def __init__(self, cluster: str = "local") -> None:
        self.images = {(123, 1): "docker://python:3.11", (456, 2): "/sifs/b.sif",
                       (100, 100): "/sifs/c.sif"}
        self.types = {21: InstanceType(21, cluster, 1, 1024),
                      22: InstanceType(22, cluster, 2, 4096),
                      23: InstanceType(23, cluster, 4, 8192, max_storage_mib=20 * 1024)}

    def image(self, image_id: int, version_id: int | None = None) -> str:
        key = (image_id, version_id or 1)
        if key not in self.images:
            raise ValueError(f"image {image_id}/{version_id} is not in peak.images")
        return self.images[key]

    def instance_type(self, type_id: int) -> InstanceType:
        if type_id not in self.types:
            raise ValueError(f"instance type {type_id} is not in peak.instance_types")
        return self.types[type_id]


def body(steps: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": {n: {"imageId": 123, "imageVersionId": 1, "command": "true",
                                        **s} for n, s in steps.items()}, **top}


@pytest.mark.parametrize("seed", [*CRON, *WEBHOOK, *MANUAL], ids=lambda b: b["name"])
def test_every_seed_body_converts(seed: dict[str, Any]) -> None:
    wf = to_workflow(parse_definition(seed), Catalogue())
    assert wf.source_format == "peak" and {s.name for s in wf.steps} == set(seed["steps"])
    for step in wf.steps:
        given = seed["steps"][step.name]
        assert step.run == given["command"] and step.image is not None
        assert step.parents == tuple(given.get("parents") or ())
        assert step.resources.time_limit_s == given.get("stepTimeout")


def test_the_cron_seeds_step_in_detail() -> None:
    wf = to_workflow(parse_definition(CRON[0]), Catalogue())
    [step] = wf.steps
    assert (step.image, step.runtime, step.resources.cpus, step.resources.memory_mib) == (
        "docker://python:3.11", "local", 1, 1024)
    assert step.env == {"key": "value"}
    # workflow-level retryOptions: exitCodes [1, 2], 3 retries, doubling from 2 s
    assert (step.retry.retries, step.retry.backoff_s, step.retry.factor,
            step.retry.exit_codes) == (3, 2.0, 2.0, (1, 2))


def test_a_steps_retry_options_replace_the_workflows() -> None:
    defn = parse_definition(body(
        {"a": {"runConfiguration": {"retryOptions": {"numberOfRetries": 1, "duration": 7}}}},
        retryOptions={"exitCodes": [1], "numberOfRetries": 5}))
    [step] = to_workflow(defn, Catalogue()).steps
    assert (step.retry.retries, step.retry.backoff_s, step.retry.factor,
            step.retry.exit_codes) == (1, 7.0, 1.0, ())
    assert retry_policy(None).retries == 0
    assert retry_policy(RetryOptions()).retries == 3  # an empty object: the defaults


def test_rules_and_outputs_carry_over() -> None:
    defn = parse_definition(body({
        "a": {"outputParameters": {"answer": "answer.txt"}},
        "b": {"parents": ["a"], "executionParameters": {
            "conditional": [{"condition": "equals", "paramName": "answer", "stepName": "a",
                             "value": "yes"}]}},
        "clean": {"parents": ["a"], "executionParameters": {
            "parentStatus": [{"condition": "one-of", "parents": ["a"],
                              "status": ["failure"]}]},
            "runConfiguration": {"skipConfiguration": {"skip": False}}}}))
    steps = {s.name: s for s in to_workflow(defn, Catalogue()).steps}
    assert steps["a"].outputs == {"answer": "answer.txt"}
    [cond] = steps["b"].when.conditions
    assert (cond.condition, cond.step, cond.param, cond.value) == ("equals", "a", "answer",
                                                                   "yes")
    [rule] = steps["clean"].when.parent_status
    assert (rule.condition, rule.parents, rule.status) == ("one-of", ("a",), ("failure",))


def test_steps_to_run_with_and_without_the_dag() -> None:
    defn = parse_definition(body({"a": {}, "b": {"parents": ["a"]}, "c": {"parents": ["b"]},
                                  "d": {}}))
    alone = to_workflow(defn, Catalogue(), ExecuteRequest(steps_to_run=(("b", False),)))
    assert [(s.name, s.parents) for s in alone.steps] == [("b", ())]
    dag = to_workflow(defn, Catalogue(), ExecuteRequest(steps_to_run=(("b", True),)))
    assert [(s.name, s.parents) for s in dag.steps] == [("b", ()), ("c", ("b",))]
    with pytest.raises(ConversionError) as err:
        to_workflow(defn, Catalogue(), ExecuteRequest(steps_to_run=(("zz", True),)))
    assert err.value.field == "stepsToRun[0].stepName"


def test_execute_parameters_override_the_env() -> None:
    defn = parse_definition(body({"a": {"parameters": {"env": {"A": "1", "B": "1"}}}}))
    request = ExecuteRequest(global_params={"B": "2", "C": "2"},
                             step_params={"a": {"C": "3"}})
    [step] = to_workflow(defn, Catalogue(), request).steps
    assert step.env == {"A": "1", "B": "2", "C": "3"}


@pytest.mark.parametrize(("change", "field"), [
    ({"imageId": 999}, "steps.a.imageId"),
    ({"resources": {"instanceTypeId": 77}}, "steps.a.resources.instanceTypeId")])
def test_what_the_catalogue_lacks_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConversionError) as err:
        to_workflow(parse_definition(body({"a": change})), Catalogue())
    assert err.value.field == field and "peak." in err.value.message


def test_storage_becomes_the_jobs_tmp_disk_within_the_types_limit() -> None:
    """``resources.storage`` → ``--tmp`` in MB (a GB is 1024 of Slurm's MB); none given: no
    ``--tmp``; more than the instance type's ``max_storage``: refused, naming the field."""
    defn = parse_definition(body({
        "small": {"resources": {"instanceTypeId": 21, "storage": "10GB"}},
        "big": {"resources": {"instanceTypeId": 23, "storage": "20 GB"}},
        "none": {"resources": {"instanceTypeId": 22}}}))
    steps = {s.name: s for s in to_workflow(defn, Catalogue()).steps}
    assert {n: s.resources.tmp_disk_mib for n, s in steps.items()} == {
        "small": 10240, "big": 20480, "none": None}
    with pytest.raises(ConversionError) as err:
        to_workflow(parse_definition(body({"a": {"resources": {
            "instanceTypeId": 23, "storage": "21GB"}}})), Catalogue())
    assert err.value.field == "steps.a.resources.storage"
    assert "at most 20GB" in err.value.message and "max_storage" in err.value.message


def test_the_cron_seeds_step_renders_to_the_golden_script() -> None:
    """The seed's cron step (instance type 21, ``storage: 10GB``, ``stepTimeout: 30``) as
    a job on an SDumont-like cluster: ``--cpus-per-task``, ``--mem``, ``--tmp=10240``,
    ``--time``, the instance type's partition over the cluster's; the secrets through the
    job's private file, never in the script; every variable (env, secrets, ``AKB_JOBDIR``)
    also under the ``SINGULARITYENV_``/``APPTAINERENV_`` names that ``--cleanenv`` passes."""
    catalogue = Catalogue("sdumont")
    catalogue.types[21] = InstanceType(21, "sdumont", 1, 1024, partition="sequana_cpu_shared")
    wf = to_workflow(parse_definition(CRON[0]), catalogue)
    [step] = wf.steps
    rendered = render_step(wf, step, SDUMONT_LIKE, workflow_id=4, attempt=1,
                           token=job_token("0a1b2c", 4, 9, 1),
                           jobdir="/scratch/myproj/akobridge/wf-4/stepName/1")
    if os.environ.get("AKB_UPDATE_GOLDEN"):
        PEAK_GOLDEN.write_text(rendered.script)
    assert rendered.script == PEAK_GOLDEN.read_text()
    assert "#SBATCH --tmp=10240\n" in rendered.script
    assert "#SBATCH --partition=sequana_cpu_shared\n" in rendered.script
    assert "sequana_cpu_dev" not in rendered.script  # the cluster's default, replaced
    for name in ("AKB_JOBDIR", "key", "secret_1", "secret_2"):
        assert (f'export SINGULARITYENV_{name}="${{{name}}}" '
                f'APPTAINERENV_{name}="${{{name}}}"\n') in rendered.script


def test_an_instance_types_partition_and_gres_reach_the_sbatch_header() -> None:
    """``peak.instance_types`` → catalogue → spec → ``#SBATCH --partition``/``--gres`` (the
    gres from ``gpus`` when none is configured); a type without them keeps the cluster's
    partition and asks no gres."""
    peak = PeakSettings.model_validate({
        "images": [{"id": 1, "version": 1, "image": "/sifs/a.sif"}],
        "instance_types": [
            {"id": 1, "cluster": "sdumont", "cpus": 8, "memory": "64Gi", "gpus": 1,
             "partition": "sequana_gpu", "gres": "gpu:a100:1"},
            {"id": 2, "cluster": "sdumont", "cpus": 4, "memory": "8Gi", "gpus": 2,
             "partition": "gdl"},
            {"id": 3, "cluster": "sdumont", "cpus": 1, "memory": "1Gi"}]})
    catalogue = PeakCatalogue.from_config(peak)
    wf = to_workflow(parse_definition({"name": "gpu", "steps": {
        f"t{i}": {"imageId": 1, "command": "nvidia-smi", "resources": {"instanceTypeId": i}}
        for i in (1, 2, 3)}}), catalogue)
    steps = {s.name: s for s in wf.steps}
    assert steps["t1"].resources.node_selector == {"partition": "sequana_gpu",
                                                   "gres": "gpu:a100:1"}

    def header(name: str) -> list[str]:
        script = render_step(wf, steps[name], SDUMONT_LIKE, workflow_id=5, attempt=1,
                             token=job_token("0a1b2c", 5, 1, 1), jobdir=f"/scratch/j/{name}"
                             ).script
        return [line for line in script.splitlines()
                if line.startswith(("#SBATCH --partition", "#SBATCH --gres"))]

    assert header("t1") == ["#SBATCH --partition=sequana_gpu", "#SBATCH --gres=gpu:a100:1"]
    assert header("t2") == ["#SBATCH --partition=gdl", "#SBATCH --gres=gpu:2"]
    assert header("t3") == ["#SBATCH --partition=sequana_cpu_dev"]  # the cluster's own


def test_a_converted_execution_runs_its_rules_on_the_local_runtime(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    """a fails; the cleanup (one-of failure) runs; b (needs a) is skipped; the workflow
    FAILED with every step accounted for."""
    local = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")})
    h = harness(local)
    defn = parse_definition(body({
        "a": {"command": "exit 2"},
        "b": {"parents": ["a"]},
        "cleanup": {"parents": ["a"], "command": "echo cleaned", "executionParameters": {
            "parentStatus": [{"condition": "one-of", "parents": ["a"],
                              "status": ["failure"]}]}}}))
    wf = to_workflow(defn, Catalogue())
    wf = wf.model_copy(update={"steps": tuple(s.model_copy(update={"image": None})
                                              for s in wf.steps)})  # no container locally
    wf_id = h.bridge.submit(wf)
    h.run(wf_id, timeout=60)
    assert h.states(wf_id) == {"a": "FAILED", "b": "SKIPPED", "cleanup": "COMPLETED"}
    assert h.store.workflow(wf_id).state.value == "FAILED"


def conditional_workflow() -> dict[str, Any]:
    """a writes its answer; yes (equals "yes") runs, no (equals "no") is skipped, and so is
    after_no, its dependent."""
    def when(value: str) -> dict[str, Any]:
        return {"conditional": [{"condition": "equals", "paramName": "answer",
                                 "stepName": "a", "value": value}]}
    return body({
        "a": {"command": "echo yes > answer.txt",
              "outputParameters": {"answer": "answer.txt"}},
        "yes": {"parents": ["a"], "executionParameters": when("yes")},
        "no": {"parents": ["a"], "executionParameters": when("no")},
        "after_no": {"parents": ["no"]}})


@pytest.mark.parametrize("where", ["local", pytest.param("slurm-ssh", marks=pytest.mark.slurm)])
def test_output_parameters_drive_conditions(harness: Callable[..., Harness], tmp_path: Path,
                                            where: str, request: pytest.FixtureRequest) -> None:
    """On the local runtime, and on Slurm over SSH (the output file is read through the
    cluster's transport)."""
    if where == "local":
        cluster = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")})
    else:
        request.getfixturevalue("slurm_cluster")
        cluster = lab_cluster("ssh", tmp_path)
    h = harness(cluster)
    wf = to_workflow(parse_definition(conditional_workflow()), Catalogue(cluster.name))
    wf = wf.model_copy(update={"steps": tuple(s.model_copy(update={"image": None})
                                              for s in wf.steps)})
    wf_id = h.bridge.submit(wf)
    h.run(wf_id, timeout=120)
    assert h.states(wf_id) == {"a": "COMPLETED", "yes": "COMPLETED", "no": "SKIPPED",
                               "after_no": "SKIPPED"}
    acts = {a.name: a for a in h.store.activities(wf_id)}
    assert acts["a"].outputs == {"answer": "yes\n"}
    assert "condition a.answer equals 'no' not met ('yes')" in (acts["no"].reason or "")
    assert h.store.workflow(wf_id).state.value == "COMPLETED"
