"""The sbatch renderer: byte-exact run text, safe quoting, options from config and spec."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.jobs import render_step
from bridge.spec import parse_akoflow
from bridge.spec.model import Resources, Step, Workflow
from runtimes.config import LOCAL, ClusterConfig, ContainerSettings, SlurmSettings
from runtimes.render import JobSpec, RenderError, render, slurm_time

CLUSTER = ClusterConfig(
    name="c", workdir="/w", prologue="module load singularity",
    slurm=SlurmSettings(partition="p", qos="q", extra_options=("--exclusive",)),
    container=ContainerSettings(engine="apptainer"),
)


def _render(step: Step, wf: Workflow | None = None, cluster: ClusterConfig = CLUSTER) -> str:
    wf = wf or Workflow(name="w", image="/img/x.sif", mount_path="/data", steps=(step,))
    return render_step(wf, step, cluster, workflow_id=7, token="akb-t-7-1-1", jobdir="/w/j",
                       attempt=1).script


def test_tmp_disk_is_a_tmp_line_after_the_memory() -> None:
    """Peak's ``resources.storage`` as Slurm's ``--tmp`` (MB); without it no line (the golden
    seed script has none)."""
    script = _render(Step(name="s", run="true", resources=Resources(
        cpus=2, memory_mib=512, tmp_disk_mib=10240)))
    lines = script.splitlines()
    at = lines.index("#SBATCH --tmp=10240")
    assert lines[at - 1] == "#SBATCH --mem=512M" and lines[at + 1].startswith("#SBATCH --time=")
    assert "--tmp" not in _render(Step(name="s", run="true"))
    with pytest.raises(ValidationError):
        Resources(tmp_disk_mib=0)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_run_text_goes_to_command_file_byte_exact(run: str) -> None:
    step = Step(name="s", run=run)
    wf = Workflow(name="w", image="/img/x.sif", steps=(step,))
    rendered = render_step(wf, step, CLUSTER, workflow_id=1, token="akb-t", jobdir="/w/j",
                           attempt=1)
    assert rendered.files == {"/w/j/command.sh": run.encode("utf-8")}
    # the text never enters the script (a marker, since short texts like "part" occur anyway)
    marked = Step(name="s", run=f"AKB-RUN-TEXT:{run}")
    script = render_step(wf, marked, CLUSTER, workflow_id=1, token="akb-t", jobdir="/w/j",
                         attempt=1).script
    assert "AKB-RUN-TEXT" not in script


def test_script_is_valid_bash_and_reads_like_the_design() -> None:
    script = _render(Step(name="s", run="echo hi", resources=Resources(
        cpus=4, memory_mib=1908, time_limit_s=61, node_selector={"constraint": "gpu"})))
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    lines = script.splitlines()
    for expected in ("#SBATCH --job-name=akb-t-7-1-1", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --mem=1908M", "#SBATCH --time=0-00:02:00",
                     "#SBATCH --partition=p", "#SBATCH --qos=q", "#SBATCH --constraint=gpu",
                     "#SBATCH --exclusive", "#SBATCH --output=/w/j/slurm-%j.out",
                     "module load singularity"):
        assert expected in lines, expected
    assert lines[-1] == ("apptainer exec --bind /data --bind /w/j --pwd /data /img/x.sif "
                         '/bin/bash "$AKB_JOBDIR/command.sh"')


def test_the_jobs_variables_reach_the_container_under_both_prefixes() -> None:
    """``--cleanenv`` passes only ``SINGULARITYENV_*``/``APPTAINERENV_*``: ``AKB_JOBDIR``,
    the env and the secrets are exported under both names (by reference: a secret's value
    stays in the private file); without a container nothing of the kind."""
    job = JobSpec(workflow="w", workflow_id=3, activity="a", attempt=1, token="akb-t-3-1-1",
                  jobdir="/w/j", run="x", image="/img/x.sif", env={"K": "it's"},
                  secrets={"tok": "s3cr3t-value"})
    rendered = render(job, CLUSTER)
    lines = rendered.script.splitlines()
    passed = [line for line in lines if "ENV_" in line and line.startswith("export ")]
    assert passed == [f'export SINGULARITYENV_{n}="${{{n}}}" APPTAINERENV_{n}="${{{n}}}"'
                      for n in ("AKB_JOBDIR", "K", "tok")]
    assert lines.index(passed[0]) > lines.index("export K='it'\"'\"'s'")
    assert lines.index(passed[-1]) > next(i for i, line in enumerate(lines)
                                          if "secrets.env" in line)  # read before
    assert "s3cr3t-value" not in rendered.script
    assert subprocess.run(["bash", "-n"], input=rendered.script, text=True,
                          check=False).returncode == 0
    local = render(job, LOCAL.model_copy(update={"workdir": "/w"})).script
    assert "SINGULARITYENV_" not in local and "APPTAINERENV_" not in local


def test_node_selector_partition_overrides_the_cluster_default() -> None:
    script = _render(Step(name="s", run="x", resources=Resources(
        node_selector={"partition": "gpu", "zone": "ignored"})))
    assert "#SBATCH --partition=gpu" in script and "--partition=p" not in script
    assert "zone" not in script


def test_missing_image_names_the_activity() -> None:
    step = Step(name="train", run="x")
    with pytest.raises(RenderError, match="activity train: no image"):
        _render(step, Workflow(name="w", steps=(step,)))


def test_engine_none_runs_in_mount_path_without_container() -> None:
    step = Step(name="s", run="x", mount_path="/data/in")
    script = _render(step, Workflow(name="w", steps=(step,)), LOCAL)
    assert script.splitlines()[-2:] == ["cd /data/in || exit 1",
                                        '/bin/bash "$AKB_JOBDIR/command.sh"']


def test_quoting_of_values_that_reach_the_shell() -> None:
    step = Step(name="s", run="x", env={"GREETING": "it's $(id) `x`"})
    script = _render(step)
    assert "export GREETING='it'\"'\"'s $(id) `x`'" in script
    bad = Step(name="s", run="x", env={"A;B": "1"})
    with pytest.raises(RenderError, match="is not a variable name"):
        _render(bad)


@pytest.mark.parametrize("field,value", [
    ("slurm", {"partition": "a;b"}), ("slurm", {"extra_options": ["--x=$(id)"]}),
    ("slurm", {"default_time": "soon"}), ("container", {"exec_flags": ["; rm -rf /"]}),
    ("workdir", "relative/dir"), ("workdir", "/has space"), ("name", "a b"),
])
def test_hostile_cluster_config_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ClusterConfig.model_validate({"name": "c", field: value} if field != "name"
                                     else {"name": value})


@pytest.mark.parametrize("seconds,expected", [
    (1, "0-00:01:00"), (60, "0-00:01:00"), (61, "0-00:02:00"), (3600, "0-01:00:00"),
    (90000, "1-01:00:00"),
])
def test_slurm_time(seconds: int, expected: str) -> None:
    assert slurm_time(seconds) == expected


def test_akoflow_quantities_reach_the_script() -> None:
    wf = parse_akoflow(
        "name: q\nspec:\n  image: /i.sif\n  activities:\n    - name: a\n      run: x\n"
        "      cpuLimit: 500m\n      memoryLimit: 2G\n"
    ).workflow
    script = _render(wf.steps[0], wf)
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --mem=1908M" in script


def test_the_renderer_takes_a_jobspec_without_any_workflow_model() -> None:
    job = JobSpec(workflow="w", workflow_id=3, activity="a", attempt=2, token="akb-t-3-1-2",
                  jobdir="/w/j", run="echo x", image="/img/x.sif", binds=("/data",),
                  cpus=2, node_selector={"partition": "gpu"}, env={"K": "v"})
    script = render(job, CLUSTER).script
    assert "#SBATCH --job-name=akb-t-3-1-2" in script and "#SBATCH --partition=gpu" in script
    assert "export K=v" in script and "--bind /data --bind /w/j" in script


@pytest.mark.parametrize("value", ["gpu|bigmem", "gpu&ib", "[rack1*2|rack2*2]"])
def test_node_selector_that_validate_accepts_is_rendered(value: str) -> None:
    """One validator: what ``validate`` accepts, ``run`` renders (it refused ``gpu|bigmem``)."""
    wf = parse_akoflow(
        "name: q\nspec:\n  image: /i.sif\n  activities:\n    - name: a\n      run: x\n"
        f"      nodeSelector: 'constraint={value}'\n"
    ).workflow
    assert f"#SBATCH --constraint={value}" in _render(wf.steps[0], wf).splitlines()


def test_runtimes_never_import_bridge() -> None:
    """The data flow runs one way: ``runtimes/`` knows nothing of ``bridge/``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "runtimes"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "bridge"]
    assert offenders == []
