"""The one internal workflow model that every intake format normalises into.

AkoFlow YAML (and later the Peak-style API) become a :class:`Workflow` of :class:`Step`s.
The store keeps it as JSON; the engine and the runtimes read only this model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    node_selector: dict[str, str] = Field(default_factory=dict)
    """AkoFlow ``nodeSelector`` (``k=v``); see ``runtimes.render`` for the keys Slurm uses."""


class RetryPolicy(_Frozen):
    """How often a failed step is tried again (AkoFlow has none: the default is no retry)."""

    retries: int = 0
    backoff_s: float = 5.0
    factor: float = 2.0
    exit_codes: tuple[int, ...] = ()
    """Retry only on these exit codes; empty means any failure."""


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

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


class Webhook(_Frozen):
    name: str = ""
    url: str


Workflow.model_rebuild()
