"""Peak watchers: tell a definition's watchers when an execution ends ``Success`` (event
``success``) or ``Failed`` (``fail``), or runs longer than ``runtimeExceeded`` minutes (once).

:func:`scan` (a daemon job, every second) finds the executions with something to tell and
queues each notification in one transaction together with its row in ``peak_notifications``
(unique per execution, watcher and event) and an outbox event: a webhook watcher's event gets
one delivery to its URL (:mod:`bridge.notify.webhooks` posts it: retries, signature, dead
letters, the same ``X-Akobridge-Event-Id`` on every try); an e-mail or ``user`` watcher's goes
to the e-mail queue (:mod:`bridge.notify.email`). A crash before that commit queues nothing and
the next scan queues it; after it, it is never queued again. Delivery is at least once, a
repeat carries the same event id.

The watchers are those of the definition as it was executed (the internal workflow's ``raw``),
not of a later PUT. Bodies hold names, ids, statuses, times and exit codes only — never
commands, environment, logs or secrets — and any value of the daemon's secrets file of 4 or
more characters is replaced by ``***`` wherever it might still appear.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from bridge.peak import executions
from bridge.peak.definition import Watcher
from bridge.store import Store, iso, now_utc, parse_iso

log = structlog.get_logger("akobridge.peak.watchers")

EVENT_TYPE = "PEAK_WATCHER"
"""The outbox event type (``X-Akobridge-Event`` of a watcher's webhook)."""
MINUTE_S = 60.0
REDACTED = "***"
MIN_SECRET_LEN = 4
"""Shorter secret values are not searched for (``1`` would blank every exit code)."""
_CACHE_MAX = 4096
_watchers_of: dict[int, tuple[Watcher, ...]] = {}


@dataclass(frozen=True)
class Queued:
    """What one :func:`scan` queued."""

    webhooks: int = 0
    emails: int = 0


def watchers(store: Store, workflow_id: int) -> tuple[Watcher, ...]:
    """The watchers of the definition an execution's internal workflow was made from."""
    found = _watchers_of.get(workflow_id)
    if found is not None:
        return found
    row = store.db.execute("SELECT raw FROM workflows WHERE id=?", (workflow_id,)).fetchone()
    items = json.loads(row[0]).get("watchers") or [] if row else []
    parsed = []
    for item in items:
        try:
            parsed.append(Watcher.model_validate(item))
        except ValidationError:  # stored bodies were validated; a future field: skip it
            log.warning("watcher not understood", workflow=workflow_id)
    if len(_watchers_of) >= _CACHE_MAX:
        _watchers_of.clear()
    found = _watchers_of[workflow_id] = tuple(parsed)
    return found


def due(ws: Iterable[Watcher], status: str, ran_s: float, *, ended: bool,
        minute_s: float = MINUTE_S) -> list[tuple[int, str]]:
    """``(watcher index, event)`` of every notification this execution calls for now."""
    out: list[tuple[int, str]] = []
    for i, w in enumerate(ws):
        limit = w.events.runtime_exceeded
        if limit is not None and ran_s > limit * minute_s:
            out.append((i, "runtimeExceeded"))
        if ended and status == "Success" and w.events.success:
            out.append((i, "success"))
        if ended and status == "Failed" and w.events.fail:
            out.append((i, "fail"))
    return out


def scan(store: Store, now: datetime | None = None, *, minute_s: float = MINUTE_S,
         secrets: Iterable[str] = ()) -> Queued:
    """Queue the notifications due now (each once); ``secrets``: values to redact."""
    now = now or now_utc()
    hidden = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
    rows = store.db.execute(
        "SELECT e.*, w.state AS wf_state, w.finished_at FROM peak_executions e"
        " JOIN workflows w ON w.id=e.workflow_id WHERE e.watched_at IS NULL").fetchall()
    webhooks = emails = 0
    for r in rows:
        ended = r["wf_state"] != "RUNNING"
        ws = watchers(store, r["workflow_id"])
        if not ws and not ended:
            continue
        ex = executions.get(store, r["peak_workflow_id"], r["id"])
        if ex is None:
            continue
        status = executions.status(store, ex)
        end = parse_iso(r["finished_at"]) or now
        wanted = due(ws, status, (end - ex.created_at).total_seconds(), ended=ended,
                     minute_s=minute_s)
        if not ended and not set(wanted) - _sent(store, ex.id):
            continue
        w, e = _queue(store, ex, ws, wanted, status, now, hidden, ended=ended)
        webhooks, emails = webhooks + w, emails + e
    return Queued(webhooks, emails)


def _sent(store: Store, execution_id: str) -> set[tuple[int, str]]:
    return {(int(w), str(e)) for w, e in store.db.execute(
        "SELECT watcher, event FROM peak_notifications WHERE execution_id=?", (execution_id,))}


def _queue(store: Store, ex: executions.Execution, ws: tuple[Watcher, ...],
           wanted: list[tuple[int, str]], status: str, now: datetime, hidden: list[str], *,
           ended: bool) -> tuple[int, int]:
    """One transaction: the new notifications, and (ended) the mark that the end was seen."""
    webhooks = emails = 0
    with store.transaction() as db:
        sent = _sent(store, ex.id)
        for index, event in wanted:
            if (index, event) in sent:
                continue
            w = ws[index]
            facts = _redact(event_facts(store, ex, w, event, status, now), hidden)
            if w.webhook is not None:
                body = {"payload": _redact(payload_value(w.webhook.payload), hidden),
                        "event": facts}
                Store.add_event(db, ex.workflow_id, EVENT_TYPE, body, [w.webhook.url], now)
                kind, recipients, subject, text = "webhook", [], None, None
                webhooks += 1
            else:
                Store.add_event(db, ex.workflow_id, EVENT_TYPE, {"event": facts}, [], now)
                kind = "user" if w.user is not None else "email"
                recipients = [w.user] if w.user is not None else (
                    list(w.email.recipients.to) if w.email else [])
                subject = f"[akobridge] {facts['workflowName']} {event}"
                text = mail_text(facts)
                emails += 1
            event_id = db.execute("SELECT max(id) FROM events").fetchone()[0]
            db.execute(
                "INSERT INTO peak_notifications(execution_id, watcher, event, kind, event_id,"
                " recipients, subject, body, state, next_try_at, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (ex.id, index, event, kind, event_id, json.dumps(recipients), subject, text,
                 "outbox" if kind == "webhook" else "pending", iso(now), iso(now)))
        if ended:
            db.execute("UPDATE peak_executions SET watched_at=? WHERE id=?", (iso(now), ex.id))
    if webhooks or emails:
        log.info("watchers notified", execution=ex.id, webhooks=webhooks, emails=emails)
    return webhooks, emails


def payload_value(payload: str) -> Any:
    """A webhook watcher's ``payload``: its JSON value when it is JSON text, else the string."""
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def event_facts(store: Store, ex: executions.Execution, w: Watcher, event: str, status: str,
                now: datetime) -> dict[str, Any]:
    """What a notification says of the execution (no commands, environment or logs)."""
    wf = store.workflow(ex.workflow_id)
    acts = store.activities(ex.workflow_id)
    name = w.webhook.name if w.webhook else (w.email.name if w.email else None)
    facts: dict[str, Any] = {
        "event": event, "executionId": ex.id, "workflowId": ex.peak_workflow_id,
        "workflowName": wf.name if wf else "", "status": status,
        "executedAt": executions.stamp(ex.created_at),
        "finishedAt": executions.stamp(wf.finished_at if wf else None),
        "notifiedAt": executions.stamp(now), "watcher": name or w.user,
        "steps": [{"name": a.name, "status": executions.step_status(a),
                   "exitCode": a.exit_code, "startedAt": executions.stamp(a.started_at),
                   "finishedAt": executions.stamp(a.finished_at)} for a in acts]}
    if event == "runtimeExceeded":
        facts["runtimeExceeded"] = w.events.runtime_exceeded
    return facts


def mail_text(facts: Mapping[str, Any]) -> str:
    """The plain-text body of a watcher's e-mail."""
    lines = [f"Workflow:  {facts['workflowName']} (id {facts['workflowId']})",
             f"Execution: {facts['executionId']}",
             f"Event:     {facts['event']}"
             + (f" (over {facts['runtimeExceeded']} min)" if "runtimeExceeded" in facts else ""),
             f"Status:    {facts['status']}",
             f"Started:   {facts['executedAt']}",
             f"Finished:  {facts['finishedAt'] or '-'}", "", "Steps:"]
    for s in facts["steps"]:
        code = "" if s["exitCode"] is None else f"  exit {s['exitCode']}"
        lines.append(f"  {s['name']:<24} {s['status']:<9}{code}"
                     f"  {s['startedAt'] or '-'} → {s['finishedAt'] or '-'}")
    return "\n".join(lines) + "\n"


def _redact(value: Any, hidden: list[str]) -> Any:
    if not hidden:
        return value
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, hidden): _redact(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, hidden) for v in value]
    return value


class ScanJob:
    """The daemon's job: :func:`scan` on a store of its own, then ``poke`` the webhook loop
    when webhooks were queued. Errors are logged; the next run tries again."""

    def __init__(self, store_path: Path, *, minute_s: float = MINUTE_S,
                 secrets: Callable[[], Mapping[str, str]] = dict,
                 poke: Callable[[], None] | None = None) -> None:
        self.path, self.minute_s, self.secrets, self.poke = store_path, minute_s, secrets, poke
        self._store: Store | None = None

    def __call__(self) -> Queued:
        try:
            if self._store is None:
                self._store = Store(self.path, handed_over=True)
            queued = scan(self._store, minute_s=self.minute_s,
                          secrets=self.secrets().values())
        except Exception:  # noqa: BLE001 - a bug or a locked store: logged, tried again
            log.exception("watcher scan failed")
            return Queued()
        if queued.webhooks and self.poke is not None:
            self.poke()
        return queued


__all__ = ["EVENT_TYPE", "Queued", "ScanJob", "due", "event_facts", "mail_text",
           "payload_value", "scan", "watchers"]
