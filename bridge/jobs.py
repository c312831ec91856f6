"""From the workflow model to what a runtime renders: one :class:`~runtimes.render.JobSpec`
per attempt. The runtimes know nothing of workflows; this is where the two meet."""

from __future__ import annotations

import re
from collections.abc import Mapping

from bridge.spec.model import Step, Workflow
from runtimes.config import ClusterConfig
from runtimes.render import JobSpec, Rendered, render
from runtimes.repository import REPO_DIR


def job_spec(workflow: Workflow, step: Step, *, workflow_id: int, token: str, jobdir: str,
             attempt: int, secrets: Mapping[str, str] | None = None,
             inherited: Mapping[str, str] | None = None) -> JobSpec:
    """What one attempt of ``step`` needs: the step's values, else the workflow's.
    ``secrets``: the values of the step's secret names (placeholders when only checking);
    ``inherited``: variables from upstream output parameters (added to its env)."""
    res = step.resources
    return JobSpec(
        workflow=workflow.name, workflow_id=workflow_id, activity=step.name, attempt=attempt,
        token=token, jobdir=jobdir, run=step.run,
        image=step.image or workflow.image,
        workdir=step.mount_path or workflow.mount_path
        or (f"{jobdir}/{REPO_DIR}" if step.repository else None),
        binds=tuple(v.target for v in workflow.volumes),
        cpus=res.cpus, memory_mib=res.memory_mib, time_limit_s=res.time_limit_s,
        tmp_disk_mib=res.tmp_disk_mib,
        node_selector=dict(res.node_selector), env={**step.env, **(inherited or {})},
        merge_stderr=step.merge_stderr,
        secrets=dict(secrets) if secrets is not None
        else dict.fromkeys(map(secret_env_name, step.secrets), ""),
    )


def render_step(workflow: Workflow, step: Step, cluster: ClusterConfig, *, workflow_id: int,
                token: str, jobdir: str, attempt: int,
                secrets: Mapping[str, str] | None = None,
                inherited: Mapping[str, str] | None = None) -> Rendered:
    """The job script of one attempt of ``step`` on ``cluster``."""
    job = job_spec(workflow, step, workflow_id=workflow_id, token=token, jobdir=jobdir,
                   attempt=attempt, secrets=secrets, inherited=inherited)
    return render(job, cluster)


def secret_env_name(name: str) -> str:
    """The environment variable a secret reaches the job as: its name with every character
    other than a letter, digit or ``_`` as ``_`` (``secret-1`` → ``secret_1``)."""
    env = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"_{env}" if env[:1].isdigit() else env
