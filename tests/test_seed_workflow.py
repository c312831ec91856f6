"""The AkoFlow seed's own workflow: validates, renders to the golden script, runs on Slurm,
and its two webhooks arrive with every seed field, typed as the seed's tables say."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from bridge.jobs import render_step
from bridge.spec import parse_akoflow
from conftest import REPO, STANDIN_BIN, Harness, Receiver
from runtimes.config import ClusterConfig, ContainerSettings, SlurmSettings
from runtimes.render import job_token

SEED = (REPO / "tests" / "data" / "seed.yaml").read_text()
GOLDEN = REPO / "tests" / "golden" / "seed.sbatch"
SEED_ROOT = "/scratch/.../.../p-inference-nemo"

SDUMONT_LIKE = ClusterConfig(
    name="sdumont", kind="slurm", transport="local", workdir="/scratch/myproj/akobridge",
    prologue="module load singularity\n",
    slurm=SlurmSettings(partition="sequana_cpu_dev", account="myproj",
                        default_time="02:00:00"),
    container=ContainerSettings(engine="singularity", exec_flags=("--cleanenv",)),
)

ACTIVITY_FIELDS = {  # the seed's table, in its order: name -> allowed JSON types
    "Id": (int,), "WorkflowId": (int,), "Namespace": (str,), "Name": (str,),
    "Image": (str,), "ResourceK8sBase64": (str,), "Status": (int,),
    "ProcId": (str, type(None)), "DependOnActivity": (int, type(None)),
    "CreatedAt": (str, type(None)), "StartedAt": (str, type(None)),
    "FinishedAt": (str, type(None)),
}
WORKFLOW_FIELDS = {
    "ID": (int,), "Namespace": (str,), "Runtime": (str,), "Name": (str,),
    "RawWorkflow": (str,), "Status": (int,),
}


def test_seed_validates_exactly_as_written() -> None:
    parsed = parse_akoflow(SEED)
    wf = parsed.workflow
    assert wf.name == "p-inference-nemo" and wf.runtime == "sdumont"
    assert wf.mount_path == f"{SEED_ROOT}/akf-wine-sdumont"
    assert [s.name for s in wf.steps] == ["inference-examples"]


def test_seed_renders_to_the_golden_script() -> None:
    wf = parse_akoflow(SEED).workflow
    step = wf.steps[0]
    rendered = render_step(
        wf, step, SDUMONT_LIKE, workflow_id=1, attempt=1,
        token=job_token("0a1b2c", 1, 1, 1),
        jobdir="/scratch/myproj/akobridge/p-inference-nemo-1/inference-examples/1",
    )
    if os.environ.get("AKB_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered.script)
    assert rendered.script == GOLDEN.read_text()
    [(path, data)] = rendered.files.items()
    assert path.endswith("/inference-examples/1/command.sh")
    assert data == step.run.encode()


def _seed_for(tmp: Path, hook: str) -> tuple[str, Path]:
    """The seed with its paths under ``tmp``, its image a test file, its webhook ``hook``."""
    root = tmp / "p-inference-nemo"
    sifs, wine = tmp / "data-akoflow" / "sifs", tmp / "data-akoflow" / "akf-wine-singularity"
    sifs.mkdir(parents=True)
    wine.mkdir()
    (sifs / "p-inference-nemo.sif").write_bytes(b"not really an image")  # staged to root/sifs
    (wine / "MLproject").write_text("name: tutorial\n")
    text = SEED.replace(SEED_ROOT, str(root)).replace("/data-akoflow/", f"{tmp}/data-akoflow/")
    text = text.replace("https://myhost.com/mypath/mywebhook", hook)
    return text, root


def _check_types(data: dict[str, object], table: dict[str, tuple[type, ...]]) -> None:
    assert list(data)[: len(table)] == list(table), "seed fields come first, in seed order"
    for name, types in table.items():
        assert type(data[name]) in types, f"{name}: {data[name]!r} is not {types}"


@pytest.mark.slurm
@pytest.mark.parametrize("engine", ["none", "singularity"])
def test_seed_runs_and_both_webhooks_arrive(
    harness, devslurm: ClusterConfig, receiver: Receiver, tmp_path: Path, engine: str,
) -> None:
    text, root = _seed_for(tmp_path, receiver.url)
    cluster = devslurm.model_copy(update={
        "aliases": ("sdumont",),
        "container": ContainerSettings(engine=engine),  # type: ignore[arg-type]
        "env": {**devslurm.env, "PATH": f"{STANDIN_BIN}:{os.environ['PATH']}"},
    })
    h: Harness = harness(cluster)
    wf_id = h.bridge.submit(parse_akoflow(text).workflow)
    h.run(wf_id)
    [act] = h.store.activities(wf_id)
    assert act.state.value == "COMPLETED", act.reason
    [attempt] = h.store.attempts(act.id)
    out = Path(attempt.jobdir, f"slurm-{act.job_id}.out").read_text()
    assert "Running inference-examples" in out
    assert "conda stand-in: run -n tutorial mlflow run . --env-manager=local" in out
    mount = f"{root}/akf-wine-sdumont"
    assert f"cwd: {mount}" in out
    # the volumes were staged in before the first activity
    assert Path(mount, "MLproject").read_text() == "name: tutorial\n"
    assert Path(root, "sifs", "p-inference-nemo.sif").read_bytes() == b"not really an image"
    if engine == "singularity":
        argv = Path(attempt.jobdir, "container-argv").read_bytes().split(b"\0")[1:-1]
        assert [a.decode() for a in argv] == [
            "exec", "--bind", f"{root}/sifs", "--bind", mount, "--bind", attempt.jobdir,
            "--pwd", mount, f"{root}/sifs/p-inference-nemo.sif",
            "/bin/bash", f"{attempt.jobdir}/command.sh",
        ]

    h.deliver_all()
    received = receiver.wait_for(2)
    assert [r.body["type"] for r in received] == ["ACTIVITY_COMPLETED", "WORKFLOW_DONE"]
    assert all(r.headers["Content-Type"] == "application/json" for r in received)
    assert all(r.path == "/hook" for r in received)
    activity, workflow = received[0].body, received[1].body
    assert list(activity) == ["type", "data"]
    _check_types(activity["data"], ACTIVITY_FIELDS)
    data = activity["data"]
    assert data["Status"] == 1 and data["WorkflowId"] == wf_id and data["Id"] == act.id
    assert data["Name"] == "inference-examples" and data["Namespace"] == "default"
    assert data["Image"] == f"{root}/sifs/p-inference-nemo.sif"
    assert data["ProcId"] == act.job_id and data["DependOnActivity"] is None
    for stamp in ("CreatedAt", "StartedAt", "FinishedAt"):
        assert data[stamp].endswith("Z") and len(data[stamp]) == 20
    assert data["StartedAt"] <= data["FinishedAt"]
    resource = yaml.safe_load(base64.b64decode(data["ResourceK8sBase64"]))
    assert resource["name"] == "inference-examples" and resource["cpuLimit"] == 1
    assert resource["run"].startswith('echo "Running inference-examples"')

    _check_types(workflow["data"], WORKFLOW_FIELDS)
    wdata = workflow["data"]
    assert wdata["ID"] == wf_id and wdata["Status"] == 1 and wdata["Runtime"] == "sdumont"
    assert wdata["Name"] == "p-inference-nemo" and wdata["Namespace"] == "default"
    assert base64.b64decode(wdata["RawWorkflow"]).decode() == text
