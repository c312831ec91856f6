"""The pure state machine: from stored activity states, job observations and the clock to
actions. No I/O here; the runner applies the actions to the store and the runtimes.

Lifecycle: ``PENDING → SUBMITTING → QUEUED → RUNNING → {COMPLETED, FAILED, TIMEOUT,
OUT_OF_MEMORY, CANCELLED, NODE_FAIL}``, plus ``SKIPPED`` (an upstream activity did not
complete) and ``RETRY_WAIT`` (a failed attempt the retry policy sends back after a backoff).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bridge.spec.model import RetryPolicy, RunWhen
from runtimes.base import JobState, JobStatus

MAX_RETRY_DELAY_S = 86400.0
"""The longest wait before a retry, however large ``backoff * factor**n`` grows."""


class ActivityState(StrEnum):
    PENDING = "PENDING"
    SUBMITTING = "SUBMITTING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED = "CANCELLED"
    NODE_FAIL = "NODE_FAIL"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def live(self) -> bool:
        """A job exists (or may exist) on the cluster for the current attempt."""
        return self in (ActivityState.SUBMITTING, ActivityState.QUEUED, ActivityState.RUNNING)


FAILURES = frozenset({
    ActivityState.FAILED, ActivityState.TIMEOUT, ActivityState.OUT_OF_MEMORY,
    ActivityState.CANCELLED, ActivityState.NODE_FAIL,
})
TERMINAL = FAILURES | {ActivityState.COMPLETED, ActivityState.SKIPPED}


class WorkflowState(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not WorkflowState.RUNNING


@dataclass(frozen=True)
class ActivityView:
    """What the engine needs to know about one activity."""

    name: str
    state: ActivityState
    parents: tuple[str, ...] = ()
    attempt: int = 0
    retry: RetryPolicy = RetryPolicy()
    retry_at: datetime | None = None
    when: RunWhen = RunWhen()
    outputs: Mapping[str, str] = field(default_factory=dict)
    """Output parameters the step left (read from its job directory after it ended)."""


@dataclass(frozen=True)
class Submit:
    name: str


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str


@dataclass(frozen=True)
class Finish:
    state: WorkflowState


Action = Submit | Skip | Finish


def plan(activities: Sequence[ActivityView], now: datetime) -> list[Action]:
    """What to do next for one workflow: submit what is ready, skip what cannot run, finish.

    A step runs once every parent completed (or was skipped by its own ``skip`` without
    ``skip_dag``) — unless it has ``parent_status`` rules, which then decide once its parents
    have ended — and its ``conditions`` hold; otherwise it is skipped, and skips cascade."""
    by_name = {a.name: a for a in activities}
    states = {a.name: a.state for a in activities}
    actions: list[Action] = []
    changed = True
    while changed:  # skips cascade down the DAG within one plan
        changed = False
        for a in activities:
            if states[a.name] is not ActivityState.PENDING:
                continue
            why = _why_skip(a, states, by_name)
            if why:
                states[a.name] = ActivityState.SKIPPED
                actions.append(Skip(a.name, why))
                changed = True
    for a in activities:
        state = states[a.name]
        if not _ready(a, states, by_name):
            continue
        if state is ActivityState.PENDING or (
            state is ActivityState.RETRY_WAIT and (a.retry_at is None or a.retry_at <= now)
        ):
            actions.append(Submit(a.name))
    if all(s.terminal for s in states.values()):
        actions.append(Finish(outcome(list(states.values()))))
    return actions


def _passes(parent: ActivityView, state: ActivityState) -> bool:
    """Whether a parent in ``state`` lets its children run under the default rule."""
    return state is ActivityState.COMPLETED or (
        state is ActivityState.SKIPPED and parent.when.skip and not parent.when.skip_dag)


def _outcome_word(state: ActivityState) -> str | None:
    if state is ActivityState.COMPLETED:
        return "success"
    return "failure" if state in FAILURES else None


def _why_skip(a: ActivityView, states: Mapping[str, ActivityState],
              by_name: Mapping[str, ActivityView]) -> str | None:
    """Why a PENDING step is skipped now; None: it runs, or it is too early to say."""
    if a.when.skip:
        return "skipped by its skipConfiguration"
    rules = a.when.parent_status
    if not rules:
        blocked = [p for p in a.parents if states[p] in FAILURES
                   or (states[p] is ActivityState.SKIPPED and not _passes(by_name[p], states[p]))]
        if blocked:
            return f"upstream {blocked[0]} is {states[blocked[0]]}"
    else:
        named = {p for r in rules for p in r.parents} | set(a.parents)
        if not all(states[p].terminal for p in named):
            return None
        for rule in rules:
            hits = [_outcome_word(states[p]) in rule.status for p in rule.parents]
            if not (all(hits) if rule.condition == "all-of" else any(hits)):
                words = ", ".join(f"{p} {states[p]}" for p in rule.parents)
                return f"parentStatus {rule.condition} {list(rule.status)} not met ({words})"
    for cond in a.when.conditions:
        if not states[cond.step].terminal:
            return None
        got = by_name[cond.step].outputs.get(cond.param)
        equal = got is not None and got.strip() == cond.value.strip()
        if equal != (cond.condition == "equals"):
            shown = "no value" if got is None else repr(got.strip())
            return (f"condition {cond.step}.{cond.param} {cond.condition} {cond.value!r} "
                    f"not met ({shown})")
    return None


def _ready(a: ActivityView, states: Mapping[str, ActivityState],
           by_name: Mapping[str, ActivityView]) -> bool:
    """Whether the step's parents (and the steps its rules name) allow it to run now."""
    if a.when.parent_status:
        named = {p for r in a.when.parent_status for p in r.parents} | set(a.parents)
        if not all(states[p].terminal for p in named):
            return False
    elif not all(_passes(by_name[p], states[p]) for p in a.parents):
        return False
    return all(states[c.step].terminal for c in a.when.conditions)


def outcome(states: Sequence[ActivityState]) -> WorkflowState:
    """A finished workflow's state: COMPLETED if every activity completed or was skipped by
    a rule (a skip after a failure comes with that failure), else CANCELLED or FAILED."""
    if not any(s in FAILURES for s in states):
        return WorkflowState.COMPLETED
    if ActivityState.CANCELLED in states and ActivityState.FAILED not in states:
        return WorkflowState.CANCELLED
    return WorkflowState.FAILED


@dataclass(frozen=True)
class Transition:
    """An activity's next state after an observation (``retry_at`` set for RETRY_WAIT)."""

    state: ActivityState
    retry_at: datetime | None = None


def observe(activity: ActivityView, status: JobStatus, now: datetime) -> Transition:
    """Fold one job observation into the activity's state, applying the retry policy."""
    if not status.state.terminal:
        return Transition(ActivityState(status.state.value))
    if status.state is JobState.COMPLETED:
        return Transition(ActivityState.COMPLETED)
    policy = activity.retry
    retryable = status.state is not JobState.CANCELLED and (
        not policy.exit_codes or status.exit_code in policy.exit_codes
    )
    if retryable and activity.attempt <= policy.retries:
        try:
            delay = min(policy.backoff_s * policy.factor ** (activity.attempt - 1),
                        MAX_RETRY_DELAY_S)
        except OverflowError:
            delay = MAX_RETRY_DELAY_S
        return Transition(ActivityState.RETRY_WAIT, now + timedelta(seconds=delay))
    return Transition(ActivityState(status.state.value))
