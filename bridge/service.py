"""What the API (and the CLI through it) can ask of a bridge: intake, reads, cancel, retry,
logs, artifacts. Thin over the store and the bridge; every error is a :class:`ServiceError`
with an HTTP status, a short ``error`` and ``detail`` items naming the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from bridge import metrics
from bridge.engine import WorkflowState
from bridge.phases.prepare import volumes_to_stage
from bridge.progress import (
    SUMMARY_COLUMNS,
    activity_json,
    counts,
    failures,
    grouped,
    summary_row_json,
    workflow_json,
    workflow_summary_json,
)
from bridge.runner import Bridge, SubmissionError
from bridge.spec import SpecError, Workflow, parse_akoflow
from bridge.store import ActivityRow, AttemptRow, Store, iso
from runtimes import TrackedJob

log = structlog.get_logger("akobridge.service")

LOG_PAGE = 256 * 1024
"""Largest log chunk one request returns."""


@dataclass
class ServiceError(Exception):
    """A request that cannot be carried out; ``detail``: ``[{field, message}]``."""

    status: int
    error: str
    detail: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{d['field']}: {d['message']}" if d.get("field") else d["message"]
                 for d in self.detail]
        return "; ".join([self.error, *parts]) if parts else self.error

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}


def problem(field_: str | None, message: str) -> dict[str, Any]:
    return {"field": field_ or "", "message": message}


def decode_workflow(value: object, field_: str = "workflow") -> str:
    """The YAML text inside the AkoFlow request's base64 ``workflow`` field."""
    if not isinstance(value, str):
        raise ServiceError(422, "the workflow must be a base64 string",
                           [problem(field_, f"expected a base64 string, got "
                                            f"{type(value).__name__}")])
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "the workflow is not valid base64",
                           [problem(field_, "not valid base64 (encode the YAML with "
                                            "base64.b64encode)")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(400, "the decoded workflow is not UTF-8 text",
                           [problem(field_, "the base64 decodes to bytes that are not UTF-8 "
                                            "YAML")]) from None


class Service:
    """The operations behind the API; one per daemon, safe to call from many threads (each
    thread gets its own store connection)."""

    def __init__(self, bridge: Bridge, *, url_check: Callable[[str], str | None] | None = None,
                 allowed_roots: Iterable[Path] = (), wake: Callable[[], None] = lambda: None,
                 log_reader: Callable[[AttemptRow, str], bytes | None] | None = None) -> None:
        self.bridge = bridge
        self.store_path = bridge.store.path
        self.url_check = url_check
        self.allowed_roots = [os.path.realpath(r) for r in allowed_roots]
        self.wake = wake
        self.log_reader = log_reader
        self._local = threading.local()
        self._submit_lock = threading.Lock()

    # -- stores per thread ----------------------------------------------------------------------
    @property
    def store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = Store(self.store_path)
            self._local.store = store
        return store

    # -- intake ---------------------------------------------------------------------------------
    def parse(self, text: str, field_prefix: str = "workflow") -> Workflow:
        try:
            parsed = parse_akoflow(text, source=field_prefix)
        except SpecError as exc:
            raise ServiceError(422, "the workflow is not valid", [
                {**problem(p.path or field_prefix, p.message), "line": p.line}
                for p in exc.problems]) from None
        return parsed.workflow

    def check_policy(self, wf: Workflow, remote_client: bool = True) -> None:
        """Webhook URLs the URL policy allows; staging sources under ``allowed_roots``."""
        problems = []
        if self.url_check is not None:
            for i, hook in enumerate(wf.webhooks):
                why = self.url_check(hook.url)
                if why:
                    problems.append(problem(f"spec.webhooks[{i}].url", why))
        if remote_client:
            for i, vol in enumerate(wf.volumes):
                cluster = self.bridge.cluster(wf.runtime)
                staged = vol in volumes_to_stage(wf, cluster)
                if staged and not self._allowed(vol.source):
                    roots = ", ".join(self.allowed_roots) or "none configured"
                    problems.append(problem(
                        f"spec.volumes[{i}]",
                        f"{vol.source} is not under staging.allowed_roots ({roots}): the "
                        "daemon stages only from directories its config allows"))
        if problems:
            raise ServiceError(422, "the workflow is not allowed here", problems)

    def _allowed(self, source: str) -> bool:
        real = os.path.realpath(source)
        return any(real == r or real.startswith(r.rstrip("/") + "/")
                   for r in self.allowed_roots)

    def submit_text(self, text: str, *, intake: str = "api", intake_key: str | None = None,
                    runtime: str | None = None, durable: bool = False) -> tuple[int, Workflow]:
        """Parse, check and store a workflow; its id (an earlier one for a known key).
        ``durable``: the commit reaches the disk before this returns (``synchronous=FULL``
        on this thread's connection) — for an intake that deletes or moves its only other
        copy next, like the spool; otherwise a commit survives a kill, not a power cut."""
        if durable:
            self.store.db.execute("PRAGMA synchronous=FULL")
        wf = self.prepare(text, runtime)
        # a known key (a retried request, a spool file seen before a crash) gives its workflow
        ((wf_id, _),) = self.store_prepared([(wf, intake_key)], intake)
        return wf_id, wf

    def prepare(self, text: str, runtime: str | None = None) -> Workflow:
        """Parse and check a workflow for :meth:`store_prepared`: the spec, ``runtime``
        instead of its own, the URL and staging policy, every step renderable where it
        runs (each a :class:`ServiceError` naming the field)."""
        wf = self.parse(text)
        if runtime:
            wf = wf.model_copy(update={"runtime": runtime})
        try:
            self.check_policy(wf)
            return self.bridge.check(wf)
        except SubmissionError as exc:
            raise ServiceError(422, "the workflow cannot run here",
                               [problem("spec.runtime", str(exc))]) from None

    def store_prepared(self, items: list[tuple[Workflow, str | None]],
                       intake: str = "api") -> list[tuple[int, bool]]:
        """Store workflows from :meth:`prepare` in one transaction on this thread's
        connection; per workflow its id and whether it is new (see
        :meth:`Bridge.store_checked`). Wakes the owner's loop."""
        stored = self.bridge.store_checked(items, store=self.store)
        fresh = sum(new for _, new in stored)
        if fresh:
            metrics.WORKFLOWS_ACCEPTED.labels(intake).inc(fresh)
            self.wake()
        return stored

    # -- reads ----------------------------------------------------------------------------------
    def workflows(self, *, state: str | None = None, name: str | None = None,
                  runtime: str | None = None, since: datetime | None = None,
                  until: datetime | None = None, limit: int = 50,
                  offset: int = 0, search: str | None = None) -> dict[str, Any]:
        """A page of workflows, newest first, each with its activity ``counts`` by group (as
        :meth:`workflow` has them) and ``states`` (by state)."""
        where: list[str] = []
        args: list[Any] = []
        if state:
            where.append("state=?")
            args.append(state.upper())
        if name:
            where.append("name=?")
            args.append(name)
        if search:
            where.append("instr(lower(name), ?) > 0")
            args.append(search.lower())
        if runtime:
            where.append("runtime=?")
            args.append(runtime)
        if since:
            where.append("created_at>=?")
            args.append(iso(since))
        if until:
            where.append("created_at<?")
            args.append(iso(until))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        db = self.store.db
        total = db.execute(f"SELECT count(*) FROM workflows{clause}", args).fetchone()[0]
        rows = db.execute(f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM workflows{clause}"
                          " ORDER BY id DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        items = [summary_row_json(r) for r in rows]
        tally = self._tally([item["id"] for item in items])
        for item in items:
            by_state = tally.get(item["id"], {})
            item["counts"] = grouped(by_state)
            item["states"] = by_state
            item["activities"] = sum(by_state.values())
            item["duration_s"] = _span(item["created_at"], item["finished_at"])
        return {"items": items, "total": int(total), "limit": limit, "offset": offset}

    def _tally(self, wf_ids: list[int]) -> dict[int, dict[str, int]]:
        """workflow id → {activity state: count}, in one query for a page of workflows."""
        if not wf_ids:
            return {}
        marks = ",".join("?" * len(wf_ids))
        out: dict[int, dict[str, int]] = {}
        for r in self.store.db.execute(
                "SELECT workflow_id, state, count(*) FROM activities"
                f" WHERE workflow_id IN ({marks}) GROUP BY workflow_id, state", wf_ids):
            out.setdefault(int(r[0]), {})[str(r[1])] = int(r[2])
        return out

    def workflow(self, wf_id: int) -> dict[str, Any]:
        row = self.store.workflow(wf_id)
        if row is None:
            raise ServiceError(404, f"no workflow with id {wf_id}",
                               [problem("id", "unknown workflow id")])
        return workflow_json(self.store, row, None)

    def activity(self, wf_id: int, name: str) -> ActivityRow:
        if self.store.workflow(wf_id) is None:
            raise ServiceError(404, f"no workflow with id {wf_id}",
                               [problem("id", "unknown workflow id")])
        for a in self.store.activities(wf_id):
            if a.name == name:
                return a
        raise ServiceError(404, f"no activity {name!r} in workflow {wf_id}",
                           [problem("name", "unknown activity")])

    def activity_detail(self, wf_id: int, name: str) -> dict[str, Any]:
        """One activity as :meth:`workflow` shows it, and its workflow's summary (the other
        activities' rows are looked through to find it, but not their attempts or logs)."""
        act = self.activity(wf_id, name)
        wf = self.store.workflow(wf_id)
        assert wf is not None
        failed = failures(self.store, wf_id, None, [act])
        return {**activity_json(self.store, act, failed[0] if failed else None),
                "workflow": workflow_summary_json(wf)}

    def counts(self, wf_id: int) -> dict[str, int]:
        return counts(self.store.activities(wf_id))

    # -- requests -------------------------------------------------------------------------------
    def cancel(self, wf_id: int, names: list[str] | None) -> list[str]:
        for n in names or []:
            self.activity(wf_id, n)
        if self.store.workflow(wf_id) is None:
            raise ServiceError(404, f"no workflow with id {wf_id}",
                               [problem("id", "unknown workflow id")])
        hit = self.store.request_cancel(wf_id, names or None)
        self.wake()
        return hit

    def retry(self, wf_id: int) -> list[str]:
        row = self.store.workflow(wf_id)
        if row is None:
            raise ServiceError(404, f"no workflow with id {wf_id}",
                               [problem("id", "unknown workflow id")])
        if row.state is WorkflowState.RUNNING:
            raise ServiceError(409, f"workflow {wf_id} is still running",
                               [problem("id", "only a finished workflow can be retried")])
        names = self.store.retry_workflow(wf_id)
        if not names:
            raise ServiceError(409, f"nothing to retry: every activity of workflow {wf_id} "
                               "completed", [problem("id", "nothing failed")])
        self.wake()
        return names

    # -- logs -----------------------------------------------------------------------------------
    def attempt(self, wf_id: int, name: str, number: int | None) -> AttemptRow | None:
        act = self.activity(wf_id, name)
        attempts = self.store.attempts(act.id)
        if number is None:
            return attempts[-1] if attempts else None
        for t in attempts:
            if t.number == number:
                return t
        raise ServiceError(404, f"activity {name!r} has no attempt {number}",
                           [problem("attempt", "attempts: " + (
                               ", ".join(str(t.number) for t in attempts) or "none yet"))])

    def read_log(self, wf_id: int, name: str, stream: str, offset: int,
                 number: int | None = None, limit: int = LOG_PAGE) -> dict[str, Any]:
        """A page of an attempt's log: ``data`` from ``offset``, the ``next`` offset, and
        ``final`` once the attempt ended and everything was read."""
        act = self.activity(wf_id, name)
        chosen = self.attempt(wf_id, name, number)
        if chosen is None:
            return {"attempt": None, "offset": offset, "next": offset, "data": "",
                    "size": 0, "final": act.state.terminal, "state": act.state.value}
        data = self._read(chosen, stream)
        if data is None:
            raise ServiceError(502, f"cannot read the {stream} log of {name!r}",
                               [problem("stream", "the job directory cannot be read now "
                                        "(cluster unreachable or files gone)")])
        piece = data[offset:offset + limit]
        nxt = offset + len(piece)
        fresh = self.store.attempt(chosen.id)
        ended = fresh is not None and fresh.state.terminal
        return {"attempt": chosen.number, "job_id": chosen.job_id, "offset": offset,
                "next": nxt, "size": len(data),
                "data": piece.decode("utf-8", errors="replace"),
                "final": ended and nxt >= len(data), "state": act.state.value}

    def script(self, wf_id: int, name: str, number: int | None = None) -> dict[str, Any]:
        """The job script an attempt was submitted with and the command file it runs, as
        written in its job directory (``null`` when the file is not there)."""
        from runtimes.jobdir import COMMAND_FILE, SCRIPT_FILE
        from runtimes.transport import TransportError

        chosen = self.attempt(wf_id, name, number)
        if chosen is None:
            raise ServiceError(404, f"activity {name!r} has no attempt yet",
                               [problem("attempt", "no job was prepared for it yet")])
        job = TrackedJob(chosen.token, chosen.jobdir, chosen.job_id)
        try:
            files = self.bridge.runtime(chosen.cluster).read_job_files(
                job, [SCRIPT_FILE, COMMAND_FILE])
        except (OSError, TransportError, NotImplementedError) as exc:
            raise ServiceError(502, f"cannot read the job script of {name!r}",
                               [problem("attempt", f"the job directory cannot be read now: "
                                        f"{exc}")]) from None
        text = {n: data.decode("utf-8", errors="replace") for n, data in files.items()}
        return {"attempt": chosen.number, "job_id": chosen.job_id, "cluster": chosen.cluster,
                "jobdir": chosen.jobdir, "script": text.get(SCRIPT_FILE),
                "command": text.get(COMMAND_FILE)}

    def _read(self, attempt: AttemptRow, stream: str) -> bytes | None:
        if self.log_reader is not None:
            return self.log_reader(attempt, stream)
        rt = self.bridge.runtime(attempt.cluster)
        return rt.read_log(TrackedJob(attempt.token, attempt.jobdir, attempt.job_id), stream)


def _span(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (to now while it runs) of two ISO timestamps."""
    if start is None:
        return None
    began = datetime.fromisoformat(start)
    until = datetime.fromisoformat(end) if end else datetime.now(began.tzinfo)
    return round((until - began).total_seconds(), 3)


__all__ = ["LOG_PAGE", "Service", "ServiceError", "decode_workflow", "problem"]
