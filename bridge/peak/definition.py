"""Peak-style workflow definitions as the peak-sdk client sends them (create and PUT bodies).

The models mirror the JSON of seeds/peak-workflows-sdk.txt field for field (camelCase aliases,
strict types, unknown fields refused). :func:`parse_definition` reports every problem at once,
each with its field path (``steps.train.parents[0]``): shapes and values here, the links
between steps (parents, conditions, inherited parameters) in :mod:`bridge.peak.links`.
Optional fields stay ``None`` when absent: defaults (3 retries, 5 s) are the executor's
business, so a definition gives back exactly the body it was made from (:meth:`to_body`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic import ValidationError as _ValidationError

from bridge.peak.cron import check_cron
from bridge.peak.links import link_problems
from bridge.peak.problems import DefinitionError, describe, from_pydantic
from bridge.spec.errors import Problem
from bridge.spec.quantities import parse_storage_mib
from runtimes import safety

MAX_RETRIES = 5
MAX_RETRY_DURATION_S = 120
OTHER_STEP_TYPES = ("http", "export", "sql")
"""Step types the Peak service has and the bridge does not run (only ``standard``)."""

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_RELATIVE_FILE = re.compile(r"[A-Za-z0-9._+@%=,~-][A-Za-z0-9._/+@%=,~-]{0,1023}")
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}")
_REPO_SCHEMES = ("https", "http", "ssh", "git")


def _check(check: Callable[[str, str], str], what: str) -> AfterValidator:
    return AfterValidator(lambda value: check(value, what))


def _email(value: str, what: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"{safety.show(value)} is not an e-mail address")
    return value


def _storage(value: str, what: str) -> str:
    parse_storage_mib(value, what)
    return value


def _output_file(value: str, what: str) -> str:
    if not _RELATIVE_FILE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(f"{what} {safety.show(value)} must be a plain relative path in the "
                         "step's working directory (letters, digits, . _ / - ; no '..')")
    return value


def _repository_url(value: str, what: str) -> str:
    scheme, sep, _ = value.partition("://")
    if (any(c.isspace() or ord(c) < 32 for c in value) or value.startswith("-")
            or not value.strip("/")):
        raise ValueError(f"{what} {safety.show(value)} is not a repository URL")
    if sep and scheme.lower() not in _REPO_SCHEMES:
        raise ValueError(f"{what} {safety.show(value)}: the scheme must be one of "
                         f"{', '.join(_REPO_SCHEMES)}")
    return value


def _branch(value: str, what: str) -> str:
    if not _BRANCH.fullmatch(value) or ".." in value or value.endswith((".lock", "/", ".")):
        raise ValueError(f"{what} {safety.show(value)} is not a branch name")
    return value


def _token(value: str, what: str) -> str:
    return value and safety.check_name(value, f"{what} (the name of a stored secret)")


def _text(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _cron(value: str, what: str) -> str:
    try:
        return check_cron(value)
    except ValueError as exc:
        raise ValueError(f"not a valid 5-field cron expression: {exc}") from None


def _env_mapping(value: object) -> object:
    """``env`` as a map, or as describe returns it: a list of single-key objects."""
    if not isinstance(value, list):
        return value
    merged: dict[object, object] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"item {i} of the list must be an object with one key "
                             '(env is {"NAME": "value"} or [{"NAME": "value"}])')
        merged.update(item)
    return merged


WorkflowName = Annotated[str, _check(safety.check_name, "the workflow name")]
StepName = Annotated[str, _check(safety.check_name, "the step name")]
EnvName = Annotated[str, _check(safety.check_env_name, "the name")]
ParamName = Annotated[str, _check(safety.check_name, "the parameter name")]
SecretName = Annotated[str, _check(safety.check_name, "the secret name")]
Email = Annotated[str, _check(_email, "e-mail")]
Text = Annotated[str, _check(_text, "the value")]
Id = Annotated[int, Field(ge=1)]
ExitCode = Annotated[int, Field(ge=0, le=255)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class Tag(_Body):
    name: Annotated[str, Field(min_length=1, max_length=128)]


class Trigger(_Body):
    """``{"cron": "0 0 * * *"}`` or ``{"webhook": true}`` (the service mints the webhook id)."""

    cron: Annotated[str, _check(_cron, "cron")] | None = None
    webhook: bool | None = None
    webhook_policy: Literal["generate", "preserve"] | None = Field(None, alias="webhookPolicy")
    """Sent by the client's patch: ``preserve`` keeps the webhook id already minted."""

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        if (self.cron is None) == (self.webhook is None):
            raise ValueError('a trigger is either {"cron": "<5 fields>"} or {"webhook": true} '
                             "(leave triggers empty for a manual workflow)")
        if self.webhook is False:
            raise ValueError("webhook must be true (leave triggers empty for a manual workflow)")
        if self.webhook_policy is not None and self.webhook is None:
            raise ValueError("webhookPolicy belongs to a webhook trigger")
        return self


class Events(_Body):
    success: bool | None = None
    fail: bool | None = None
    runtime_exceeded: Annotated[int, Field(ge=1)] | None = Field(None, alias="runtimeExceeded")
    """Minutes: notify once when an execution runs longer."""


class WebhookWatcher(_Body):
    name: Text
    url: Annotated[str, _check(safety.check_webhook_url, "the webhook url")]
    payload: str
    """Sent as given (a string, usually JSON text)."""


class Recipients(_Body):
    to: Annotated[list[Email], Field(min_length=1)]


class EmailWatcher(_Body):
    name: Text | None = None
    recipients: Recipients


class Watcher(_Body):
    """Who hears of which events: exactly one of ``user``, ``webhook``, ``email``."""

    events: Events
    user: Email | None = None
    webhook: WebhookWatcher | None = None
    email: EmailWatcher | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Watcher:
        kinds = [k for k in ("user", "webhook", "email") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a watcher names exactly one of user, webhook or email"
                             + (f" (this one has {' and '.join(kinds)})" if kinds else ""))
        return self


class RetryOptions(_Body):
    """Workflow level, or a step's ``runConfiguration.retryOptions`` (which overrides it)."""

    exit_codes: list[ExitCode] | None = Field(None, alias="exitCodes")
    """Retry only on these exit codes; empty or absent: any non-zero one."""
    number_of_retries: Annotated[int, Field(ge=0, le=MAX_RETRIES)] | None = Field(
        None, alias="numberOfRetries")
    exponential_backoff: bool | None = Field(None, alias="exponentialBackoff")
    duration: Annotated[float, Field(ge=0, le=MAX_RETRY_DURATION_S)] | None = None
    """Seconds before the first retry (doubled each time with exponentialBackoff)."""


class Resources(_Body):
    instance_type_id: Id | None = Field(None, alias="instanceTypeId")
    storage: Annotated[str, _check(_storage, "storage")] | None = None
    """``10GB``: the job's ``--tmp`` (minimum temporary disk per node; docs/peak.md)."""


class Repository(_Body):
    url: Annotated[str, _check(_repository_url, "the repository url")]
    branch: Annotated[str, _check(_branch, "the branch")] | None = None
    token: Annotated[str, _check(_token, "the token")] | None = None
    """The name of the access token in the secrets store (never the token itself); describe
    replies of the Peak service show ``""`` for none."""


class Parameters(_Body):
    env: Annotated[dict[EnvName, str], BeforeValidator(_env_mapping)] | None = None
    secrets: list[SecretName] | None = None
    inherit: dict[EnvName, ParamName] | None = None
    """Variable name → the name of an ancestor step's output parameter."""


class Conditional(_Body):
    condition: Literal["equals", "not-equals"]
    param_name: ParamName = Field(alias="paramName")
    step_name: StepName = Field(alias="stepName")
    value: str


class ParentStatus(_Body):
    condition: Literal["all-of", "one-of"]
    parents: Annotated[list[StepName], Field(min_length=1)]
    status: Annotated[list[Literal["success", "failure"]], Field(min_length=1)]


class ExecutionParameters(_Body):
    conditional: list[Conditional] | None = None
    parent_status: list[ParentStatus] | None = Field(None, alias="parentStatus")


class SkipConfiguration(_Body):
    skip: bool | None = None
    skip_dag: bool | None = Field(None, alias="skipDAG")


class RunConfiguration(_Body):
    retry_options: RetryOptions | None = Field(None, alias="retryOptions")
    skip_configuration: SkipConfiguration | None = Field(None, alias="skipConfiguration")


class Step(_Body):
    """One ``standard`` step: one job per attempt."""

    type: Literal["standard"] | None = None
    image_id: Id = Field(alias="imageId")
    image_version_id: Id | None = Field(None, alias="imageVersionId")
    command: Annotated[str, _check(_text, "command")]
    resources: Resources | None = None
    parents: list[StepName] | None = None
    step_timeout: Annotated[int, Field(ge=1)] | None = Field(None, alias="stepTimeout")
    """Seconds; no limit when absent."""
    clear_image_cache: bool | None = Field(None, alias="clearImageCache")
    repository: Repository | None = None
    parameters: Parameters | None = None
    output_parameters: dict[ParamName, Annotated[str, _check(_output_file, "the file")]] | None = (
        Field(None, alias="outputParameters"))
    execution_parameters: ExecutionParameters | None = Field(None, alias="executionParameters")
    run_configuration: RunConfiguration | None = Field(None, alias="runConfiguration")

    @property
    def parent_names(self) -> tuple[str, ...]:
        """``parents`` without repeats, in their order."""
        return tuple(dict.fromkeys(self.parents or ()))


class Metadata(_Body):
    allow_concurrent_execution: bool | None = Field(None, alias="allowConcurrentExecution")


class Definition(_Body):
    """A workflow as created or replaced (PUT) through ``/workflows/api/v1/workflows``."""

    name: WorkflowName
    tags: list[Tag] | None = None
    triggers: list[Trigger] | None = None
    watchers: list[Watcher] | None = None
    retry_options: RetryOptions | None = Field(None, alias="retryOptions")
    metadata: Metadata | None = None
    steps: Annotated[dict[StepName, Step], Field(min_length=1)]

    def to_body(self) -> dict[str, Any]:
        """The JSON body this definition was made from (``env`` as a map, nulls left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_definition(data: object) -> Definition:
    """The definition in a create or PUT body; :class:`DefinitionError` lists every problem."""
    if not isinstance(data, dict):
        raise DefinitionError([Problem("", f"the body must be a JSON object, not "
                                           f"{describe(data)}")])
    other = _other_type_steps(data)
    problems = [*other.values()]
    try:
        definition: Definition | None = Definition.model_validate(data)
    except _ValidationError as exc:
        definition = None
        problems += [p for p in from_pydantic(exc, Definition) if not _inside(p, other)]
    problems += link_problems(data)
    if problems or definition is None:
        raise DefinitionError(problems)
    return definition


def _other_type_steps(data: dict[Any, Any]) -> dict[str, Problem]:
    """Steps of a type the bridge does not run, with the one problem each gets."""
    steps = data.get("steps")
    found: dict[str, Problem] = {}
    for name, step in steps.items() if isinstance(steps, dict) else ():
        kind = step.get("type") if isinstance(step, dict) else None
        if kind in OTHER_STEP_TYPES:
            found[str(name)] = Problem(
                f"steps.{name}.type", f"{kind!r} steps exist in the Peak service, but the bridge "
                "runs only 'standard' steps (a command in an image)")
    return found


def _inside(problem: Problem, steps: dict[str, Problem]) -> bool:
    return any(problem.path == f"steps.{n}" or problem.path.startswith((f"steps.{n}.",
               f"steps.{n}[")) for n in steps)
