"""Webhook events: the seed's payloads, written to the outbox, delivered in order with retries.

``ACTIVITY_COMPLETED`` is emitted for every activity that reaches a final state, and
``WORKFLOW_DONE`` once at the end, after all of them. The seed's fields come first, named and
typed exactly as the AkoFlow guide gives them; the bridge's own fields follow.
"""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def destination(url: str) -> str:
    """Where a URL's deliveries go: ``host:port`` (each destination is delivered to on its own,
    so a receiver that never answers delays only its own deliveries)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return url
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme, 0)
    return f"{parsed.host}:{port}" if parsed.host else url


def pending_by_destination(store: Store) -> dict[str, int]:
    """Pending deliveries per destination (``host:port``)."""
    counts: dict[str, int] = {}
    for url, n in store.db.execute(
            "SELECT url, count(*) FROM deliveries WHERE state='pending' GROUP BY url"):
        key = destination(url)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def next_try(store: Store) -> datetime | None:
    """When the earliest pending delivery is due (``None``: nothing pending)."""
    row = store.db.execute(
        "SELECT min(next_try_at) FROM deliveries WHERE state='pending'").fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None


def make_due(store: Store, now: datetime | None = None) -> int:
    """Make every pending delivery due now (a user asked for them: skip the backoff)."""
    with store.transaction() as db:
        cur = db.execute("UPDATE deliveries SET next_try_at=? WHERE state='pending'",
                         (iso(now or now_utc()),))
    return int(cur.rowcount)


class Deliverer:
    """Posts pending deliveries, per (workflow, URL) strictly in event order.

    Destinations are independent: in one pass, each destination's deliveries are posted on
    its own thread, so a receiver that accepts and never answers costs only its own timeout.
    """

    def __init__(self, store: Store, policy: DeliveryPolicy | None = None,
                 client: httpx.Client | None = None, only: str | None = None) -> None:
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self.only = only
        """Deliver to this destination (``host:port``) only."""
        self.client = client or httpx.Client(
            timeout=self.policy.timeout_s, headers={"User-Agent": "akobridge"},
        )

    def _due_heads(self, now: datetime) -> list[sqlite3.Row]:
        heads = self.store.db.execute(
            "SELECT d.id, d.url, d.tries, d.next_try_at, e.type, e.payload FROM deliveries d"
            " JOIN events e ON e.id=d.event_id WHERE d.id IN (SELECT min(id) FROM deliveries"
            " WHERE state='pending' GROUP BY workflow_id, url) ORDER BY d.id"
        ).fetchall()
        return [h for h in heads if datetime.fromisoformat(h["next_try_at"]) <= now
                and (self.only is None or destination(h["url"]) == self.only)]

    def deliver_due(self, now: datetime | None = None) -> int:
        """One pass over the outbox; returns how many deliveries were attempted."""
        heads = self._due_heads(now or now_utc())
        groups: dict[str, list[sqlite3.Row]] = {}
        for row in heads:
            groups.setdefault(destination(row["url"]), []).append(row)
        if len(groups) <= 1:
            for row in heads:
                error = self._post(row["url"], row["id"], row["type"], row["payload"])
                self._record(row["id"], row["tries"] + 1, error)
            return len(heads)

        def post_all(rows: list[sqlite3.Row]) -> list[tuple[sqlite3.Row, str | None]]:
            return [(r, self._post(r["url"], r["id"], r["type"], r["payload"])) for r in rows]

        with ThreadPoolExecutor(min(len(groups), 16),
                                thread_name_prefix="akb-webhook") as pool:
            for done in pool.map(post_all, groups.values()):
                for row, error in done:  # recorded on this thread's store connection
                    self._record(row["id"], row["tries"] + 1, error)
        return len(heads)

    def _post(self, url: str, delivery_id: int, type_: str, payload: str) -> str | None:
        try:
            resp = self.client.post(
                url, content=payload.encode("utf-8"),
                headers={"Content-Type": "application/json", "X-Akobridge-Event": type_,
                         "X-Akobridge-Delivery": str(delivery_id)},
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        except (ValueError, TypeError) as exc:  # e.g. a URL httpx cannot use
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
    """Delivers in the background: one thread per destination, each on its own store
    connection, so one slow or black-holed receiver never holds up another."""

    def __init__(self, store_path: Any, policy: DeliveryPolicy | None = None,
                 interval_s: float = 0.1) -> None:
        super().__init__(name="akobridge-webhooks", daemon=True)
        self._path = store_path
        self._policy = policy
        self._interval = interval_s
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._lanes: dict[str, threading.Thread] = {}

    def run(self) -> None:
        store = Store(self._path)
        try:
            while not self.stopping.is_set():
                try:
                    for dest in pending_by_destination(store):
                        if dest not in self._lanes:
                            lane = threading.Thread(target=self._lane, args=(dest,),
                                                    name=f"akb-webhooks-{dest}", daemon=True)
                            self._lanes[dest] = lane
                            lane.start()
                except Exception:  # keep going; the rows stay pending
                    log.exception("webhook loop error")
                self.wake.wait(self._interval)
        finally:
            store.close()

    def _lane(self, dest: str) -> None:
        store = Store(self._path)
        deliverer = Deliverer(store, self._policy, only=dest)
        try:
            while not self.stopping.is_set():
                try:
                    deliverer.deliver_due()
                except Exception:  # keep delivering; the row stays pending
                    log.exception("webhook loop error", destination=dest)
                self.wake.wait(self._interval)
        finally:
            deliverer.client.close()
            store.close()

    def poke(self) -> None:
        """Look at the outbox now (a pulse: every waiting thread wakes once)."""
        self.wake.set()
        self.wake.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop looking; a post in flight is abandoned (its row stays pending)."""
        self.stopping.set()
        self.wake.set()
        deadline = time.monotonic() + timeout
        for lane in [self, *self._lanes.values()]:
            if lane.is_alive() and lane is not threading.current_thread():
                lane.join(max(0.0, deadline - time.monotonic()))
