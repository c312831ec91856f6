"""Render one sbatch script per activity attempt from the template in ``templates/``.

Every user value is validated at intake (``bridge.spec.safety``) and shell-quoted here as well.
The ``run`` text never enters the script: it is written byte-exact to ``command.sh`` in the job
directory, which the script runs inside the container.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from importlib import resources

from bridge.spec.model import Step, Workflow
from runtimes.config import ClusterConfig
from runtimes.images import image_path
from runtimes.jobdir import COMMAND_FILE

_TEMPLATE = resources.files("runtimes").joinpath("templates/sbatch.sh").read_text("utf-8")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%/+=\[\]-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SELECTOR_OPTION = {
    "partition": "partition", "constraint": "constraint", "feature": "constraint",
    "nodelist": "nodelist", "qos": "qos", "account": "account", "gres": "gres",
}


class RenderError(ValueError):
    """The step cannot become a job script on this cluster (the message says why)."""


@dataclass(frozen=True)
class Rendered:
    """An sbatch script and the files that go beside it in the job directory."""

    script: str
    files: dict[str, bytes]


def job_token(instance: str, workflow_id: int, activity_id: int, attempt: int) -> str:
    """The unique Slurm job name of one attempt; also what crash recovery searches for."""
    return f"akb-{instance}-{workflow_id}-{activity_id}-{attempt}"


def slurm_time(seconds: int) -> str:
    """Seconds as Slurm ``D-HH:MM:SS``, rounded up to whole minutes (Slurm's granularity)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rem = divmod(minutes, 24 * 60)
    return f"{days}-{rem // 60:02d}:{rem % 60:02d}:00"


def render(
    workflow: Workflow, step: Step, cluster: ClusterConfig, *,
    workflow_id: int, token: str, jobdir: str, attempt: int,
) -> Rendered:
    """The job script for one attempt of ``step`` and the files it needs."""
    res = step.resources
    options = _scheduling_options(step, cluster)
    fields = {
        "token": token,
        "jobdir": jobdir,
        "q_jobdir": shlex.quote(jobdir),
        "cpus": res.cpus or 1,
        "memory": f"#SBATCH --mem={res.memory_mib}M\n" if res.memory_mib else "",
        "time": slurm_time(res.time_limit_s) if res.time_limit_s else cluster.slurm.default_time,
        "scheduling": "".join(f"#SBATCH {opt}\n" for opt in options),
        "workflow": workflow.name,
        "workflow_id": workflow_id,
        "activity": step.name,
        "attempt": attempt,
        "prologue": cluster.prologue.rstrip("\n") + "\n" if cluster.prologue.strip() else "",
        "env": "".join(f"export {k}={shlex.quote(v)}\n" for k, v in _env(step).items()),
        "command": _command(workflow, step, cluster, jobdir),
    }
    return Rendered(
        script=_TEMPLATE.format(**fields),
        files={f"{jobdir}/{COMMAND_FILE}": step.run.encode("utf-8")},
    )


def _scheduling_options(step: Step, cluster: ClusterConfig) -> list[str]:
    chosen: dict[str, str] = {}
    s = cluster.slurm
    for name, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos)):
        if value:
            chosen[name] = value
    for key, value in step.resources.node_selector.items():
        option = _SELECTOR_OPTION.get(key)
        if option is None:
            continue
        if not _SAFE_VALUE.match(value):
            raise RenderError(f"activity {step.name}: nodeSelector {key}={value!r} is not safe")
        chosen[option] = value
    return [f"--{k}={v}" for k, v in chosen.items()] + list(s.extra_options)


def _env(step: Step) -> dict[str, str]:
    for name in step.env:
        if not _ENV_NAME.match(name):
            raise RenderError(f"activity {step.name}: {name!r} is not a valid variable name")
    return dict(step.env)


def _command(workflow: Workflow, step: Step, cluster: ClusterConfig, jobdir: str) -> str:
    run = f'/bin/bash "$AKB_JOBDIR/{COMMAND_FILE}"'
    workdir = step.mount_path or workflow.mount_path
    engine = cluster.container.engine
    if engine == "none":
        cd = f"cd {shlex.quote(workdir)} || exit 1\n" if workdir else 'cd "$AKB_JOBDIR" || exit 1\n'
        return cd + run
    image = step.image or workflow.image
    if not image:
        raise RenderError(
            f"activity {step.name}: no image; set spec.image or activities[].image "
            f"(cluster {cluster.name} runs containers with {engine})"
        )
    binds: list[str] = []
    for path in (*(v.target for v in workflow.volumes), workdir, jobdir):
        if path and path.rstrip("/") not in binds:
            binds.append(path.rstrip("/") or "/")
    words = [engine, "exec", *cluster.container.exec_flags]
    for path in binds:
        if "," in path or ":" in path:  # the engine splits --bind at ',' and ':'
            raise RenderError(f"activity {step.name}: bind path {path!r} contains ',' or ':'"
                              " (the container engine would read more mounts or options)")
        words += ["--bind", path]
    words += ["--pwd", workdir or jobdir, image_path(image, cluster)]
    return " ".join(shlex.quote(w) for w in words) + " " + run
