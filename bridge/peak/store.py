"""Peak-style workflow definitions in the daemon's store (table ``peak_workflows``, store
migration 7).

A row holds the body of :meth:`Definition.to_body` as JSON, its status (``Available``,
``Paused``; ``Draft`` is allowed by the schema and not made yet), the webhook id minted for a
webhook trigger and the ``x-peak-requestId`` of the create that made it. Every function takes a
:class:`bridge.store.Store` (one per thread) and writes in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.peak.definition import Definition
from bridge.store import Store, iso, now_utc, parse_iso

STATUSES = ("Draft", "Available", "Paused")
"""Stored statuses; ``Running`` is worked out from the executions."""
_COLUMNS = ("id, name, body, status, tags, created_at, updated_at, last_modified_by, "
            "webhook_id, request_id")


class NameTaken(Exception):
    """Another definition has this name (names are unique)."""

    def __init__(self, name: str, other_id: int) -> None:
        super().__init__(f"a workflow named {name!r} exists (id {other_id})")
        self.name, self.other_id = name, other_id


@dataclass(frozen=True)
class PeakWorkflow:
    """One stored definition."""

    id: int
    name: str
    definition: Definition
    status: str
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    last_modified_by: str | None
    webhook_id: str | None
    request_id: str | None


@dataclass(frozen=True)
class Page:
    """One page of :func:`list_workflows`: its rows and how many matched in all."""

    items: list[PeakWorkflow]
    total: int


def _row(r: sqlite3.Row) -> PeakWorkflow:
    return PeakWorkflow(
        int(r["id"]), str(r["name"]), Definition.model_validate(json.loads(r["body"])),
        str(r["status"]),
        tuple(json.loads(r["tags"])), parse_iso(r["created_at"]) or now_utc(),
        parse_iso(r["updated_at"]) or now_utc(), r["last_modified_by"], r["webhook_id"],
        r["request_id"])


def _stored_body(defn: Definition) -> tuple[str, str]:
    """The body and tags columns (a trigger's ``webhookPolicy`` is applied, not kept)."""
    body = defn.to_body()
    for trigger in body.get("triggers", []):
        trigger.pop("webhookPolicy", None)
    return json.dumps(body, separators=(",", ":")), json.dumps([t.name for t in defn.tags or ()])


def _has_webhook(defn: Definition) -> bool:
    return any(t.webhook for t in defn.triggers or ())


def _regenerate(defn: Definition) -> bool:
    return any(t.webhook and t.webhook_policy == "generate" for t in defn.triggers or ())


def _name_owner(db: sqlite3.Connection, name: str, but: int | None = None) -> int | None:
    row = db.execute("SELECT id FROM peak_workflows WHERE name=? AND id IS NOT ?",
                     (name, but)).fetchone()
    return int(row[0]) if row else None


def create(store: Store, defn: Definition, *, request_id: str | None = None,
           modified_by: str | None = None) -> tuple[PeakWorkflow, bool]:
    """Store a new definition (``Available``; a webhook trigger gets a fresh webhook id).
    A create already made under ``request_id`` returns that definition; the flag says
    whether this call made it. :class:`NameTaken` when the name is in use."""
    body, tags = _stored_body(defn)
    now = iso(now_utc())
    with store.transaction() as db:
        if request_id is not None:
            row = db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE request_id=?",
                             (request_id,)).fetchone()
            if row:
                return _row(row), False
        other = _name_owner(db, defn.name)
        if other is not None:
            raise NameTaken(defn.name, other)
        webhook = str(uuid.uuid4()) if _has_webhook(defn) else None
        cur = db.execute(
            "INSERT INTO peak_workflows(name, body, status, tags, created_at, updated_at,"
            " last_modified_by, webhook_id, request_id) VALUES (?,?,?,?,?,?,?,?,?)",
            (defn.name, body, "Available", tags, now, now, modified_by, webhook, request_id))
        row = db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE id=?",
                         (cur.lastrowid,)).fetchone()
    return _row(row), True


def update(store: Store, wf_id: int, defn: Definition, *,
           modified_by: str | None = None) -> PeakWorkflow | None:
    """Replace the definition ``wf_id`` (PUT; its status stays). A webhook trigger keeps the
    webhook id it had (a new one with ``webhookPolicy: generate``). ``None``: no such id."""
    body, tags = _stored_body(defn)
    with store.transaction() as db:
        row = db.execute("SELECT webhook_id FROM peak_workflows WHERE id=?",
                         (wf_id,)).fetchone()
        if row is None:
            return None
        other = _name_owner(db, defn.name, wf_id)
        if other is not None:
            raise NameTaken(defn.name, other)
        webhook = None
        if _has_webhook(defn):
            webhook = row[0] if row[0] and not _regenerate(defn) else str(uuid.uuid4())
        db.execute("UPDATE peak_workflows SET name=?, body=?, tags=?, updated_at=?,"
                   " last_modified_by=?, webhook_id=? WHERE id=?",
                   (defn.name, body, tags, iso(now_utc()), modified_by, webhook, wf_id))
        new = db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE id=?",
                         (wf_id,)).fetchone()
    return _row(new)


def get(store: Store, wf_id: int) -> PeakWorkflow | None:
    """The definition ``wf_id``, if stored."""
    row = store.db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE id=?",
                           (wf_id,)).fetchone()
    return _row(row) if row else None


def by_name(store: Store, name: str) -> PeakWorkflow | None:
    """The definition called exactly ``name``."""
    row = store.db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE name=?",
                           (name,)).fetchone()
    return _row(row) if row else None


def by_webhook(store: Store, webhook_id: str) -> PeakWorkflow | None:
    """The definition whose webhook trigger has the id ``webhook_id``."""
    row = store.db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE webhook_id=?",
                           (webhook_id,)).fetchone()
    return _row(row) if row else None


def running_executions(store: Store, wf_id: int) -> int:
    """How many executions of ``wf_id`` are running or stopping (delete refuses while > 0)."""
    from bridge.peak import executions

    return executions.running(store, wf_id)


def status(store: Store, wf_id: int, stored: str) -> str:
    """The status a reply shows: ``Running`` while an execution of an ``Available``
    workflow runs, else the stored one."""
    if stored == "Available" and running_executions(store, wf_id):
        return "Running"
    return stored


def last_execution(store: Store, wf_id: int) -> dict[str, Any] | None:
    """``{executionId, executedAt, status, rerunId}`` of the latest execution of ``wf_id``
    (describe's and list's ``lastExecution``)."""
    from bridge.peak import executions

    latest = executions.latest(store, wf_id)
    if latest is None:
        return None
    return {"executionId": latest.id, "executedAt": executions.stamp(latest.created_at),
            "status": executions.status(store, latest), "rerunId": None}


def delete(store: Store, wf_id: int) -> bool:
    """Remove the definition ``wf_id``; whether it existed. The caller checks
    :func:`running_executions` first."""
    with store.transaction() as db:
        return db.execute("DELETE FROM peak_workflows WHERE id=?", (wf_id,)).rowcount > 0


def set_status(store: Store, wf_id: int, status: str) -> PeakWorkflow | None:
    """Set the stored status (pause: ``Paused``, resume: ``Available``); ``None``: no such
    id. Setting the status it has is not an error."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    with store.transaction() as db:
        if db.execute("UPDATE peak_workflows SET status=?, updated_at=CASE WHEN status=? THEN"
                      " updated_at ELSE ? END WHERE id=?",
                      (status, status, iso(now_utc()), wf_id)).rowcount == 0:
            return None
        row = db.execute(f"SELECT {_COLUMNS} FROM peak_workflows WHERE id=?",
                         (wf_id,)).fetchone()
    return _row(row)


def pause(store: Store, wf_id: int) -> PeakWorkflow | None:
    """Pause ``wf_id``: its cron trigger stops firing until :func:`resume`."""
    return set_status(store, wf_id, "Paused")


def resume(store: Store, wf_id: int) -> PeakWorkflow | None:
    """Resume a paused ``wf_id``."""
    return set_status(store, wf_id, "Available")


def search(store: Store, term: str, limit: int = 100) -> list[PeakWorkflow]:
    """Definitions whose name contains ``term`` (any case), by id."""
    return list_workflows(store, search_term=term, page_size=limit).items


def list_workflows(store: Store, *, statuses: list[str] | None = None,
                   modified_by: list[str] | None = None, search_term: str | None = None,
                   last_execution_statuses: list[str] | None = None, page_size: int = 25,
                   page_number: int = 1) -> Page:
    """The definitions that match every filter given, by id, one page of them.

    ``statuses``: :func:`status` in the list; ``modified_by``: last modified by one of them;
    ``search_term``: the name contains it (any case); ``last_execution_statuses``: the status
    of :func:`last_execution` is one of them (no execution: no match)."""
    where, args = ["1=1"], []
    if modified_by:
        where.append(f"last_modified_by IN ({','.join('?' * len(modified_by))})")
        args += modified_by
    if search_term:
        where.append("instr(lower(name), lower(?)) > 0")
        args.append(search_term)
    found = store.db.execute(f"SELECT id, status FROM peak_workflows WHERE {' AND '.join(where)}"
                             " ORDER BY id", args).fetchall()
    ids = [int(r[0]) for r in found
           if not statuses or status(store, int(r[0]), str(r[1])) in statuses]
    if last_execution_statuses:
        wanted = set(last_execution_statuses)
        ids = [i for i in ids if (last_execution(store, i) or {}).get("status") in wanted]
    chosen = ids[(page_number - 1) * page_size: page_number * page_size]
    rows = store.db.execute(
        f"SELECT {_COLUMNS} FROM peak_workflows WHERE id IN ({','.join('?' * len(chosen))})"
        " ORDER BY id", chosen).fetchall() if chosen else []
    return Page([_row(r) for r in rows], len(ids))


__all__ = ["STATUSES", "NameTaken", "Page", "PeakWorkflow", "by_name", "by_webhook", "create",
           "delete", "get", "last_execution", "list_workflows", "pause", "resume",
           "running_executions", "search", "set_status", "status", "update"]
