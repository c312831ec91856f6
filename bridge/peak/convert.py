"""A Peak definition plus an execute body → the internal :class:`~bridge.spec.model.Workflow`
that the engine and the runtimes run (one Slurm job, or local process, per step attempt).

Images and instance types come from the daemon's catalogue (``peak:`` in its config): an
``imageId``/``imageVersionId`` names a ``.sif`` or a ``docker://`` reference, an
``instanceTypeId`` a cluster and its shape (CPUs, memory, and the Slurm partition and gres
it names, as ``--partition``/``--gres`` that replace the cluster config's defaults),
``resources.storage`` the job's ``--tmp`` (at most the instance type's ``max_storage``;
none given: no ``--tmp``). Retry options: a step's ``runConfiguration.retryOptions``
replaces the workflow's; ``exponentialBackoff`` doubles the ``duration`` after each failed
try; no ``retryOptions`` anywhere: no retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bridge.peak.catalogue import CatalogueError
from bridge.peak.definition import Definition, RetryOptions
from bridge.peak.definition import Step as PeakStep
from bridge.spec.model import (
    OutputCondition,
    ParentRule,
    Repository,
    Resources,
    RetryPolicy,
    RunWhen,
    Step,
    Workflow,
)
from bridge.spec.quantities import parse_storage_mib

DEFAULT_RETRIES = 3
"""``numberOfRetries`` when a ``retryOptions`` object leaves it out."""
DEFAULT_RETRY_DELAY_S = 5.0
"""``duration`` when a ``retryOptions`` object leaves it out."""
RETRY_FIELDS = ("retries", "backoff_s", "factor", "exit_codes")


class Shape(Protocol):
    """What an instance type gives a step (:class:`bridge.peak.catalogue.InstanceType`)."""

    @property
    def cluster(self) -> str: ...
    @property
    def cpus(self) -> int: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def partition(self) -> str | None: ...
    @property
    def gres(self) -> str | None: ...
    def storage_problem(self, storage: str) -> str | None: ...


class Catalogue(Protocol):
    """:class:`bridge.peak.catalogue.Catalogue`: lookups raise ``ValueError`` (its message
    says what is missing)."""

    @property
    def default_type(self) -> int | None: ...
    def image(self, image_id: int, version_id: int | None = None) -> str: ...
    def instance_type(self, type_id: int) -> Shape: ...


class ConversionError(CatalogueError):
    """A definition that names something the catalogue (or the definition) does not have;
    ``field``: its path, ``message``: what is wrong."""


@dataclass(frozen=True)
class ExecuteRequest:
    """The body of ``POST /workflows/{id}/execute``."""

    global_params: Mapping[str, str] = field(default_factory=dict)
    step_params: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    steps_to_run: tuple[tuple[str, bool], ...] = ()
    """(stepName, runDAG) pairs; empty: every step."""


def to_workflow(defn: Definition, catalogue: Catalogue,
                request: ExecuteRequest | None = None) -> Workflow:
    """The workflow one execution runs (only the selected steps, when ``stepsToRun`` says).
    Secret names are not checked here: a step naming a secret the daemon lacks fails at its
    submission, saying which (the execution itself runs)."""
    request = request or ExecuteRequest()
    chosen = selected(defn, request.steps_to_run)
    steps = tuple(_step(name, defn.steps[name], defn, catalogue, request, chosen)
                  for name in defn.steps if name in chosen)
    runtime = steps[0].runtime or "local"
    return Workflow(name=defn.name, runtime=runtime, steps=steps, source_format="peak",
                    raw=json.dumps(defn.to_body(), sort_keys=True))


def selected(defn: Definition, steps_to_run: Iterable[tuple[str, bool]]) -> set[str]:
    """The steps an execution runs: all, or the named ones and (``runDAG``) their dependents."""
    wanted = list(steps_to_run)
    if not wanted:
        return set(defn.steps)
    children: dict[str, list[str]] = {name: [] for name in defn.steps}
    for name, step in defn.steps.items():
        for parent in step.parents or []:
            children[parent].append(name)
    chosen: set[str] = set()
    for i, (name, run_dag) in enumerate(wanted):
        if name not in defn.steps:
            raise ConversionError(f"stepsToRun[{i}].stepName", f"no step named {name!r}")
        todo = [name]
        while todo:
            current = todo.pop()
            if current not in chosen:
                chosen.add(current)
                if run_dag:
                    todo.extend(children[current])
    return chosen


def _step(name: str, step: PeakStep, defn: Definition, catalogue: Catalogue,
          request: ExecuteRequest, chosen: set[str]) -> Step:
    where = f"steps.{name}"
    try:
        image = catalogue.image(step.image_id, step.image_version_id)
    except ValueError as exc:
        raise ConversionError(f"{where}.imageId", _message(exc)) from None
    type_id = (step.resources.instance_type_id if step.resources else None) \
        or catalogue.default_type
    if type_id is None:
        raise ConversionError(f"{where}.resources.instanceTypeId",
                              "no instance type given and peak.defaults names none")
    try:
        shape = catalogue.instance_type(type_id)
    except ValueError as exc:
        raise ConversionError(f"{where}.resources.instanceTypeId", _message(exc)) from None
    storage = step.resources.storage if step.resources else None
    problem = shape.storage_problem(storage) if storage else None
    if problem:
        raise ConversionError(f"{where}.resources.storage", problem)
    env = dict(step.parameters.env or {}) if step.parameters else {}
    env.update(request.global_params)
    env.update(request.step_params.get(name, {}))
    options = (step.run_configuration.retry_options if step.run_configuration else None) \
        or defn.retry_options
    return Step(
        name=name, run=step.command, image=image, runtime=shape.cluster,
        parents=tuple(p for p in step.parents or [] if p in chosen),
        resources=Resources(cpus=shape.cpus, memory_mib=shape.memory_mib,
                            time_limit_s=step.step_timeout,
                            tmp_disk_mib=parse_storage_mib(storage) if storage else None,
                            node_selector=placement(shape)),
        retry=retry_policy(options), env=env, when=_when(step, chosen),
        outputs=dict(step.output_parameters or {}),
        secrets=tuple(step.parameters.secrets or []) if step.parameters else (),
        fresh_image=bool(step.clear_image_cache), merge_stderr=True,
        inherit=_inherit(name, step, defn, chosen),
        repository=Repository(url=step.repository.url, branch=step.repository.branch,
                              token_secret=step.repository.token or None)
        if step.repository else None,
        source=step.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def placement(shape: Shape) -> dict[str, str]:
    """The instance type's Slurm placement as the spec's selector keys (``partition``,
    ``gres``), which the job script renders as ``#SBATCH --partition``/``--gres`` over the
    cluster config's own ``slurm.partition`` (``runtimes.render.SELECTOR_OPTION``)."""
    return {key: value for key, value in (("partition", shape.partition), ("gres", shape.gres))
            if value}


def _inherit(name: str, step: PeakStep, defn: Definition,
             chosen: set[str]) -> dict[str, tuple[str, str]]:
    """Each inherited variable's source: the nearest upstream step (breadth first over the
    parents) that runs in this execution and declares the output parameter."""
    wanted = step.parameters.inherit if step.parameters and step.parameters.inherit else {}
    found: dict[str, tuple[str, str]] = {}
    for variable, param in wanted.items():
        queue, seen = list(step.parents or []), set()
        while queue:
            current = queue.pop(0)
            if current in seen or current not in defn.steps:
                continue
            seen.add(current)
            upstream = defn.steps[current]
            if current in chosen and param in (upstream.output_parameters or {}):
                found[variable] = (current, param)
                break
            queue.extend(upstream.parents or [])
    return found


def _message(exc: ValueError) -> str:
    return str(getattr(exc, "message", None) or exc)


def retry_policy(options: RetryOptions | None) -> RetryPolicy:
    """Peak's retryOptions as the engine's policy (every field given: no cluster default
    applies to a Peak step)."""
    if options is None:
        return RetryPolicy(retries=0, given=RETRY_FIELDS)
    retries = DEFAULT_RETRIES if options.number_of_retries is None else options.number_of_retries
    delay = DEFAULT_RETRY_DELAY_S if options.duration is None else options.duration
    return RetryPolicy(retries=retries, backoff_s=delay,
                       factor=2.0 if options.exponential_backoff else 1.0,
                       exit_codes=tuple(options.exit_codes or ()), given=RETRY_FIELDS)


def _when(step: PeakStep, chosen: set[str]) -> RunWhen:
    """The step's run rules; rules about steps this execution does not run are dropped."""
    params = step.execution_parameters
    skip = step.run_configuration.skip_configuration if step.run_configuration else None
    rules = tuple(
        ParentRule(condition=r.condition, parents=tuple(p for p in r.parents if p in chosen),
                   status=tuple(r.status))
        for r in (params.parent_status or [] if params else [])
        if any(p in chosen for p in r.parents))
    conditions = tuple(
        OutputCondition(condition=c.condition, step=c.step_name, param=c.param_name,
                        value=c.value)
        for c in (params.conditional or [] if params else []) if c.step_name in chosen)
    return RunWhen(parent_status=rules, conditions=conditions,
                   skip=bool(skip and skip.skip), skip_dag=bool(skip and skip.skip_dag))


__all__ = ["Catalogue", "ConversionError", "ExecuteRequest", "placement", "retry_policy",
           "selected", "to_workflow"]
