"""Cluster configuration: one YAML file per cluster in a clusters directory.

``spec.runtime`` (or ``--runtime``) names a cluster by its ``name`` or one of its ``aliases``.
A built-in ``local`` cluster (the process runtime) is always there as the embedded default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runtimes import safety

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:@%/+=-]+)?$")


def _safe_name(v: str | None, what: str = "value") -> str | None:
    """A name that may appear in an #SBATCH line or a path (``safety.check_name``)."""
    return None if v is None else safety.check_name(v, what)


def _abs_path(v: str | None, what: str = "path") -> str | None:
    """An absolute plain path with no ``..`` (``safety.check_path``)."""
    return None if v is None else safety.check_path(v, what)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^\[?[0-9A-Fa-f:.]+\]?$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_JUMP = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(?::\d{1,5})?$")


class SSHSettings(_Strict):
    """How to reach a cluster's login node. Host keys are always verified."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    """Login name (default: the bridge's own user)."""
    key_file: str | None = None
    """Private key file; without it, the SSH agent and ~/.ssh/id_* are tried."""
    use_agent: bool = True
    known_hosts: str | None = None
    """known_hosts file to verify the host key (default ~/.ssh/known_hosts)."""
    host_key_fingerprint: str | None = None
    """Pinned host key, ``SHA256:…`` as ``ssh-keygen -lf`` prints it (instead of known_hosts)."""
    proxy_jump: str | None = None
    """``[user@]host[:port]`` of a jump host (its key is always checked against known_hosts;
    the pinned fingerprint is the login node's)."""
    connect_timeout: float = Field(default=15.0, gt=0)
    """Seconds one connection attempt may take."""
    keepalive: float = Field(default=30.0, ge=0)
    """Seconds between keepalive packets (0 = none)."""
    command_timeout: float = Field(default=120.0, gt=0)
    """Seconds a remote command may run when its caller sets no timeout of its own."""
    reconnect_attempts: int = Field(default=3, ge=1)
    """Connection attempts in one round (then the cluster is unreachable until the next)."""
    reconnect_max_delay: float = Field(default=5.0, gt=0)
    connect_total_timeout: float = Field(default=20.0, gt=0)
    """Seconds all attempts of one round (and the pauses between them) may take together."""

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.match(v):
            raise ValueError("not a host name or address")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        return _safe_name(v)

    @field_validator("host_key_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is not None and not _FINGERPRINT.match(v):
            raise ValueError("must look like SHA256:<43 base64 characters> (ssh-keygen -lf)")
        return v

    @field_validator("proxy_jump")
    @classmethod
    def _jump(cls, v: str | None) -> str | None:
        if v is not None and not _JUMP.match(v):
            raise ValueError("must be [user@]host[:port]")
        return v


class SlurmSettings(_Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    default_time: str = "01:00:00"
    """Used when a step sets no time limit (Slurm's ``--time`` syntax)."""
    extra_options: tuple[str, ...] = ()
    """More ``#SBATCH`` options, each ``--name`` or ``--name=value``."""
    poll_interval: float = Field(default=5.0, gt=0)
    """Seconds between two squeue calls (the controller RPC rate limit)."""
    marker_interval: float = Field(default=0.5, gt=0)
    """Seconds between two reads of the jobs' exit-code files (no controller RPC)."""
    accounting: Literal["auto", "sacct", "none"] = "auto"
    backend: Literal["cli", "pyslurm"] = "cli"
    """``pyslurm`` (local transport only) needs a pyslurm built for this Slurm release."""
    max_submit_per_minute: int = Field(default=600, ge=1)
    submit_concurrency: int = Field(default=4, ge=1, le=16)
    """sbatch calls in flight at once (1 = strictly one after another)."""
    max_jobs_in_queue: int = Field(default=1000, ge=1)

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _safe_name(v, str(info.field_name))

    @field_validator("default_time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not _TIME.match(v):
            raise ValueError("not a Slurm time: use minutes, HH:MM:SS or D-HH:MM:SS")
        return v

    @field_validator("extra_options")
    @classmethod
    def _options(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for opt in v:
            if not _OPTION.match(opt):
                raise ValueError(f"not a safe sbatch option: {opt!r} (use --name or --name=value)")
        return v


MAX_RETRIES = 20
MAX_BACKOFF_S = 86400.0
MAX_RETRY_FACTOR = 10.0


class RetryDefaults(_Strict):
    """``retry:``: the retry policy of the activities that run on this cluster, field by field,
    where the workflow file sets none (``activities[].retry`` > ``spec.retry`` > this > no
    retry; see docs/akoflow-extensions.md)."""

    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES, strict=True)
    """How many more attempts after a failed one."""
    backoff: float | None = Field(default=None, ge=0, le=MAX_BACKOFF_S, strict=True)
    """Seconds to wait before the first retry (then times ``factor`` each time)."""
    factor: float | None = Field(default=None, ge=1, le=MAX_RETRY_FACTOR, strict=True)
    exit_codes: tuple[int, ...] | None = Field(default=None, strict=True)
    """Retry only failures with one of these exit codes (empty: any failure)."""

    @field_validator("exit_codes", mode="before")
    @classmethod
    def _codes(cls, v: object) -> object:
        if isinstance(v, list):
            for code in v:
                if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
                    raise ValueError(f"exit codes are whole numbers from 0 to 255, not {code!r}")
            return tuple(v)
        if v is not None:
            raise ValueError("must be a list of exit codes, e.g. [1, 137]")
        return v

    def policy(self) -> dict[str, object]:
        """The fields this cluster sets, named as the bridge's retry policy names them."""
        names = {"retries": "retries", "backoff": "backoff_s", "factor": "factor",
                 "exit_codes": "exit_codes"}
        return {names[k]: v for k, v in self.model_dump(exclude_none=True).items()}


class ContainerSettings(_Strict):
    engine: Literal["singularity", "apptainer", "none"] = "singularity"
    exec_flags: tuple[str, ...] = ()
    """Extra flags for ``<engine> exec`` (e.g. ``--nv``, ``--cleanenv``)."""
    image_cache: str | None = None
    """Where ``docker://``/``library://`` images are pulled to on the cluster (default
    ``<workdir>/images``)."""

    @field_validator("image_cache")
    @classmethod
    def _cache(cls, v: str | None) -> str | None:
        return _abs_path(v, "image_cache")

    @field_validator("exec_flags")
    @classmethod
    def _flags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for flag in v:
            if not _OPTION.match(flag) and not re.match(r"^-[A-Za-z]$", flag):
                raise ValueError(f"not a safe exec flag: {flag!r}")
        return v


class ClusterConfig(_Strict):
    """One cluster: how to reach it, how to submit there, how to run containers there."""

    name: str
    aliases: tuple[str, ...] = ()
    kind: Literal["slurm", "process"] = "slurm"
    """``slurm`` submits with sbatch; ``process`` runs each job script as a local process."""
    max_running: int | None = Field(default=None, ge=1, le=4096)
    """``kind: process``: at most this many jobs at once (default: the number of CPUs)."""
    transport: Literal["local", "ssh"] = "local"
    workdir: str | None = None
    """Root of the job directories; defaults to ``<state dir>/jobs`` for the local transport."""
    prologue: str = ""
    """Shell lines run before the container (e.g. ``module load singularity``)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment for the Slurm commands (e.g. ``SLURM_CONF``)."""
    ssh: SSHSettings | None = None
    """Required with ``transport: ssh``."""
    slurm: SlurmSettings = SlurmSettings()
    container: ContainerSettings = ContainerSettings()
    retry: RetryDefaults = RetryDefaults()
    """Retry defaults for the activities that run here (the time-limit default is
    ``slurm.default_time``)."""

    def resolved(self, state_dir: Path) -> ClusterConfig:
        """This config with the defaults that depend on the bridge's state directory."""
        if self.workdir:
            return self
        return self.model_copy(update={"workdir": str(state_dir / "jobs")})

    @model_validator(mode="after")
    def _transport_needs(self) -> ClusterConfig:
        if self.transport == "ssh":
            if self.ssh is None:
                raise ValueError("transport: ssh needs an ssh: section (host, user, key_file...)")
            if self.workdir is None:
                raise ValueError("transport: ssh needs workdir: (the job directories' root on "
                                 "the cluster)")
            if self.kind == "process":
                raise ValueError("kind: process runs jobs on this machine; use transport: local")
            if self.slurm.backend == "pyslurm":
                raise ValueError("slurm.backend: pyslurm works only with transport: local")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safety.check_name(v, "name")

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for alias in v:
            safety.check_name(alias, "alias")
            if alias == "local":
                raise ValueError("alias 'local' is reserved for the built-in local runtime")
        if len(set(v)) != len(v):
            raise ValueError("an alias is listed twice")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            safety.check_env_name(key, "env key")
            if "\0" in value:
                raise ValueError(f"env {key}: the value contains a NUL byte")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        """Job directories are bound into containers: no ``,`` or ``:``, no ``..``."""
        return None if v is None else safety.check_bind_path(v, "workdir")


LOCAL = ClusterConfig(
    name="local", kind="process", container=ContainerSettings(engine="none"),
    slurm=SlurmSettings(poll_interval=0.2, marker_interval=0.1),
)
"""The embedded default: run each job script as a local process, no container."""


class ClusterConfigError(ValueError):
    """A cluster config file is wrong; the message names the file, field and problem."""


def read_mapping(path: Path, error: type[Exception], what: str,
                 allow_empty: bool = False) -> dict[str, Any]:
    """A YAML config file's top-level mapping (an empty file is ``{}`` if ``allow_empty``);
    ``error`` names the file and the problem; ``what``: the keys it should hold."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: must be a mapping {what}")
    return data


def validation_message(exc: ValidationError, where: object) -> str:
    """One ``where: field.path: message`` line per problem pydantic found."""
    return "\n".join(
        f"{where}: {'.'.join(str(p) for p in err['loc']) or '<top>'}: "
        f"{err['msg'].removeprefix('Value error, ')}" for err in exc.errors())


def load_cluster(path: Path) -> ClusterConfig:
    """Read and validate one cluster config file."""
    data = read_mapping(path, ClusterConfigError, "with at least 'name'")
    data.setdefault("name", path.stem)
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ClusterConfigError(validation_message(exc, path)) from None


DAEMON_CONFIG_NAMES = frozenset({"bridge.yaml", "bridge.yml"})
"""File names a clusters dir skips: the daemon config (``akobridge serve --config``)."""


class UnknownCluster(ValueError):
    """No cluster config has this name or alias."""


class Clusters:
    """The clusters a bridge knows, by name and alias (unique; a config named ``local``
    replaces the built-in local runtime)."""

    def __init__(self, configs: list[ClusterConfig]) -> None:
        self._by_name: dict[str, ClusterConfig] = {"local": LOCAL}
        for cfg in configs:
            for key in dict.fromkeys((cfg.name, *cfg.aliases)):  # its own name as alias is ok
                taken = self._by_name.get(key)
                if taken is not None and not (taken is LOCAL and key == cfg.name):
                    # a file named "local" replaces the built-in; nothing else is shadowed
                    what = "the built-in local runtime" if taken is LOCAL else (
                        f"cluster {taken.name}")
                    raise ClusterConfigError(
                        f"cluster {cfg.name}: {'name' if key == cfg.name else 'alias'} "
                        f"{key!r} is already taken by {what}; names and aliases must be unique")
                self._by_name[key] = cfg

    @classmethod
    def from_dir(cls, directory: Path | None) -> Clusters:
        """Every ``*.yaml``/``*.yml`` file in ``directory`` (which may be absent), except
        the daemon's own config, :data:`DAEMON_CONFIG_NAMES`, which may sit beside them."""
        if directory is None or not directory.is_dir():
            return cls([])
        files = sorted(f for f in [*directory.glob("*.yaml"), *directory.glob("*.yml")]
                       if f.name not in DAEMON_CONFIG_NAMES)
        return cls([load_cluster(f) for f in files])

    def get(self, name: str) -> ClusterConfig | None:
        return self._by_name.get(name)

    def require(self, name: str) -> ClusterConfig:
        """The cluster called ``name``, or :class:`UnknownCluster` saying how to add it."""
        cfg = self._by_name.get(name)
        if cfg is None:
            raise UnknownCluster(
                f"spec.runtime: no cluster config named {name!r} (known: "
                f"{', '.join(self.names())}); add {name}.yaml to the clusters directory "
                "or pass --runtime"
            )
        return cfg

    def names(self) -> list[str]:
        """Every name a workflow may use: the clusters' names and their aliases."""
        return sorted(self._by_name)

    def configs(self) -> list[ClusterConfig]:
        """Each cluster once (the built-in local one included), by name."""
        return sorted({id(c): c for c in self._by_name.values()}.values(), key=lambda c: c.name)
