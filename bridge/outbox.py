"""State changes that tell the outside world: write the webhook events into the outbox inside
the transaction that makes the change (so an event is never lost nor sent for a change that
was rolled back)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from bridge.engine import WorkflowState
from bridge.events import ACTIVITY_COMPLETED, WORKFLOW_DONE, activity_payload, workflow_payload
from bridge.store import Store, WorkflowRow, iso


def urls(wf: WorkflowRow) -> list[str]:
    return [h.url for h in wf.spec.webhooks]


def emit_activity(store: Store, db: sqlite3.Connection, wf_id: int, act_id: int,
                  cluster: str, at: datetime) -> None:
    """Queue ACTIVITY_COMPLETED for an activity that reached a final state."""
    emit_activities(store, db, wf_id, [(act_id, cluster)], at)


def emit_activities(store: Store, db: sqlite3.Connection, wf_id: int,
                    finished: list[tuple[int, str]], at: datetime) -> None:
    """:func:`emit_activity` for many activities (id, cluster) of one workflow, reading the
    workflow and its activity ids once (per activity that was O(activities) each)."""
    if not finished:
        return
    wf = store.workflow(wf_id)
    assert wf is not None
    ids, hooks = store.activity_ids(wf_id), urls(wf)
    for act_id, cluster in finished:
        payload = activity_payload(wf, store.activity(act_id), ids, cluster)
        Store.add_event(db, wf_id, ACTIVITY_COMPLETED, payload, hooks, at)


def finish_workflow(store: Store, db: sqlite3.Connection, wf_id: int, state: WorkflowState,
                    at: datetime, reason: str | None) -> bool:
    """Mark a RUNNING workflow done and queue WORKFLOW_DONE; False if it was not RUNNING."""
    cur = db.execute("UPDATE workflows SET state=?, finished_at=?, reason=coalesce(?, reason)"
                     " WHERE id=? AND state='RUNNING'", (state.value, iso(at), reason, wf_id))
    if cur.rowcount != 1:
        return False
    row = store.workflow(wf_id)
    assert row is not None
    payload = workflow_payload(row, state, store.activities(wf_id), at)
    Store.add_event(db, wf_id, WORKFLOW_DONE, payload, urls(row), at)
    return True
