"""Webhook events: the seed's payloads, written to the outbox, delivered in order with retries.

``ACTIVITY_COMPLETED`` is emitted for every activity that reaches a final state, and
``WORKFLOW_DONE`` once at the end, after all of them. The seed's fields come first, named and
typed exactly as the AkoFlow guide gives them; the bridge's own fields follow.
"""

from __future__ import annotations

import base64
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
import yaml

from bridge.engine import WorkflowState
from bridge.store import ActivityRow, Store, WorkflowRow, iso, now_utc

log = structlog.get_logger("akobridge.events")

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


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry with exponential backoff and jitter; give up after ``max_tries``."""

    timeout_s: float = 10.0
    first_delay_s: float = 1.0
    max_delay_s: float = 300.0
    max_tries: int = 12

    def delay(self, tries: int) -> float:
        base = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, tries - 1))
        return float(base * random.uniform(0.5, 1.0))


class Deliverer:
    """Posts pending deliveries, per (workflow, URL) strictly in event order."""

    def __init__(self, store: Store, policy: DeliveryPolicy | None = None,
                 client: httpx.Client | None = None) -> None:
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self.client = client or httpx.Client(
            timeout=self.policy.timeout_s, headers={"User-Agent": "akobridge"},
        )

    def deliver_due(self, now: datetime | None = None) -> int:
        """One pass over the outbox; returns how many deliveries were attempted."""
        now = now or now_utc()
        heads = self.store.db.execute(
            "SELECT d.id, d.url, d.tries, d.next_try_at, e.type, e.payload FROM deliveries d"
            " JOIN events e ON e.id=d.event_id WHERE d.id IN (SELECT min(id) FROM deliveries"
            " WHERE state='pending' GROUP BY workflow_id, url) ORDER BY d.id"
        ).fetchall()
        attempted = 0
        for row in heads:
            if datetime.fromisoformat(row["next_try_at"]) > now:
                continue
            attempted += 1
            error = self._post(row["url"], row["id"], row["type"], row["payload"])
            self._record(row["id"], row["tries"] + 1, error)
        return attempted

    def _post(self, url: str, delivery_id: int, type_: str, payload: str) -> str | None:
        try:
            resp = self.client.post(
                url, content=payload.encode("utf-8"),
                headers={"Content-Type": "application/json", "X-Akobridge-Event": type_,
                         "X-Akobridge-Delivery": str(delivery_id)},
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if resp.is_success:
            return None
        return f"HTTP {resp.status_code}"

    def _record(self, delivery_id: int, tries: int, error: str | None) -> None:
        now = now_utc()
        with self.store.transaction() as db:
            if error is None:
                db.execute(
                    "UPDATE deliveries SET state='delivered', tries=?, delivered_at=?,"
                    " last_error=NULL WHERE id=?", (tries, iso(now), delivery_id),
                )
                return
            gave_up = tries >= self.policy.max_tries
            db.execute(
                "UPDATE deliveries SET state=?, tries=?, last_error=?, next_try_at=? WHERE id=?",
                ("failed" if gave_up else "pending", tries, error,
                 iso(now + timedelta(seconds=self.policy.delay(tries))), delivery_id),
            )
        log.warning("webhook delivery failed", delivery=delivery_id, tries=tries, error=error,
                    gave_up=gave_up)


class DeliveryLoop(threading.Thread):
    """Runs :meth:`Deliverer.deliver_due` in the background on its own store connection."""

    def __init__(self, store_path: Any, policy: DeliveryPolicy | None = None,
                 interval_s: float = 0.1) -> None:
        super().__init__(name="akobridge-webhooks", daemon=True)
        self._path = store_path
        self._policy = policy
        self._interval = interval_s
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        store = Store(self._path)
        deliverer = Deliverer(store, self._policy)
        try:
            while not self.stopping.is_set():
                try:
                    deliverer.deliver_due()
                except Exception:  # keep delivering; the row stays pending
                    log.exception("webhook loop error")
                self.wake.wait(self._interval)
                self.wake.clear()
        finally:
            deliverer.client.close()
            store.close()
