"""Render one sbatch script per activity attempt from the template in ``templates/``.

The input is a :class:`JobSpec` (what one attempt needs, whatever format the workflow came
in); the bridge builds it (``bridge.jobs``). Every user value is validated at intake with
``runtimes.safety``, checked again here with the same functions, and shell-quoted.
The ``run`` text never enters the script: it is written byte-exact to ``command.sh`` in the job
directory, which the script runs inside the container.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from runtimes import safety
from runtimes.config import ClusterConfig
from runtimes.images import image_path
from runtimes.jobdir import COMMAND_FILE

_TEMPLATE = resources.files("runtimes").joinpath("templates/sbatch.sh").read_text("utf-8")
SELECTOR_OPTION = {
    "partition": "partition", "constraint": "constraint", "feature": "constraint",
    "nodelist": "nodelist", "qos": "qos", "account": "account", "gres": "gres",
}


SECRETS_FILE = "secrets.env"
SECRETS_LINE = f'. "$AKB_JOBDIR/{SECRETS_FILE}" && rm -f "$AKB_JOBDIR/{SECRETS_FILE}" || exit 1\n'
"""The job reads its secrets into its environment and removes the file at once."""
CONTAINER_ENV_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_")
"""What Singularity and Apptainer pass into a container under ``--cleanenv`` (or
``--containall``, or a site's ``singularity.conf``), the prefix stripped: the job's variables
are exported under both names as well as their own, so they arrive whatever the exec flags
say. Apptainer takes ``APPTAINERENV_`` over ``SINGULARITYENV_`` (equal here); Singularity
reads only its own; without ``--cleanenv`` the prefixed
one overrides the host's variable of the same name, with the same value."""
CONTAINER_ENV_COMMENT = ("# the job's variables, also inside the container (under --cleanenv only "
                         "these prefixed names pass)\n")


class RenderError(ValueError):
    """The step cannot become a job script on this cluster (the message says why)."""


@dataclass(frozen=True)
class JobSpec:
    """What one attempt of an activity needs to become a job script."""

    workflow: str
    """The workflow's name (comments and ``AKB_WORKFLOW``)."""
    workflow_id: int
    activity: str
    attempt: int
    token: str
    """The unique job name (see :func:`job_token`)."""
    jobdir: str
    run: str
    """The command text, written byte-exact to ``command.sh``."""
    image: str | None = None
    workdir: str | None = None
    """Where the command runs (AkoFlow ``mountPath``); default: the job directory."""
    binds: tuple[str, ...] = ()
    """Extra paths bound into the container (the volumes' targets)."""
    cpus: int | None = None
    memory_mib: int | None = None
    time_limit_s: int | None = None
    tmp_disk_mib: int | None = None
    """``--tmp``: minimum temporary disk per node, in MB (Slurm's unit: 1024² bytes). A
    scheduling request: Slurm places the job on a node whose configured ``TmpDisk`` is at
    least this (sbatch refuses it when no node of the partition has that much); it does not
    cap what the job writes. The local runtime reads the line as a comment."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    merge_stderr: bool = False
    """The command's stderr into the job's stdout file (one log stream)."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Environment variables whose values never enter the script: they go to a file of mode
    0600 in the job directory that the job reads and deletes before the command runs."""


@dataclass(frozen=True)
class Rendered:
    """An sbatch script and the files that go beside it in the job directory."""

    script: str
    files: dict[str, bytes]
    private_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Files of mode 0600 (the secrets)."""


def job_token(instance: str, workflow_id: int, activity_id: int, attempt: int) -> str:
    """The unique Slurm job name of one attempt; also what crash recovery searches for."""
    return f"akb-{instance}-{workflow_id}-{activity_id}-{attempt}"


def slurm_time(seconds: int) -> str:
    """Seconds as Slurm ``D-HH:MM:SS``, rounded up to whole minutes (Slurm's granularity)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rem = divmod(minutes, 24 * 60)
    return f"{days}-{rem // 60:02d}:{rem % 60:02d}:00"


def render(job: JobSpec, cluster: ClusterConfig) -> Rendered:
    """The job script for one attempt and the files it needs."""
    fields = {
        "token": job.token,
        "jobdir": job.jobdir,
        "q_jobdir": shlex.quote(job.jobdir),
        "cpus": job.cpus or 1,
        "memory": f"#SBATCH --mem={job.memory_mib}M\n" if job.memory_mib else "",
        "tmp": f"#SBATCH --tmp={int(job.tmp_disk_mib)}\n" if job.tmp_disk_mib else "",
        "time": slurm_time(job.time_limit_s) if job.time_limit_s else cluster.slurm.default_time,
        "scheduling": "".join(f"#SBATCH {opt}\n" for opt in _scheduling_options(job, cluster)),
        "workflow": job.workflow,
        "workflow_id": job.workflow_id,
        "activity": job.activity,
        "attempt": job.attempt,
        "prologue": cluster.prologue.rstrip("\n") + "\n" if cluster.prologue.strip() else "",
        "env": "".join(f"export {k}={shlex.quote(v)}\n" for k, v in _env(job).items())
        + (SECRETS_LINE if job.secrets else "") + _container_env(job, cluster),
        "command": _command(job, cluster) + (" 2>&1" if job.merge_stderr else ""),
    }
    private = {}
    if job.secrets:
        for name in job.secrets:
            _checked(job, safety.check_env_name, name, "secret")
        private[f"{job.jobdir}/{SECRETS_FILE}"] = "".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in job.secrets.items()).encode("utf-8")
    return Rendered(
        script=_TEMPLATE.format(**fields),
        files={f"{job.jobdir}/{COMMAND_FILE}": job.run.encode("utf-8")},
        private_files=private,
    )


def _checked(job: JobSpec, check: Callable[[str, str], str], value: str, what: str) -> str:
    try:
        return check(value, what)
    except ValueError as exc:
        raise RenderError(f"activity {job.activity}: {exc}") from None


def _scheduling_options(job: JobSpec, cluster: ClusterConfig) -> list[str]:
    chosen: dict[str, str] = {}
    s = cluster.slurm
    for name, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos)):
        if value:
            chosen[name] = value
    for key, value in job.node_selector.items():
        option = SELECTOR_OPTION.get(key)
        if option is None:
            continue
        chosen[option] = _checked(job, safety.check_label, value, f"nodeSelector {key!r}")
    return [f"--{k}={v}" for k, v in chosen.items()] + list(s.extra_options)


def _env(job: JobSpec) -> Mapping[str, str]:
    for name in job.env:
        _checked(job, safety.check_env_name, name, "env")
    return job.env


def _container_env(job: JobSpec, cluster: ClusterConfig) -> str:
    """The lines that hand the job's variables (``AKB_JOBDIR``, its env, its secrets) to the
    container under the engines' prefixes. They name the variables, never a value: a secret's
    value stays in the job's private file."""
    if cluster.container.engine == "none":
        return ""
    names = dict.fromkeys(("AKB_JOBDIR", *job.env, *job.secrets))
    return CONTAINER_ENV_COMMENT + "".join(
        "export " + " ".join(f'{prefix}{name}="${{{name}}}"' for prefix in CONTAINER_ENV_PREFIXES)
        + "\n" for name in names)


def _command(job: JobSpec, cluster: ClusterConfig) -> str:
    run = f'/bin/bash "$AKB_JOBDIR/{COMMAND_FILE}"'
    engine = cluster.container.engine
    if engine == "none":
        if job.workdir:
            return f"cd {shlex.quote(job.workdir)} || exit 1\n" + run
        return 'cd "$AKB_JOBDIR" || exit 1\n' + run
    if not job.image:
        raise RenderError(
            f"activity {job.activity}: no image; set spec.image or activities[].image "
            f"(cluster {cluster.name} runs containers with {engine})"
        )
    binds: list[str] = []
    for path in (*job.binds, job.workdir, job.jobdir):
        if path and path.rstrip("/") not in binds:
            binds.append(path.rstrip("/") or "/")
    words = [engine, "exec", *cluster.container.exec_flags]
    for path in binds:  # the engine splits --bind at ',' and ':'
        words += ["--bind", _checked(job, safety.check_bind_path, path, "bind path")]
    words += ["--pwd", job.workdir or job.jobdir, image_path(job.image, cluster)]
    return " ".join(shlex.quote(w) for w in words) + " " + run
