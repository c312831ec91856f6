"""Webhook events: the seed's payloads, written to the outbox (delivered by
:mod:`bridge.notify.webhooks`, whose names are re-exported here for older imports).

``ACTIVITY_COMPLETED`` is emitted for every activity that reaches a final state, and
``WORKFLOW_DONE`` once at the end, after all of them. The seed's fields come first, named and
typed exactly as the AkoFlow guide gives them; the bridge's own fields follow.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import yaml

from bridge.engine import WorkflowState
from bridge.notify.webhooks import (
    Deliverer,
    DeliveryLoop,
    DeliveryPolicy,
    WebhookSettings,
    destination,
    make_due,
    next_try,
    pending_by_destination,
)
from bridge.store import ActivityRow, WorkflowRow

ACTIVITY_COMPLETED = "ACTIVITY_COMPLETED"
WORKFLOW_DONE = "WORKFLOW_DONE"

STATUS_CODES: dict[str, int] = {
    "COMPLETED": 1, "FAILED": 3, "TIMEOUT": 4, "OUT_OF_MEMORY": 5, "CANCELLED": 6,
    "NODE_FAIL": 7, "SKIPPED": 8,
}
"""``Status`` integers: 1 is the seed's "completed successfully"; 0 and 2 are left out because
the AkoFlow engine uses them for "created" and "finished"."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def stamp(ts: datetime | None) -> str | None:
    """The seed's timestamp form, ``2025-03-09T12:00:00Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


def activity_payload(
    wf: WorkflowRow, act: ActivityRow, ids: dict[str, int], cluster: str,
) -> dict[str, Any]:
    """The ``ACTIVITY_COMPLETED`` body for a finished activity."""
    step = act.spec
    parents = [ids[p] for p in step.parents]
    return {
        "type": ACTIVITY_COMPLETED,
        "data": {
            "Id": act.id,
            "WorkflowId": wf.id,
            "Namespace": wf.namespace,
            "Name": act.name,
            "Image": step.image or wf.spec.image or "",
            "ResourceK8sBase64": b64(yaml.safe_dump(step.source, sort_keys=False,
                                                    allow_unicode=True)),
            "Status": STATUS_CODES[act.state.value],
            "ProcId": act.job_id,
            "DependOnActivity": parents[0] if parents else None,
            "CreatedAt": stamp(act.created_at),
            "StartedAt": stamp(act.started_at),
            "FinishedAt": stamp(act.finished_at),
            "State": act.state.value,
            "ExitCode": act.exit_code,
            "Reason": act.reason,
            "Attempt": act.attempt,
            "SlurmJobId": act.job_id if act.job_id and act.job_id.isdigit() else None,
            "DependsOn": parents,
            "Runtime": cluster,
        },
    }


def workflow_payload(
    wf: WorkflowRow, state: WorkflowState, activities: list[ActivityRow], at: datetime,
) -> dict[str, Any]:
    """The ``WORKFLOW_DONE`` body."""
    counts: dict[str, int] = {}
    for a in activities:
        counts[a.state.value] = counts.get(a.state.value, 0) + 1
    return {
        "type": WORKFLOW_DONE,
        "data": {
            "ID": wf.id,
            "Namespace": wf.namespace,
            "Runtime": wf.runtime,
            "Name": wf.name,
            "RawWorkflow": b64(wf.raw),
            "Status": STATUS_CODES[state.value],
            "State": state.value,
            "Reason": wf.reason,
            "Activities": counts,
            "CreatedAt": stamp(wf.created_at),
            "FinishedAt": stamp(at),
        },
    }


__all__ = ["ACTIVITY_COMPLETED", "STATUS_CODES", "WORKFLOW_DONE", "Deliverer", "DeliveryLoop",
           "DeliveryPolicy", "WebhookSettings", "activity_payload", "b64", "destination",
           "make_due", "next_try", "pending_by_destination", "stamp", "workflow_payload"]
