"""The pure state machine, exhaustively on small DAGs (no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from bridge.engine import (
    FAILURES,
    ActivityState,
    ActivityView,
    Finish,
    Skip,
    Submit,
    WorkflowState,
    observe,
    outcome,
    plan,
)
from bridge.spec.model import OutputCondition, ParentRule, RetryPolicy, RunWhen
from runtimes.base import JobState, JobStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
S = ActivityState


def diamond(**states: ActivityState) -> list[ActivityView]:
    parents = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    return [ActivityView(n, states.get(n, S.PENDING), parents[n]) for n in "abcd"]


def test_only_roots_are_submitted_first() -> None:
    assert plan(diamond(), NOW) == [Submit("a")]


def test_children_follow_completed_parents() -> None:
    assert plan(diamond(a=S.COMPLETED), NOW) == [Submit("b"), Submit("c")]
    assert plan(diamond(a=S.COMPLETED, b=S.COMPLETED, c=S.RUNNING), NOW) == []
    assert plan(diamond(a=S.COMPLETED, b=S.COMPLETED, c=S.COMPLETED), NOW) == [Submit("d")]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_skips_every_dependent_and_fails_the_workflow(failure: ActivityState) -> None:
    actions = plan(diamond(a=failure), NOW)
    assert [a for a in actions if isinstance(a, Skip)] == [
        Skip("b", f"upstream a is {failure}"), Skip("c", f"upstream a is {failure}"),
        Skip("d", "upstream b is SKIPPED"),
    ]
    finish = [a for a in actions if isinstance(a, Finish)]
    expected = WorkflowState.CANCELLED if failure is S.CANCELLED else WorkflowState.FAILED
    assert finish == [Finish(expected)]
    assert not any(isinstance(a, Submit) for a in actions)


def test_every_state_combination_is_consistent() -> None:
    """For every assignment of states to the diamond: never submit a child of an unfinished
    or failed parent, never finish while something is not terminal."""
    for combo in itertools.product(list(ActivityState), repeat=4):
        views = diamond(**dict(zip("abcd", combo, strict=True)))
        actions = plan(views, NOW)
        states = dict(zip("abcd", combo, strict=True))
        skipped = {a.name for a in actions if isinstance(a, Skip)}
        for act in actions:
            if isinstance(act, Submit):
                view = next(v for v in views if v.name == act.name)
                assert states[act.name] in (S.PENDING, S.RETRY_WAIT)
                assert all(states[p] is S.COMPLETED for p in view.parents)
                assert act.name not in skipped
            if isinstance(act, Skip):
                assert states[act.name] is S.PENDING
        done = all(s.terminal or n in skipped for n, s in states.items())
        assert any(isinstance(a, Finish) for a in actions) == done


def test_retry_policy_backs_off_then_gives_up() -> None:
    policy = RetryPolicy(retries=2, backoff_s=5, factor=2)
    failed = JobStatus(JobState.FAILED, exit_code=1)
    first = observe(ActivityView("x", S.RUNNING, attempt=1, retry=policy), failed, NOW)
    assert first.state is S.RETRY_WAIT and first.retry_at == NOW + timedelta(seconds=5)
    second = observe(ActivityView("x", S.RUNNING, attempt=2, retry=policy), failed, NOW)
    assert second.retry_at == NOW + timedelta(seconds=10)
    third = observe(ActivityView("x", S.RUNNING, attempt=3, retry=policy), failed, NOW)
    assert third == observe(ActivityView("x", S.RUNNING, attempt=3), failed, NOW)
    assert third.state is S.FAILED


def test_retry_waits_for_its_time() -> None:
    view = ActivityView("x", S.RETRY_WAIT, attempt=1, retry_at=NOW + timedelta(seconds=3))
    assert plan([view], NOW) == []
    assert plan([view], NOW + timedelta(seconds=3)) == [Submit("x")]


def test_retry_only_on_listed_exit_codes_and_never_after_cancel() -> None:
    policy = RetryPolicy(retries=3, exit_codes=(75,))
    view = ActivityView("x", S.RUNNING, attempt=1, retry=policy)
    assert observe(view, JobStatus(JobState.FAILED, 75), NOW).state is S.RETRY_WAIT
    assert observe(view, JobStatus(JobState.FAILED, 1), NOW).state is S.FAILED
    any_code = ActivityView("x", S.RUNNING, attempt=1, retry=RetryPolicy(retries=3))
    assert observe(any_code, JobStatus(JobState.CANCELLED), NOW).state is S.CANCELLED
    assert observe(any_code, JobStatus(JobState.TIMEOUT), NOW).state is S.RETRY_WAIT


@pytest.mark.parametrize("job_state", list(JobState))
def test_observations_map_one_to_one_without_retry(job_state: JobState) -> None:
    tr = observe(ActivityView("x", S.QUEUED, attempt=1), JobStatus(job_state), NOW)
    assert tr.state.value == job_state.value and tr.retry_at is None


def test_outcome() -> None:
    assert outcome([S.COMPLETED, S.COMPLETED]) is WorkflowState.COMPLETED
    assert outcome([S.COMPLETED, S.SKIPPED]) is WorkflowState.COMPLETED  # skipped by a rule
    assert outcome([S.FAILED, S.SKIPPED]) is WorkflowState.FAILED
    assert outcome([S.FAILED, S.CANCELLED]) is WorkflowState.FAILED
    assert outcome([S.CANCELLED, S.SKIPPED]) is WorkflowState.CANCELLED


# -- Peak rules: parentStatus, conditional, skipConfiguration ---------------------------------
def view(name: str, state: ActivityState = S.PENDING, parents: tuple[str, ...] = (),
         when: RunWhen | None = None, outputs: dict[str, str] | None = None) -> ActivityView:
    return ActivityView(name, state, parents, when=when or RunWhen(), outputs=outputs or {})


ON_FAILURE = RunWhen(parent_status=(ParentRule(condition="one-of", parents=("a",),
                                               status=("failure",)),))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_cleanup_step_runs_after_its_parent_failed(failure: ActivityState) -> None:
    steps = [view("a", failure), view("cleanup", parents=("a",), when=ON_FAILURE),
             view("next", parents=("a",))]
    actions = plan(steps, NOW)
    assert Submit("cleanup") in actions
    assert Skip("next", f"upstream a is {failure}") in actions


def test_a_cleanup_step_is_skipped_after_success_and_waits_until_then() -> None:
    assert plan([view("a", S.RUNNING), view("cleanup", parents=("a",), when=ON_FAILURE)],
                NOW) == []
    actions = plan([view("a", S.COMPLETED), view("cleanup", parents=("a",), when=ON_FAILURE)],
                   NOW)
    assert actions == [Skip("cleanup", "parentStatus one-of ['failure'] not met "
                                       "(a COMPLETED)"), Finish(WorkflowState.COMPLETED)]


def test_all_of_needs_every_named_parent() -> None:
    rule = RunWhen(parent_status=(ParentRule(condition="all-of", parents=("a", "b"),
                                             status=("success",)),))
    ok = plan([view("a", S.COMPLETED), view("b", S.COMPLETED),
               view("c", parents=("a", "b"), when=rule)], NOW)
    assert ok == [Submit("c")]
    one_failed = plan([view("a", S.COMPLETED), view("b", S.FAILED),
                       view("c", parents=("a", "b"), when=rule)], NOW)
    assert isinstance(one_failed[0], Skip) and one_failed[-1] == Finish(WorkflowState.FAILED)


@pytest.mark.parametrize(("condition", "value", "runs"), [
    ("equals", "yes", True), ("equals", "no", False),
    ("not-equals", "no", True), ("not-equals", "yes", False)])
def test_conditions_compare_a_parents_output(condition: str, value: str, runs: bool) -> None:
    when = RunWhen(conditions=(OutputCondition(condition=condition, step="a", param="answer",
                                               value=value),))
    steps = [view("a", S.COMPLETED, outputs={"answer": "yes\n"}),
             view("b", parents=("a",), when=when), view("c", parents=("b",))]
    actions = plan(steps, NOW)
    if runs:
        assert actions == [Submit("b")]
    else:
        assert [type(x) for x in actions] == [Skip, Skip, Finish]
        assert actions[1] == Skip("c", "upstream b is SKIPPED")
        assert actions[2] == Finish(WorkflowState.COMPLETED)  # skipped by a rule: success


def test_a_condition_on_a_missing_output_is_false() -> None:
    when = RunWhen(conditions=(OutputCondition(condition="equals", step="a", param="x",
                                               value=""),))
    actions = plan([view("a", S.COMPLETED), view("b", parents=("a",), when=when)], NOW)
    assert actions[0] == Skip("b", "condition a.x equals '' not met (no value)")


def test_skip_lets_dependents_run_and_skip_dag_does_not() -> None:
    skip = plan([view("a", when=RunWhen(skip=True)), view("b", parents=("a",))], NOW)
    assert skip == [Skip("a", "skipped by its skipConfiguration"), Submit("b")]  # one pass
    after = plan([view("a", S.SKIPPED, when=RunWhen(skip=True)), view("b", parents=("a",))],
                 NOW)
    assert after == [Submit("b")]
    dag = plan([view("a", when=RunWhen(skip=True, skip_dag=True)), view("b", parents=("a",))],
               NOW)
    assert dag[:2] == [Skip("a", "skipped by its skipConfiguration"),
                       Skip("b", "upstream a is SKIPPED")]
