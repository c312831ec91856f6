"""The pure state machine: from stored activity states, job observations and the clock to
actions. No I/O here; the runner applies the actions to the store and the runtimes.

Lifecycle: ``PENDING → SUBMITTING → QUEUED → RUNNING → {COMPLETED, FAILED, TIMEOUT,
OUT_OF_MEMORY, CANCELLED, NODE_FAIL}``, plus ``SKIPPED`` (an upstream activity did not
complete) and ``RETRY_WAIT`` (a failed attempt the retry policy sends back after a backoff).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bridge.spec.model import RetryPolicy
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
    """What to do next for one workflow: submit what is ready, skip what cannot run, finish."""
    states = {a.name: a.state for a in activities}
    actions: list[Action] = []
    changed = True
    while changed:  # skips cascade down the DAG within one plan
        changed = False
        for a in activities:
            if states[a.name] is not ActivityState.PENDING:
                continue
            blocked = [p for p in a.parents if states[p] in FAILURES | {ActivityState.SKIPPED}]
            if blocked:
                states[a.name] = ActivityState.SKIPPED
                actions.append(Skip(a.name, f"upstream {blocked[0]} is {states[blocked[0]]}"))
                changed = True
    for a in activities:
        state = states[a.name]
        if not all(states[p] is ActivityState.COMPLETED for p in a.parents):
            continue
        if state is ActivityState.PENDING or (
            state is ActivityState.RETRY_WAIT and (a.retry_at is None or a.retry_at <= now)
        ):
            actions.append(Submit(a.name))
    if all(s.terminal for s in states.values()):
        actions.append(Finish(outcome(list(states.values()))))
    return actions


def outcome(states: Sequence[ActivityState]) -> WorkflowState:
    """A finished workflow's state: COMPLETED only if every activity completed."""
    if all(s is ActivityState.COMPLETED for s in states):
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
