"""Fold what a runtime reported into the store: one committed transaction per change, each
row claimed by a conditional UPDATE inside it (never decided on from an earlier read)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import structlog

from bridge import engine
from bridge.engine import ActivityState, ActivityView
from bridge.outbox import emit_activity
from bridge.store import LIVE_STATES, ActivityRow, AttemptRow, Store, iso
from runtimes import JobState, JobStatus

log = structlog.get_logger("akobridge.record")


def view(act: ActivityRow) -> ActivityView:
    return ActivityView(act.name, act.state, act.spec.parents, act.attempt, act.spec.retry,
                        act.retry_at, act.spec.when, act.outputs)


def record_observation(store: Store, attempt: AttemptRow, status: JobStatus,
                       now: datetime, outputs: Mapping[str, str] | None = None,
                       ) -> ActivityState | None:
    """Apply one job observation to its attempt and activity; the activity's new state, or
    ``None`` when the attempt was no longer live (someone else recorded its end).
    ``outputs``: the output parameters of an ended step, stored with its end (so no plan
    sees the step ended without them)."""
    with store.transaction() as db:
        act = store.activity(attempt.activity_id)
        if (status.state.terminal and act.cancel_requested
                and status.state is not JobState.COMPLETED):
            status = replace(status, state=JobState.CANCELLED,
                             reason=status.reason or "cancelled on request")
        final = status.state.terminal
        started = iso(status.started_at)
        fallback = iso(now) if status.state is not JobState.QUEUED else None
        finished = iso(status.finished_at or now) if final else None
        used = (status.max_rss_kb, status.elapsed_s, status.cpu_s) if final else (None,) * 3
        cur = db.execute(
            "UPDATE attempts SET state=?, exit_code=?, reason=?, started_at=CASE WHEN ?"
            " IS NOT NULL THEN ? ELSE coalesce(started_at, ?) END, finished_at=?,"
            " max_rss_kb=coalesce(?, max_rss_kb), elapsed_s=coalesce(?, elapsed_s),"
            f" cpu_s=coalesce(?, cpu_s) WHERE id=? AND state IN {LIVE_STATES}",
            (status.state.value, status.exit_code, status.reason, started, started, fallback,
             finished, *used, attempt.id),
        )
        if cur.rowcount != 1 or act.attempt != attempt.number:
            return None
        tr = engine.observe(view(act), status, now)
        db.execute(
            "UPDATE activities SET state=?, exit_code=?, reason=?, retry_at=?, started_at=CASE"
            " WHEN ? IS NOT NULL THEN ? ELSE coalesce(started_at, ?) END, finished_at=?"
            " WHERE id=? AND attempt=?",
            (tr.state.value, status.exit_code, status.reason, iso(tr.retry_at), started,
             started, fallback, finished if tr.state.terminal else None, act.id, attempt.number),
        )
        if tr.state.terminal and outputs is not None:
            db.execute("UPDATE activities SET outputs=? WHERE id=?",
                       (json.dumps(dict(outputs), sort_keys=True), act.id))
        if tr.state.terminal:
            emit_activity(store, db, act.workflow_id, act.id, attempt.cluster, now)
    log.info("job state", token=attempt.token, job=attempt.job_id, state=status.state.value,
             exit_code=status.exit_code, activity=tr.state.value)
    return tr.state


def record_usage(store: Store, found: Sequence[tuple[AttemptRow, JobStatus]]) -> int:
    """Store the resource use that accounting reported after the attempts' end was recorded
    (one transaction); how many attempts got some."""
    if not found:
        return 0
    n = 0
    with store.transaction() as db:
        for a, status in found:
            if not status.has_usage and status.elapsed_s is None:
                continue
            cur = db.execute(
                "UPDATE attempts SET max_rss_kb=coalesce(?, max_rss_kb),"
                " elapsed_s=coalesce(?, elapsed_s), cpu_s=coalesce(?, cpu_s)"
                f" WHERE id=? AND job_id=? AND state NOT IN {LIVE_STATES}",
                (status.max_rss_kb, status.elapsed_s, status.cpu_s, a.id, a.job_id))
            n += cur.rowcount
    return n


def record_submitted(store: Store, submitted: Sequence[tuple[AttemptRow, str]],
                     now: datetime) -> int:
    """Commit the job ids of attempts the cluster accepted (one transaction); how many were
    still unconfirmed SUBMITTING attempts."""
    if not submitted:
        return 0
    claimed = 0
    with store.transaction() as db:
        for a, job_id in submitted:
            cur = db.execute(
                "UPDATE attempts SET job_id=?, state='QUEUED', submitted_at=? WHERE id=?"
                " AND job_id IS NULL AND state='SUBMITTING'", (job_id, iso(now), a.id))
            if cur.rowcount:
                claimed += 1
                db.execute("UPDATE activities SET job_id=?, state='QUEUED' WHERE id=?"
                           " AND attempt=? AND state='SUBMITTING'",
                           (job_id, a.activity_id, a.number))
    return claimed


def record_never_submitted(store: Store, attempt: AttemptRow, state: JobState, reason: str,
                           now: datetime) -> ActivityState | None:
    """An unconfirmed attempt that is known not to exist on the cluster ends (a refused
    submission, a cancellation before sbatch)."""
    return record_observation(store, attempt, JobStatus(state, None, reason), now)
