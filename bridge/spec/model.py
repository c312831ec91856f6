"""The one internal workflow model that every intake format normalises into.

AkoFlow YAML (and later the Peak-style API) become a :class:`Workflow` of :class:`Step`s.
The store keeps it as JSON; the engine and the runtimes read only this model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtimes.config import MAX_BACKOFF_S, MAX_RETRIES, MAX_RETRY_FACTOR


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Frozen):
    """What one step asks of the scheduler; ``None`` means "the cluster default"."""

    cpus: int | None = None
    """Whole CPUs (``--cpus-per-task``); AkoFlow's ``500m`` is rounded up to 1."""
    memory_mib: int | None = None
    """Memory in MiB (``--mem=<n>M``)."""
    time_limit_s: int | None = None
    """Wall-time limit in seconds (``--time``, rounded up to whole minutes by Slurm)."""
    tmp_disk_mib: int | None = Field(default=None, ge=1)
    """Minimum temporary disk per node in Slurm's MB (``--tmp=<n>``); Peak's
    ``resources.storage`` (AkoFlow has no such field)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """AkoFlow ``nodeSelector`` (``k=v``); see ``runtimes.render`` for the keys Slurm uses."""


class RetryPolicy(_Frozen):
    """How often a failed step is tried again: after failed attempt ``n`` (1-based) comes
    another one ``backoff_s * factor**(n - 1)`` seconds later (at most a day), while
    ``n <= retries``. AkoFlow has no such field: the default is no retry; the akobridge
    extension ``retry`` sets it (docs/akoflow-extensions.md)."""

    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    backoff_s: float = Field(default=5.0, ge=0, le=MAX_BACKOFF_S)
    factor: float = Field(default=2.0, ge=1, le=MAX_RETRY_FACTOR)
    exit_codes: tuple[Annotated[int, Field(ge=0, le=255)], ...] = ()
    """Retry only on these exit codes; empty means any failure."""
    given: tuple[str, ...] = ()
    """The fields the workflow file set (``activities[].retry`` or ``spec.retry``); the
    others take the cluster's ``retry:`` defaults at intake
    (:meth:`Workflow.with_retry_defaults`)."""

    def with_defaults(self, defaults: Mapping[str, object]) -> RetryPolicy:
        """This policy with ``defaults`` (field name → value) where the file set nothing."""
        update = {k: v for k, v in defaults.items() if k not in self.given}
        return RetryPolicy.model_validate({**self.model_dump(), **update}) if update else self


class ParentRule(_Frozen):
    """Peak ``parentStatus``: run only when all of / one of ``parents`` ended in one of
    ``status`` (``success``: COMPLETED; ``failure``: FAILED, TIMEOUT, OUT_OF_MEMORY,
    CANCELLED, NODE_FAIL)."""

    condition: Literal["all-of", "one-of"]
    parents: tuple[str, ...]
    status: tuple[Literal["success", "failure"], ...]


class OutputCondition(_Frozen):
    """Peak ``conditional``: run only when ``step``'s output parameter ``param`` equals (or
    does not equal) ``value`` (compared as text, surrounding whitespace stripped)."""

    condition: Literal["equals", "not-equals"]
    step: str
    param: str
    value: str


class RunWhen(_Frozen):
    """When a step runs, beyond "every parent completed" (the AkoFlow rule and the default)."""

    parent_status: tuple[ParentRule, ...] = ()
    """Every rule must hold; with rules, a failed parent does not skip the step by itself."""
    conditions: tuple[OutputCondition, ...] = ()
    """Every condition must hold (checked once the steps they name have ended)."""
    skip: bool = False
    """Skip this step; its dependents run as if it had completed (``skipConfiguration``)."""
    skip_dag: bool = False
    """With ``skip``: its dependents are skipped too."""


class Repository(_Frozen):
    """Code to check out into the job directory before the job (Peak ``repository``)."""

    url: str
    branch: str | None = None
    token_secret: str | None = None
    """The name of the secret holding the access token."""


class Volume(_Frozen):
    """AkoFlow ``volumes: ["A:B"]``: ``source`` on the bridge host, ``target`` on the cluster."""

    source: str
    target: str


class Step(_Frozen):
    """One activity (AkoFlow) or step (Peak): one sbatch job per attempt."""

    name: str
    run: str
    """The command text, delivered byte-exact to the container."""
    image: str | None = None
    runtime: str | None = None
    """Cluster name when it differs from the workflow's."""
    mount_path: str | None = None
    parents: tuple[str, ...] = ()
    resources: Resources = Resources()
    retry: RetryPolicy = RetryPolicy()
    env: dict[str, str] = Field(default_factory=dict)
    keep_disk: bool = False
    when: RunWhen = RunWhen()
    outputs: dict[str, str] = Field(default_factory=dict)
    """Output parameter name → file (relative to the job directory) read after the step."""
    inherit: dict[str, tuple[str, str]] = Field(default_factory=dict)
    """Environment variable → (upstream step, its output parameter), set at submission from
    what that step left (Peak ``parameters.inherit``); unset when it left nothing."""
    merge_stderr: bool = False
    """The command's stderr goes to its stdout log (Peak logs are one stream)."""
    repository: Repository | None = None
    """Checked out into ``<job dir>/repo`` before each attempt; the command runs there."""
    fresh_image: bool = False
    """Pull the image again even when the cluster's cache has it (Peak ``clearImageCache``);
    once per execution, before its first job."""
    secrets: tuple[str, ...] = ()
    """Names of secrets (the daemon's secrets file) given to the job as environment
    variables; their values are looked up at submission and never stored or rendered."""
    source: dict[str, object] = Field(default_factory=dict)
    """The step as the user wrote it (for AkoFlow's ``ResourceK8sBase64``)."""


class Workflow(_Frozen):
    """A validated, normalised workflow: what the store keeps and the engine runs."""

    name: str
    namespace: str = "default"
    runtime: str = "local"
    image: str | None = None
    mount_path: str | None = None
    volumes: tuple[Volume, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    schedule: str | None = None
    storage_policy: dict[str, str] = Field(default_factory=dict)
    steps: tuple[Step, ...]
    source_format: str = "akoflow"
    raw: str = ""
    """The submitted document, verbatim (AkoFlow's ``RawWorkflow`` is its base64)."""

    def with_retry_defaults(
        self, defaults: Callable[[str], Mapping[str, object]]
    ) -> Workflow:
        """Each step's retry fields the file left unset, from ``defaults(cluster name)`` (the
        step's cluster: its ``runtime``, else the workflow's). Applied once, at intake."""
        steps = tuple(
            s.model_copy(
                update={"retry": s.retry.with_defaults(defaults(s.runtime or self.runtime))}
            )
            for s in self.steps
        )
        return self.model_copy(update={"steps": steps})

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


class Webhook(_Frozen):
    name: str = ""
    url: str


Workflow.model_rebuild()
