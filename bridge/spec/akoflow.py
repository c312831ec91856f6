"""Parse, validate and normalise AkoFlow workflow YAML (seeds/akoflow-integration.txt).

:func:`parse_akoflow` reports every problem at once, each with its field path and YAML line.
Volumes are ``"SOURCE:TARGET"`` with exactly one ``':'`` (neither side may contain one).
``nodeSelector`` is one ``"key=value"`` string (split at the first ``'='``) or a mapping.
``webhooks`` is accepted under ``spec`` and, as the seed's section 3.3 shows it, at the top.
akobridge extensions (docs/akoflow-extensions.md): ``retry`` and ``timeLimit`` under ``spec``
(the workflow's default) and in each activity (which wins, field by field).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from bridge.spec.errors import Loc, Problem, SpecError, load_yaml, locate
from bridge.spec.model import Resources, RetryPolicy, Step, Volume, Webhook, Workflow
from bridge.spec.quantities import (
    parse_backoff_s,
    parse_cpu,
    parse_memory_mib,
    parse_time_limit_s,
)
from runtimes import safety
from runtimes.config import MAX_RETRIES, MAX_RETRY_FACTOR
from runtimes.render import SELECTOR_OPTION

SLURM_SELECTOR_KEYS = tuple(sorted(SELECTOR_OPTION))


@dataclass
class Parsed:
    """A valid workflow and the warnings (ignored or Kubernetes-only settings) found in it."""

    workflow: Workflow
    warnings: list[Problem]


# --- the YAML document, mirrored exactly ---------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Webhook(_Doc):
    name: str | None = None
    url: str


class _StoragePolicy(_Doc):
    type: str | None = None
    storage_class_name: str | None = Field(None, alias="storageClassName")
    storage_size: str | None = Field(None, alias="storageSize")


class _Retry(_Doc):
    """akobridge extension: the retry policy (values checked in :func:`_check_retry`)."""

    retries: Any = None
    backoff: Any = None
    factor: Any = None
    exit_codes: Any = Field(None, alias="exitCodes")


class _Activity(_Doc):
    name: str
    run: str
    image: str | None = None
    runtime: str | None = None
    memory_limit: Any = Field(None, alias="memoryLimit")  # checked by quantities
    cpu_limit: Any = Field(None, alias="cpuLimit")  # checked by quantities
    depends_on: list[str] | None = Field(None, alias="dependsOn")
    node_selector: Any = Field(None, alias="nodeSelector")  # "k=v" or a mapping
    keep_disk: bool | None = Field(None, alias="keepDisk")
    mount_path: str | None = Field(None, alias="mountPath")
    retry: _Retry | None = None  # akobridge extension
    time_limit: Any = Field(None, alias="timeLimit")  # akobridge extension, a duration


class _Spec(_Doc):
    namespace: str | None = None
    runtime: str | None = None
    schedule: str | None = None
    image: str | None = None
    storage_policy: _StoragePolicy | None = Field(None, alias="storagePolicy")
    webhooks: list[_Webhook] | None = None
    volumes: list[str] | None = None
    mount_path: str | None = Field(None, alias="mountPath")
    retry: _Retry | None = None  # akobridge extension: the activities' default
    time_limit: Any = Field(None, alias="timeLimit")  # akobridge extension: the default
    activities: list[_Activity]


class _Root(_Doc):
    name: str
    spec: _Spec
    webhooks: list[_Webhook] | None = None


# --- pydantic errors -> problems -------------------------------------------------------------


def _describe(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {safety.show(value)}"
    return f"{type(value).__name__} {safety.show(repr(value))[1:-1]}"


def _model_at(loc: Loc) -> type[_Doc] | None:
    """The mirror model that describes the mapping at ``loc`` (list indexes skipped)."""
    cls: type[_Doc] | None = _Root
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = next((f for n, f in cls.model_fields.items() if (f.alias or n) == part), None)
        cls = _inner_model(field.annotation) if field is not None else None
    return cls


def _inner_model(annotation: object) -> type[_Doc] | None:
    if isinstance(annotation, type) and issubclass(annotation, _Doc):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _keys(cls: type[_Doc]) -> list[str]:
    return [f.alias or n for n, f in cls.model_fields.items()]


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    cls = _model_at(loc[:-1])
    allowed = _keys(cls) if cls is not None else []
    message = f"unknown field {key!r}"
    hint = _suggest(key, allowed)
    if hint is None and cls is _Root and key in _keys(_Spec):
        hint = f"spec.{key}"
        message += f" at the top level; did you mean {hint!r} (it belongs under 'spec')?"
        return message
    if hint is None and cls is _Spec and key in _keys(_Activity):
        return message + " under 'spec'; it belongs in each activity"
    if hint is not None:
        return message + f"; did you mean {hint!r}?"
    return message + f" (allowed here: {', '.join(allowed)})"


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    for choice in choices:
        if choice.lower() == word.lower():
            return choice
    inside = [c for c in choices if len(word) >= 4 and word.lower() in c.lower()]
    if len(inside) == 1:
        return inside[0]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _from_pydantic(error: ErrorDetails, root: yaml.Node | None) -> Problem:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    path, line = locate(root, loc)
    if kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "invalid_key":
        message = f"keys must be strings, not {_describe(error['input'])}"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {_describe(error['input'])}"
        if kind == "string_type" and isinstance(error["input"], int | float):
            message += " (put it in quotes)"
    else:
        message = error["msg"]
    return Problem(path, message, line)


# --- semantic checks on the raw data (tolerant of wrong types: pydantic reports those) ------


class _Checker:
    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, loc: Loc, message: str, *, warning: bool = False) -> None:
        path, line = locate(self.root, loc)
        (self.warnings if warning else self.problems).append(Problem(path, message, line))

    def value(self, loc: Loc, check: Callable[[Any], object], value: object) -> None:
        try:
            check(value)
        except ValueError as exc:
            self.problem(loc, str(exc))

    def text(
        self, mapping: dict[Any, Any], loc: Loc, key: str, check: Callable[[str], object]
    ) -> None:
        value = mapping.get(key)
        if isinstance(value, str):
            self.value((*loc, key), check, value)


def _check(data: dict[Any, Any], root: yaml.Node | None) -> tuple[list[Problem], list[Problem]]:
    c = _Checker(root)
    c.text(data, (), "name", lambda v: safety.check_name(v, "workflow name"))
    spec = data.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    at: Loc = ("spec",)
    c.text(spec, at, "namespace", lambda v: safety.check_name(v, "namespace"))
    c.text(spec, at, "runtime", lambda v: safety.check_name(v, "runtime"))
    c.text(spec, at, "image", safety.check_image)
    c.text(spec, at, "mountPath", lambda v: safety.check_bind_path(v, "mountPath"))
    c.text(spec, at, "schedule", check_cron)
    for i, volume in _items(spec.get("volumes")):
        if isinstance(volume, str):
            c.value((*at, "volumes", i), parse_volume, volume)
    for where, hooks in ((at, spec.get("webhooks")), ((), data.get("webhooks"))):
        for i, hook in _items(hooks):
            if isinstance(hook, dict):
                c.text(hook, (*where, "webhooks", i), "url", safety.check_webhook_url)
    _check_limits(c, spec, at)
    if spec.get("storagePolicy") is not None:
        c.problem(
            (*at, "storagePolicy"),
            "storagePolicy is a Kubernetes setting; it is recorded but ignored on Slurm",
            warning=True,
        )
    activities = spec.get("activities")
    if isinstance(activities, list) and not activities:
        c.problem((*at, "activities"), "the workflow has no activities")
    _check_activities(c, [(i, a) for i, a in _items(activities) if isinstance(a, dict)])
    return c.problems, c.warnings


def _items(value: object) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _check_activities(c: _Checker, activities: list[tuple[int, dict[Any, Any]]]) -> None:
    index: dict[str, int] = {}
    for i, act in activities:
        at: Loc = ("spec", "activities", i)
        name = act.get("name")
        if isinstance(name, str):
            c.value((*at, "name"), lambda v: safety.check_name(v, "activity name"), name)
            if name in index:
                first, line = locate(c.root, ("spec", "activities", index[name]))
                c.problem(
                    (*at, "name"),
                    f"duplicate activity name {name!r} (first at {first}, line {line})",
                )
            index.setdefault(name, i)
        run = act.get("run")
        if isinstance(run, str) and not run.strip():
            c.problem((*at, "run"), "run is empty: give the command(s) to execute")
        c.text(act, at, "image", safety.check_image)
        c.text(act, at, "mountPath", lambda v: safety.check_bind_path(v, "mountPath"))
        c.text(act, at, "runtime", lambda v: safety.check_name(v, "runtime"))
        for key, parse in (("cpuLimit", parse_cpu), ("memoryLimit", parse_memory_mib)):
            if act.get(key) is not None:
                c.value((*at, key), parse, act[key])
        if act.get("nodeSelector") is not None:
            c.value((*at, "nodeSelector"), parse_node_selector, act["nodeSelector"])
            _selector_warnings(c, (*at, "nodeSelector"), act["nodeSelector"])
        _check_limits(c, act, at)
        if act.get("keepDisk") is True:
            c.problem(
                (*at, "keepDisk"),
                "keepDisk is a Kubernetes setting (keep the volume "
                "claim); it is recorded but Slurm runtimes do not use it",
                warning=True,
            )
    graph: dict[str, list[str]] = {}
    for i, act in activities:
        deps = act.get("dependsOn")
        name = act.get("name")
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            deps = []
        if len(set(deps)) != len(deps):
            c.problem(
                ("spec", "activities", i, "dependsOn"),
                "dependsOn lists an activity more than once; duplicates are ignored",
                warning=True,
            )
        for j, dep in enumerate(deps):
            if dep not in index:
                hint = _suggest(dep, list(index))
                c.problem(
                    ("spec", "activities", i, "dependsOn", j),
                    f"depends on {dep!r}, which is not an activity of this workflow"
                    + (f"; did you mean {hint!r}?" if hint else ""),
                )
        if isinstance(name, str) and index.get(name) == i:
            graph[name] = [d for d in dict.fromkeys(deps) if d in index]
    for cycle in find_cycles(graph):
        c.problem(
            ("spec", "activities", index[cycle[0]], "dependsOn"),
            f"dependency cycle: {' -> '.join(cycle)} (each depends on the next)",
        )


def _check_limits(c: _Checker, mapping: dict[Any, Any], at: Loc) -> None:
    """The akobridge extensions ``timeLimit`` and ``retry`` of ``spec`` or an activity."""
    if mapping.get("timeLimit") is not None:
        c.value((*at, "timeLimit"), parse_time_limit_s, mapping["timeLimit"])
    retry = mapping.get("retry")
    if not isinstance(retry, dict):
        return  # absent, empty, or not a mapping (pydantic says so)
    at = (*at, "retry")
    retries = retry.get("retries")
    if retries is not None and not (
        isinstance(retries, int) and not isinstance(retries, bool) and 0 <= retries <= MAX_RETRIES
    ):
        c.problem((*at, "retries"), f"retries must be a whole number from 0 to {MAX_RETRIES}, "
                  f"not {_describe(retries)}")
    if retry.get("backoff") is not None:
        c.value((*at, "backoff"), parse_backoff_s, retry["backoff"])
    factor = retry.get("factor")
    if factor is not None and not (
        isinstance(factor, int | float) and not isinstance(factor, bool)
        and 1 <= factor <= MAX_RETRY_FACTOR
    ):
        c.problem((*at, "factor"), f"factor must be a number from 1 to {MAX_RETRY_FACTOR:g} "
                  f"(each wait is the previous one times factor), not {_describe(factor)}")
    codes = retry.get("exitCodes")
    if codes is None:
        return
    if not isinstance(codes, list):
        c.problem((*at, "exitCodes"), f"exitCodes must be a list of exit codes, e.g. [1, 137], "
                  f"not {_describe(codes)}")
        return
    seen: set[int] = set()
    for j, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            c.problem((*at, "exitCodes", j),
                      f"an exit code is a whole number from 0 to 255, not {_describe(code)}")
        elif code in seen:
            c.problem((*at, "exitCodes", j), f"exit code {code} is listed twice", warning=True)
        else:
            seen.add(code)
            if code == 0:
                c.problem((*at, "exitCodes", j),
                          "exit code 0 is success: it never causes a retry", warning=True)


def _selector_warnings(c: _Checker, loc: Loc, value: object) -> None:
    try:
        selector = parse_node_selector(value)
    except ValueError:
        return
    for key in selector:
        if key not in SLURM_SELECTOR_KEYS:
            hint = _suggest(key, SLURM_SELECTOR_KEYS)
            c.problem(
                loc,
                f"nodeSelector key {key!r} means nothing to Slurm and is ignored"
                + (
                    f"; did you mean {hint!r}?"
                    if hint
                    else f" (Slurm uses: {', '.join(SLURM_SELECTOR_KEYS)})"
                ),
                warning=True,
            )


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each distinct cycle once, as ``[a, b, a]``; iterative DFS (no recursion limit)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in graph:
        if start in state:
            continue
        state[start] = 1
        path, stack = [start], [iter(graph[start])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
            elif state[nxt] == 1:
                cycle = path[path.index(nxt) :]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append([*cycle, nxt])
    return cycles


# --- field parsers shared by the checks and the normaliser -----------------------------------


def parse_volume(value: str) -> Volume:
    """``"SOURCE:TARGET"``: two absolute paths separated by exactly one ``':'``."""
    if value.count(":") != 1:
        raise ValueError(
            f"volume {safety.show(value)} must be 'SOURCE:TARGET' "
            "(two absolute paths separated by exactly one ':')"
        )
    source, target = value.split(":")
    return Volume(
        source=safety.check_path(source, "volume source"),
        target=safety.check_bind_path(target, "volume target"),
    )


def parse_node_selector(value: object) -> dict[str, str]:
    """``"key=value"`` (one pair, split at the first ``'='``) or a mapping of strings."""
    if isinstance(value, str):
        left, sep, right = value.partition("=")
        if not sep:
            raise ValueError(f"nodeSelector {safety.show(value)} must be 'key=value'")
        pairs: dict[object, object] = {left.strip(): right.strip()}
    elif isinstance(value, dict):
        pairs = value
    else:
        raise ValueError(f"nodeSelector must be 'key=value' or a mapping, not {_describe(value)}")
    selector: dict[str, str] = {}
    for key, val in pairs.items():
        if not isinstance(key, str) or not _is_selector_key(key):
            raise ValueError(f"nodeSelector key {key!r} is not a valid key")
        if not isinstance(val, str):
            raise ValueError(f"nodeSelector {key!r} must be a string, not {_describe(val)}")
        selector[key] = safety.check_label(val, f"nodeSelector {key!r}")
    return selector


def _is_selector_key(key: str) -> bool:
    return (
        bool(key)
        and len(key) <= 253
        and key[0].isascii()
        and key[0].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "._/-") for c in key)
    )


def check_cron(value: str) -> str:
    """A five-field crontab expression (validated by APScheduler when it is installed)."""
    try:
        from apscheduler.triggers.cron import CronTrigger
    except ImportError:  # pragma: no cover - apscheduler is a dependency
        if len(value.split()) != 5:
            raise ValueError(f"schedule {safety.show(value)} needs 5 cron fields") from None
        return value
    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(
            f"schedule {safety.show(value)} is not a valid cron expression: {exc}"
        ) from None
    return value


# --- normalising ---------------------------------------------------------------------------


def _normalise(doc: _Root, data: dict[str, Any], text: str) -> Workflow:
    spec = doc.spec
    hooks = [*(spec.webhooks or []), *(doc.webhooks or [])]
    policy = (
        spec.storage_policy.model_dump(by_alias=True, exclude_none=True)
        if spec.storage_policy
        else {}
    )
    raw_activities = data["spec"]["activities"]
    defaults = (spec.retry, spec.time_limit)
    return Workflow(
        name=doc.name,
        namespace=spec.namespace or "default",
        runtime=spec.runtime or "local",
        image=spec.image,
        mount_path=spec.mount_path,
        volumes=tuple(parse_volume(v) for v in spec.volumes or []),
        webhooks=tuple(Webhook(name=h.name or "", url=h.url) for h in hooks),
        schedule=spec.schedule,
        storage_policy=policy,
        steps=tuple(
            _step(a, raw, defaults)
            for a, raw in zip(spec.activities, raw_activities, strict=True)
        ),
        source_format="akoflow",
        raw=text,
    )


def _step(act: _Activity, raw: dict[str, Any], defaults: tuple[_Retry | None, Any]) -> Step:
    spec_retry, spec_time = defaults
    time_limit = act.time_limit if act.time_limit is not None else spec_time
    return Step(
        name=act.name,
        run=act.run,
        image=act.image,
        runtime=act.runtime,
        mount_path=act.mount_path,
        parents=tuple(dict.fromkeys(act.depends_on or [])),
        resources=Resources(
            cpus=None if act.cpu_limit is None else parse_cpu(act.cpu_limit),
            memory_mib=None if act.memory_limit is None else parse_memory_mib(act.memory_limit),
            node_selector={}
            if act.node_selector is None
            else parse_node_selector(act.node_selector),
            time_limit_s=None if time_limit is None else parse_time_limit_s(time_limit),
        ),
        retry=_retry_policy(spec_retry, act.retry),
        keep_disk=bool(act.keep_disk),
        source=copy.deepcopy(raw),
    )


def _retry_policy(*layers: _Retry | None) -> RetryPolicy:
    """The file's retry settings, field by field, the last layer (the activity) winning; what
    no layer sets stays open for the cluster's defaults (``RetryPolicy.given``)."""
    fields: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if layer.retries is not None:
            fields["retries"] = layer.retries
        if layer.backoff is not None:
            fields["backoff_s"] = parse_backoff_s(layer.backoff)
        if layer.factor is not None:
            fields["factor"] = float(layer.factor)
        if layer.exit_codes is not None:
            fields["exit_codes"] = tuple(dict.fromkeys(layer.exit_codes))
    return RetryPolicy(**fields, given=tuple(sorted(fields)))


def parse_akoflow(text: str, *, source: str = "<string>") -> Parsed:
    """Parse AkoFlow YAML into a :class:`Workflow`; raise :class:`SpecError` with every problem."""
    root, data, problems = load_yaml(text)
    if not problems and not isinstance(data, dict):
        problems = [
            Problem(
                "",
                "the document must be a mapping with 'name' and 'spec' "
                f"at the top level, not {_describe(data)}",
                1,
            )
        ]
    if problems or not isinstance(data, dict):
        raise SpecError(problems, source)
    doc: _Root | None = None
    try:
        doc = _Root.model_validate(data)
    except ValidationError as exc:
        problems = [_from_pydantic(e, root) for e in exc.errors()]
    semantic, warnings = _check(data, root)
    problems += semantic
    if problems or doc is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0, p.path))
        raise SpecError(problems, source)
    return Parsed(_normalise(doc, data, text), warnings)
