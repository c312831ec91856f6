"""The one truth: SQLite in WAL mode under the state directory.

Every state change is one committed transaction; the outbox rows an event needs are written
in the same transaction as the change that caused it. The schema is versioned
(``PRAGMA user_version``) and upgrades itself on open.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from bridge.engine import ActivityState, WorkflowState
from bridge.spec.model import Step, Workflow

log = structlog.get_logger("akobridge.store")

MIGRATIONS: list[str] = [
    # 1: workflows, activities, attempts, events and their deliveries (the outbox)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE workflows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, namespace TEXT NOT NULL, runtime TEXT NOT NULL,
        source_format TEXT NOT NULL, raw TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT,
        created_at TEXT NOT NULL, finished_at TEXT
    );
    CREATE INDEX workflows_state ON workflows(state);
    CREATE TABLE activities (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id INTEGER NOT NULL REFERENCES workflows(id),
        position INTEGER NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, retry_at TEXT,
        exit_code INTEGER, reason TEXT, job_id TEXT,
        created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
        UNIQUE (workflow_id, name)
    );
    CREATE INDEX activities_state ON activities(state);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        activity_id INTEGER NOT NULL REFERENCES activities(id),
        number INTEGER NOT NULL, token TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL,
        jobdir TEXT NOT NULL, job_id TEXT, state TEXT NOT NULL,
        exit_code INTEGER, reason TEXT,
        submitted_at TEXT, started_at TEXT, finished_at TEXT,
        UNIQUE (activity_id, number)
    );
    CREATE INDEX attempts_state ON attempts(state);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id INTEGER NOT NULL REFERENCES workflows(id),
        type TEXT NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id INTEGER NOT NULL REFERENCES events(id),
        workflow_id INTEGER NOT NULL, url TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', tries INTEGER NOT NULL DEFAULT 0,
        next_try_at TEXT NOT NULL, last_error TEXT, delivered_at TEXT
    );
    CREATE INDEX deliveries_pending ON deliveries(state, workflow_id, url, id);
    """,
    # 2: the workflow phases around its activities (staging in and images, staging out)
    """
    ALTER TABLE workflows ADD COLUMN prepared_at TEXT;
    ALTER TABLE workflows ADD COLUMN staged_out_at TEXT;
    """,
    # 3: cancel requests (from another process or the API) and a failed stage-out
    """
    ALTER TABLE workflows ADD COLUMN stage_out_error TEXT;
    ALTER TABLE activities ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX attempts_activity ON attempts(activity_id);
    CREATE INDEX activities_workflow ON activities(workflow_id, position);
    """,
    # 4: where a workflow came from, so an intake retried after a crash (a spool file, an API
    #    request with an Idempotency-Key) finds the workflow it already stored; what sacct
    #    reports of an attempt's use (MaxRSS, Elapsed, TotalCPU)
    """
    ALTER TABLE workflows ADD COLUMN intake_key TEXT;
    CREATE UNIQUE INDEX workflows_intake_key ON workflows(intake_key)
        WHERE intake_key IS NOT NULL;
    CREATE INDEX workflows_created ON workflows(created_at);
    ALTER TABLE attempts ADD COLUMN max_rss_kb INTEGER;
    ALTER TABLE attempts ADD COLUMN elapsed_s REAL;
    ALTER TABLE attempts ADD COLUMN cpu_s REAL;
    """,
    # 5: durable webhooks: a delivery that gave up is a dead letter ('failed' becomes 'dead');
    #    when it was queued (its max age counts from there; a redelivery queues it again),
    #    last tried and given up, which dead delivery held it back (it was behind it in its
    #    workflow's order to that URL); the random source of this state dir's event ids
    """
    UPDATE deliveries SET state='dead' WHERE state='failed';
    ALTER TABLE deliveries ADD COLUMN queued_at TEXT;
    ALTER TABLE deliveries ADD COLUMN last_try_at TEXT;
    ALTER TABLE deliveries ADD COLUMN dead_at TEXT;
    ALTER TABLE deliveries ADD COLUMN held_by INTEGER;
    UPDATE deliveries SET queued_at=(SELECT created_at FROM events WHERE events.id=event_id);
    INSERT OR IGNORE INTO meta(key, value) VALUES ('event_source', lower(hex(randomblob(8))));
    """,
    # 6: a workflow's revision, bumped by every change to its activities or attempts (from
    #    any connection): the planner skips workflows whose revision did not move
    """
    ALTER TABLE workflows ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER activities_rev_insert AFTER INSERT ON activities BEGIN
        UPDATE workflows SET rev = rev + 1 WHERE id = NEW.workflow_id;
    END;
    CREATE TRIGGER activities_rev_update AFTER UPDATE ON activities BEGIN
        UPDATE workflows SET rev = rev + 1 WHERE id = NEW.workflow_id;
    END;
    CREATE TRIGGER attempts_rev_insert AFTER INSERT ON attempts BEGIN
        UPDATE workflows SET rev = rev + 1
        WHERE id = (SELECT workflow_id FROM activities WHERE id = NEW.activity_id);
    END;
    CREATE TRIGGER attempts_rev_update AFTER UPDATE ON attempts BEGIN
        UPDATE workflows SET rev = rev + 1
        WHERE id = (SELECT workflow_id FROM activities WHERE id = NEW.activity_id);
    END;
    """,
    # 7: Peak-style workflow definitions (bridge.peak.store): the body as stored JSON, its
    #    status, the minted webhook id and the x-peak-requestId that created it (a retried
    #    create finds it); their executions come in a migration of their own
    """
    CREATE TABLE peak_workflows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Draft', 'Available', 'Paused')),
        tags TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        last_modified_by TEXT,
        webhook_id TEXT UNIQUE,
        request_id TEXT UNIQUE
    );
    CREATE INDEX peak_workflows_status ON peak_workflows(status);
    """,
    # 8: the output parameters a step left (Peak outputParameters: name → the file's text),
    #    written in the transaction that records the step's end
    """
    ALTER TABLE activities ADD COLUMN outputs TEXT;
    """,
    # 9: Peak executions (bridge.peak.executions): each is one internal workflow; the
    #    x-peak-requestId that started it (a retried execute finds it), when a stop was asked
    """
    CREATE TABLE peak_executions (
        id TEXT PRIMARY KEY,
        peak_workflow_id INTEGER NOT NULL REFERENCES peak_workflows(id) ON DELETE CASCADE,
        workflow_id INTEGER NOT NULL UNIQUE REFERENCES workflows(id),
        request_id TEXT UNIQUE,
        trigger TEXT NOT NULL,
        created_at TEXT NOT NULL,
        stop_requested_at TEXT
    );
    CREATE INDEX peak_executions_by_workflow ON peak_executions(peak_workflow_id, created_at);
    """,
    # 10: Peak watcher notifications (bridge.peak.watchers): one row per (execution, watcher,
    #     event), written in the transaction that queues it (with its outbox event: a
    #     webhook's delivery, or an e-mail's place in the queue with its tries), so each is
    #     queued once; watched_at: the execution's end was looked at (executions that had
    #     ended before this migration count as looked at: no burst of old notifications)
    """
    ALTER TABLE peak_executions ADD COLUMN watched_at TEXT;
    UPDATE peak_executions SET watched_at=created_at
        WHERE workflow_id IN (SELECT id FROM workflows WHERE state!='RUNNING');
    CREATE INDEX peak_executions_unwatched ON peak_executions(id) WHERE watched_at IS NULL;
    CREATE TABLE peak_notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        execution_id TEXT NOT NULL REFERENCES peak_executions(id) ON DELETE CASCADE,
        watcher INTEGER NOT NULL,
        event TEXT NOT NULL CHECK (event IN ('success', 'fail', 'runtimeExceeded')),
        kind TEXT NOT NULL CHECK (kind IN ('webhook', 'email', 'user')),
        event_id INTEGER NOT NULL,
        recipients TEXT NOT NULL DEFAULT '[]',
        subject TEXT, body TEXT,
        state TEXT NOT NULL CHECK (state IN ('outbox', 'pending', 'sent', 'dead')),
        tries INTEGER NOT NULL DEFAULT 0, next_try_at TEXT, last_error TEXT, sent_at TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (execution_id, watcher, event)
    );
    CREATE INDEX peak_notifications_due ON peak_notifications(state, next_try_at);
    """,
    # 11: a change sequence over all workflows: every change that moves a workflow's head
    #     (its revision, state, phases) gives it the next ``seq``, so a cycle reads only the
    #     workflows that changed since the last one (RunningHeads), not every RUNNING row
    """
    ALTER TABLE workflows ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE workflows SET seq = id;
    CREATE INDEX workflows_seq ON workflows(seq);
    CREATE TRIGGER workflows_seq_insert AFTER INSERT ON workflows BEGIN
        UPDATE workflows SET seq = (SELECT max(seq) FROM workflows) + 1 WHERE id = NEW.id;
    END;
    CREATE TRIGGER workflows_seq_update AFTER UPDATE OF state, rev, runtime, prepared_at,
        staged_out_at, stage_out_error ON workflows BEGIN
        UPDATE workflows SET seq = (SELECT max(seq) FROM workflows) + 1 WHERE id = NEW.id;
    END;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
LIVE_STATES = ("SUBMITTING", "QUEUED", "RUNNING")
TERMINAL_STATES = ("COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL",
                   "SKIPPED")


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """Timestamps are stored as ISO 8601 UTC with microseconds."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds") if ts else None


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class WorkflowRow:
    id: int
    name: str
    namespace: str
    runtime: str
    source_format: str
    raw: str
    spec: Workflow
    state: WorkflowState
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    prepared_at: datetime | None
    """When staging in and the image checks were done (NULL: not yet)."""
    staged_out_at: datetime | None
    stage_out_error: str | None = None
    """Why bringing the volumes back failed (the workflow then cannot be COMPLETED)."""


@dataclass(frozen=True)
class ActivityRow:
    id: int
    workflow_id: int
    position: int
    name: str
    spec: Step
    state: ActivityState
    attempt: int
    retry_at: datetime | None
    exit_code: int | None
    reason: str | None
    job_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    """Output parameters read from the job directory when the step ended."""


@dataclass(frozen=True)
class AttemptRow:
    id: int
    activity_id: int
    workflow_id: int
    number: int
    token: str
    cluster: str
    jobdir: str
    job_id: str | None
    state: ActivityState
    exit_code: int | None
    reason: str | None
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool = False
    """The activity's cancellation was asked for (the job is to be scancelled/killed)."""
    max_rss_kb: int | None = None
    """Peak resident memory of the job in KiB (sacct's MaxRSS, a local job's rusage)."""
    elapsed_s: float | None = None
    """Wall-clock seconds the job ran."""
    cpu_s: float | None = None
    """CPU seconds (user + system) the job used."""


def _insert_many(db: sqlite3.Connection, into: str, rows: list[tuple[Any, ...]],
                 params: int = 30_000) -> None:
    """``INSERT INTO {into} VALUES (…), (…), …``: ``rows`` in as few statements as SQLite's
    limit on parameters allows (``executemany`` steps, and lets go of the GIL, once a row)."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    per = max(1, params // width)
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        db.execute(f"INSERT INTO {into} VALUES " + ",".join([one] * len(chunk)),
                   [v for row in chunk for v in row])


_WRITE_LOCKS: dict[str, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.RLock:
    """The one lock of this process for writing the database at ``path``."""
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(key)
        if lock is None:
            lock = _WRITE_LOCKS[key] = threading.RLock()
        return lock


_CHECKPOINTED: set[str] = set()
"""Databases a :class:`Checkpointer` of this process looks after (by real path)."""


class Checkpointer:
    """Copies the write-ahead log into the database file on a thread of its own.

    SQLite otherwise does it inside the COMMIT of whichever connection crosses 1,000 log
    pages: under a stream of submissions that was the API's writer every third of a second,
    5-30 ms each time with the requests of its batch waiting. While one runs, every
    connection this process opens on the same database leaves checkpoints to it (a
    PASSIVE one never blocks a reader or a writer)."""

    INTERVAL_S = 0.25

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key = os.path.realpath(path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Checkpointer:
        """From now on connections opened on this database do not checkpoint themselves."""
        with _WRITE_LOCKS_GUARD:
            _CHECKPOINTED.add(self._key)
        self._thread = threading.Thread(target=self._run, name="akb-checkpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after one last checkpoint; connections checkpoint themselves
        again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with _WRITE_LOCKS_GUARD:
            _CHECKPOINTED.discard(self._key)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        wal = Path(f"{self.path}-wal")
        seen: float | None = None
        try:
            while True:
                stopping = self._stop.wait(self.INTERVAL_S)
                try:
                    written = wal.stat().st_mtime_ns
                except OSError:
                    written = None
                if written is not None and written == seen and not stopping:
                    continue  # nothing written since the last one (an idle daemon)
                seen = written
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception as exc:  # noqa: BLE001 - the next round tries again (a
                    # thread that ended here would leave the log to grow without end)
                    log.warning("checkpoint failed", error=str(exc))
                if stopping:
                    return
        finally:
            db.close()


class WorkflowHead(NamedTuple):
    """A RUNNING workflow's runtime, whether it was prepared, and its signature: it changes
    whenever anything the planner reads about the workflow changes (its revision, phases).
    A named tuple: every cycle makes one per RUNNING workflow (a frozen dataclass cost
    several times as much)."""

    runtime: str
    signature: tuple[Any, ...]
    prepared: bool


_HEAD_COLUMNS = "runtime, rev, prepared_at, staged_out_at, stage_out_error"
"""What a :class:`WorkflowHead` is made of (:func:`_head`), in this order."""


def _head(row: tuple[Any, ...]) -> WorkflowHead:
    """A head from the :data:`_HEAD_COLUMNS` of a row (runtime, then the signature)."""
    return WorkflowHead(row[0], tuple(row[1:]), row[2] is not None)


class RunningHeads:
    """The heads of the RUNNING workflows, kept from one :meth:`read` to the next by the
    change sequence (``workflows.seq``): a read costs one indexed query for the workflows
    that changed since the last read, not a pass over every RUNNING row (thousands when
    many queue). The whole set is read at the first call, and again when the check made
    every :data:`RESYNC_S` (how many RUNNING, the sum of their ids) finds it differs."""

    RESYNC_S = 60.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._heads: dict[int, WorkflowHead] = {}
        self._seq: int | None = None
        self._full_at = 0.0
        self.changed: set[int] | None = None
        """The workflows whose head changed in the last :meth:`read` (ended ones too);
        None after the first read (everything counts as changed)."""

    def forget(self) -> None:
        """The next :meth:`read` is a full one with ``changed`` None (everything counts as
        changed): for a pass that failed before it planned the changes it was given."""
        self._seq = None

    def read(self) -> Mapping[int, WorkflowHead]:
        """Workflow id → head, for every RUNNING workflow as of now (do not keep it: the
        next read updates it in place)."""
        now = time.monotonic()
        if self._seq is None:
            self._full(now)
            self.changed = None
            return self._heads
        rows, self._seq = self.store.head_changes(self._seq)
        self.changed = {r[0] for r in rows}
        for wf_id, state, head in rows:
            if state == WorkflowState.RUNNING.value:
                self._heads[wf_id] = head
            else:
                self._heads.pop(wf_id, None)
        if now - self._full_at >= self.RESYNC_S:
            # the check first, one aggregate row computed by SQLite: reading every RUNNING
            # row (tens of thousands when many queue) took 0.2 s of the interpreter
            self._full_at = now
            count, total = self.store.db.execute(
                "SELECT count(*), coalesce(sum(id), 0) FROM workflows WHERE state='RUNNING'"
            ).fetchone()
            if count != len(self._heads) or total != sum(self._heads):
                old = dict(self._heads)
                self._full(now)  # what it finds different (a row gone without a change)
                self.changed |= {w for w, h in self._heads.items() if old.get(w) != h}
                self.changed |= old.keys() - self._heads.keys()
        return self._heads

    def _full(self, now: float) -> None:
        # the sequence first: a change between the two reads is read again next time
        seq = self.store.db.execute("SELECT coalesce(max(seq), 0) FROM workflows").fetchone()[0]
        self._heads = self.store.running_heads()
        self._seq, self._full_at = int(seq), now


class Store:
    """SQLite-backed state; one instance per thread (connections are not shared)."""

    def __init__(self, path: Path, *, handed_over: bool = False) -> None:
        """``handed_over``: the connection may move between threads (never used by two at
        once — a cluster worker's rounds each run on a thread of their own)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._write = _write_lock(path)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                                  check_same_thread=not handed_over)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with _WRITE_LOCKS_GUARD:
            background = os.path.realpath(path) in _CHECKPOINTED
        if background:  # a Checkpointer of this process does it (see there)
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._migrate()
        self.instance = self._instance_id()
        self._workflow_specs: dict[int, Workflow] = {}
        self._step_specs: dict[int, Step] = {}
        """Parsed specs by row id (they never change), bounded: a monitoring client paging
        through every stored workflow must not grow the daemon without end."""

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this akobridge "
                    f"({SCHEMA_VERSION}); upgrade akobridge"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number + 1}")

    def _instance_id(self) -> str:
        """A short random id of this state directory, part of every job name."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
            if row:
                return str(row[0])
            value = secrets.token_hex(3)
            db.execute("INSERT INTO meta(key, value) VALUES ('instance', ?)", (value,))
            return value

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception).

        The threads of one process queue for the write lock on a Python lock first: SQLite's
        own busy wait sleeps in steps of up to 100 ms, which at 50 concurrent API requests
        made the slowest wait over a second; a queue on a lock wakes the next writer at once.
        """
        with self._write:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- intake -----------------------------------------------------------------------------
    def add_workflow(self, wf: Workflow, intake_key: str | None = None,
                     prepared: bool = False) -> int:
        """Store a validated workflow and its activities (PENDING) in one transaction.

        ``intake_key``: where it came from (``spool:<file>:<sha256>``, an API idempotency
        key); a workflow already stored under that key is returned instead of a second one.
        ``prepared``: it has nothing to stage in and no image to check, so it is stored
        prepared (the planner plans it at once, no round of its cluster's worker first).
        """
        ((wf_id, _),) = self.add_workflows([(wf, intake_key, prepared)])
        return wf_id

    def add_workflows(self, items: list[tuple[Workflow, str | None, bool]]
                      ) -> list[tuple[int, bool]]:
        """:meth:`add_workflow` for many (workflow, intake key, prepared) in ONE transaction
        (the API's group commit); per item its id and whether it is new — an item whose key
        is already stored, or was taken by an earlier item of the same call, gets that
        workflow's id and False.

        A constant number of statements per call, whatever its size: every statement lets
        go of the GIL while SQLite works and must win it back, which under a stream of
        requests (the API's thread busy parsing) cost a switch interval per statement — one
        INSERT per workflow made a batch of ten hold the write lock for 40 ms. The rows are
        built before the write lock is taken, the ids given here (the write lock is held, so
        nobody else takes one)."""
        now = iso(now_utc())
        running, pending = WorkflowState.RUNNING.value, ActivityState.PENDING.value
        rows = [(wf.name, wf.namespace, wf.runtime, wf.source_format, wf.raw,
                 wf.model_dump_json(), running, now, key, now if prepared else None)
                for wf, key, prepared in items]
        steps = [[(i, s.name, s.model_dump_json(), pending, now) for i, s in enumerate(wf.steps)]
                 for wf, _, _ in items]
        out: list[tuple[int, bool]] = []
        with self.transaction() as db:
            keys = [key for _, key, _ in items if key is not None]
            known: dict[str, int] = {}
            if keys:
                known = dict(db.execute(
                    "SELECT intake_key, id FROM workflows WHERE intake_key IN"
                    " (SELECT value FROM json_each(?))", (json.dumps(keys),)).fetchall())
            (last,) = db.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name='workflows'),"
                " 0), coalesce((SELECT max(id) FROM workflows), 0))").fetchone()
            new_rows: list[tuple[Any, ...]] = []
            new_steps: list[tuple[Any, ...]] = []
            for (_, key, _), row, acts in zip(items, rows, steps, strict=True):
                if key is not None and key in known:
                    out.append((known[key], False))
                    continue
                last += 1
                if key is not None:
                    known[key] = last
                new_rows.append((last, *row))
                new_steps.extend((last, *act) for act in acts)
                out.append((last, True))
            _insert_many(db, "workflows(id, name, namespace, runtime, source_format, raw, spec,"
                             " state, created_at, intake_key, prepared_at)", new_rows)
            _insert_many(db, "activities(workflow_id, position, name, spec, state, created_at)",
                         new_steps)
        return out

    # -- requests from the commands ----------------------------------------------------------
    def request_cancel(self, wf_id: int, names: Iterable[str] | None = None) -> list[str]:
        """Ask that the given activities (default: all) of a workflow stop; the names of
        those not finished yet. The owner of the state dir cancels their jobs."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, name FROM activities WHERE workflow_id=? AND state NOT IN"
                f" {TERMINAL_STATES}", (wf_id,)).fetchall()
            wanted = None if names is None else set(names)
            hit = [(r[0], r[1]) for r in rows if wanted is None or r[1] in wanted]
            db.executemany("UPDATE activities SET cancel_requested=1 WHERE id=?",
                           [(act_id,) for act_id, _ in hit])
        return [name for _, name in hit]

    def retry_workflow(self, wf_id: int) -> list[str]:
        """Send the FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL and SKIPPED
        activities of a finished workflow back to PENDING (attempt numbers go on) and the
        workflow back to RUNNING; the names reset. Empty when nothing needs a retry."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM workflows WHERE id=?", (wf_id,)).fetchone()
            if row is None or row[0] == WorkflowState.RUNNING.value:
                return []
            names = [r[0] for r in db.execute(
                "SELECT name FROM activities WHERE workflow_id=? AND state NOT IN"
                " ('COMPLETED') ORDER BY position", (wf_id,))]
            if not names and row[0] == WorkflowState.COMPLETED.value:
                return []
            db.execute("UPDATE activities SET state='PENDING', cancel_requested=0,"
                       " retry_at=NULL, exit_code=NULL, reason=NULL, job_id=NULL,"
                       " finished_at=NULL WHERE workflow_id=? AND state!='COMPLETED'",
                       (wf_id,))
            db.execute("UPDATE workflows SET state='RUNNING', finished_at=NULL, reason=NULL,"
                       " staged_out_at=NULL, stage_out_error=NULL"
                       " WHERE id=?", (wf_id,))
        return names or ["(workflow)"]

    # -- reads ------------------------------------------------------------------------------
    def workflow_by_intake_key(self, intake_key: str) -> int | None:
        """The id of the workflow stored under ``intake_key``, if any."""
        row = self.db.execute("SELECT id FROM workflows WHERE intake_key=?",
                              (intake_key,)).fetchone()
        return int(row[0]) if row else None

    def workflow(self, wf_id: int) -> WorkflowRow | None:
        row = self.db.execute("SELECT * FROM workflows WHERE id=?", (wf_id,)).fetchone()
        return self._workflow(row) if row else None

    def workflows(self, *, active_only: bool = False, limit: int = 50) -> list[WorkflowRow]:
        where = "WHERE state='RUNNING'" if active_only else ""
        rows = self.db.execute(
            f"SELECT * FROM workflows {where} ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._workflow(r) for r in rows]

    def running_heads(self) -> dict[int, WorkflowHead]:
        """What the planner checks first for each RUNNING workflow (one query for all)."""
        cur = self.db.cursor()
        cur.row_factory = None  # plain tuples: this runs every cycle over every RUNNING one
        rows = cur.execute(f"SELECT id, {_HEAD_COLUMNS} FROM workflows WHERE state='RUNNING'")
        return {r[0]: _head(r[1:]) for r in rows}

    def head_changes(self, after: int
                     ) -> tuple[list[tuple[int, str, WorkflowHead]], int]:
        """The workflows whose head changed after sequence number ``after`` (id, state,
        head), and the newest sequence number they carry (``after`` when none changed)."""
        cur = self.db.cursor()
        cur.row_factory = None
        rows = cur.execute(f"SELECT id, state, seq, {_HEAD_COLUMNS} FROM workflows"
                           " WHERE seq > ? ORDER BY seq", (after,)).fetchall()
        return [(r[0], r[1], _head(r[3:])) for r in rows], (rows[-1][2] if rows else after)

    def active_ids(self, wf_ids: Iterable[int] | None = None) -> set[int]:
        """Ids of RUNNING workflows (of ``wf_ids`` only, when given)."""
        ids = {int(r[0]) for r in self.db.execute("SELECT id FROM workflows WHERE state='RUNNING'")}
        return ids if wf_ids is None else ids & set(wf_ids)

    def activities(self, wf_id: int) -> list[ActivityRow]:
        rows = self.db.execute(
            "SELECT * FROM activities WHERE workflow_id=? ORDER BY position", (wf_id,)
        ).fetchall()
        return [self._activity(r) for r in rows]

    def activity(self, activity_id: int) -> ActivityRow:
        row = self.db.execute("SELECT * FROM activities WHERE id=?", (activity_id,)).fetchone()
        return self._activity(row)

    def live_attempts(self, wf_ids: Iterable[int] | None = None,
                      cluster: str | None = None) -> list[AttemptRow]:
        """Attempts whose job exists or may exist (SUBMITTING, QUEUED, RUNNING), optionally
        of some workflows only and on one cluster only."""
        sql = ("SELECT t.*, a.workflow_id, a.cancel_requested FROM attempts t"
               " JOIN activities a ON a.id=t.activity_id"
               f" WHERE t.state IN {LIVE_STATES}")
        args: list[object] = []
        if cluster is not None:
            sql += " AND t.cluster=?"
            args.append(cluster)
        rows = self.db.execute(sql + " ORDER BY t.id", args).fetchall()
        if wf_ids is None:
            return [_attempt(r) for r in rows]
        # filtered here, not with ``IN (?, …)``: callers pass every RUNNING workflow (each
        # cycle, each round; thousands when many queue), live attempts are at most the
        # clusters' queue limits
        ids = wf_ids if isinstance(wf_ids, AbstractSet) else set(wf_ids)
        return [_attempt(r) for r in rows if r["workflow_id"] in ids]

    def attempt(self, attempt_id: int) -> AttemptRow | None:
        row = self.db.execute(
            "SELECT t.*, a.workflow_id, a.cancel_requested FROM attempts t"
            " JOIN activities a ON a.id=t.activity_id WHERE t.id=?", (attempt_id,)).fetchone()
        return _attempt(row) if row else None

    def activity_ids(self, wf_id: int) -> dict[str, int]:
        rows = self.db.execute("SELECT name, id FROM activities WHERE workflow_id=?", (wf_id,))
        return {name: id_ for name, id_ in rows}

    def live_count(self, cluster: str) -> int:
        return int(self.db.execute(
            f"SELECT count(*) FROM attempts WHERE cluster=? AND state IN {LIVE_STATES}",
            (cluster,),
        ).fetchone()[0])

    def attempts(self, activity_id: int) -> list[AttemptRow]:
        rows = self.db.execute(
            "SELECT t.*, a.workflow_id, a.cancel_requested FROM attempts t"
            " JOIN activities a ON a.id=t.activity_id"
            " WHERE t.activity_id=? ORDER BY t.number", (activity_id,)
        ).fetchall()
        return [_attempt(r) for r in rows]

    # -- outbox -----------------------------------------------------------------------------
    @staticmethod
    def add_event(
        db: sqlite3.Connection, wf_id: int, type_: str, payload: dict[str, Any],
        urls: list[str], at: datetime,
    ) -> None:
        """Record an event and one pending delivery per URL (inside the caller's transaction)."""
        cur = db.execute(
            "INSERT INTO events(workflow_id, type, payload, created_at) VALUES (?,?,?,?)",
            (wf_id, type_, json.dumps(payload), iso(at)),
        )
        db.executemany(
            "INSERT INTO deliveries(event_id, workflow_id, url, next_try_at, queued_at)"
            " VALUES (?,?,?,?,?)",
            [(cur.lastrowid, wf_id, url, iso(at), iso(at)) for url in urls],
        )

    def pending_deliveries(self, wf_id: int | None = None) -> int:
        sql = "SELECT count(*) FROM deliveries WHERE state='pending'"
        args: tuple[int, ...] = ()
        if wf_id is not None:
            sql += " AND workflow_id=?"
            args = (wf_id,)
        return int(self.db.execute(sql, args).fetchone()[0])


    # Specs never change once stored: parse each once per connection.
    def _workflow(self, r: sqlite3.Row) -> WorkflowRow:
        spec = self._workflow_specs.get(r["id"])
        if spec is None:
            spec = Workflow.model_validate_json(r["spec"])
            _remember(self._workflow_specs, r["id"], spec, SPEC_CACHE_WORKFLOWS)
        return _workflow(r, spec)

    def _activity(self, r: sqlite3.Row) -> ActivityRow:
        spec = self._step_specs.get(r["id"])
        if spec is None:
            spec = Step.model_validate_json(r["spec"])
            _remember(self._step_specs, r["id"], spec, SPEC_CACHE_STEPS)
        return _activity(r, spec)


SPEC_CACHE_WORKFLOWS = 5_000
SPEC_CACHE_STEPS = 20_000


def _remember(cache: dict[int, Any], key: int, value: Any, cap: int) -> None:
    """Keep ``value``; past ``cap`` entries forget the oldest (a miss only parses again)."""
    if len(cache) >= cap:
        del cache[next(iter(cache))]
    cache[key] = value


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration (a trigger's body holds ``;`` of its own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {pending!r}")


def _workflow(r: sqlite3.Row, spec: Workflow) -> WorkflowRow:
    return WorkflowRow(
        id=r["id"], name=r["name"], namespace=r["namespace"], runtime=r["runtime"],
        source_format=r["source_format"], raw=r["raw"],
        spec=spec, state=WorkflowState(r["state"]),
        reason=r["reason"], created_at=datetime.fromisoformat(r["created_at"]),
        finished_at=parse_iso(r["finished_at"]), prepared_at=parse_iso(r["prepared_at"]),
        staged_out_at=parse_iso(r["staged_out_at"]), stage_out_error=r["stage_out_error"],
    )


def _activity(r: sqlite3.Row, spec: Step) -> ActivityRow:
    return ActivityRow(
        id=r["id"], workflow_id=r["workflow_id"], position=r["position"], name=r["name"],
        spec=spec, state=ActivityState(r["state"]),
        attempt=r["attempt"], retry_at=parse_iso(r["retry_at"]), exit_code=r["exit_code"],
        reason=r["reason"], job_id=r["job_id"], created_at=datetime.fromisoformat(r["created_at"]),
        started_at=parse_iso(r["started_at"]), finished_at=parse_iso(r["finished_at"]),
        cancel_requested=bool(r["cancel_requested"]),
        outputs=json.loads(r["outputs"]) if r["outputs"] else {},
    )


def _attempt(r: sqlite3.Row) -> AttemptRow:
    return AttemptRow(
        id=r["id"], activity_id=r["activity_id"], workflow_id=r["workflow_id"],
        number=r["number"], token=r["token"], cluster=r["cluster"], jobdir=r["jobdir"],
        job_id=r["job_id"], state=ActivityState(r["state"]), exit_code=r["exit_code"],
        reason=r["reason"], submitted_at=parse_iso(r["submitted_at"]),
        started_at=parse_iso(r["started_at"]), finished_at=parse_iso(r["finished_at"]),
        cancel_requested=bool(r["cancel_requested"]), max_rss_kb=r["max_rss_kb"],
        elapsed_s=r["elapsed_s"], cpu_s=r["cpu_s"],
    )
