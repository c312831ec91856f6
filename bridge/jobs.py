"""From the workflow model to what a runtime renders: one :class:`~runtimes.render.JobSpec`
per attempt. The runtimes know nothing of workflows; this is where the two meet."""

from __future__ import annotations

from bridge.spec.model import Step, Workflow
from runtimes.config import ClusterConfig
from runtimes.render import JobSpec, Rendered, render


def job_spec(workflow: Workflow, step: Step, *, workflow_id: int, token: str, jobdir: str,
             attempt: int) -> JobSpec:
    """What one attempt of ``step`` needs: the step's values, else the workflow's."""
    res = step.resources
    return JobSpec(
        workflow=workflow.name, workflow_id=workflow_id, activity=step.name, attempt=attempt,
        token=token, jobdir=jobdir, run=step.run,
        image=step.image or workflow.image,
        workdir=step.mount_path or workflow.mount_path,
        binds=tuple(v.target for v in workflow.volumes),
        cpus=res.cpus, memory_mib=res.memory_mib, time_limit_s=res.time_limit_s,
        node_selector=dict(res.node_selector), env=dict(step.env),
    )


def render_step(workflow: Workflow, step: Step, cluster: ClusterConfig, *, workflow_id: int,
                token: str, jobdir: str, attempt: int) -> Rendered:
    """The job script of one attempt of ``step`` on ``cluster``."""
    job = job_spec(workflow, step, workflow_id=workflow_id, token=token, jobdir=jobdir,
                   attempt=attempt)
    return render(job, cluster)
