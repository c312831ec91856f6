"""Peak executions: one execution is one internal workflow (its steps run as Slurm jobs or
local processes through the ordinary cycle), linked by a row in ``peak_executions``.

``execute`` is idempotent per ``x-peak-requestId``: the workflow is stored under the intake
key ``peak:<request id>`` and the execution row under that request id, so a retried call —
also one whose first reply was lost, also after a crash between the two commits — finds the
execution it started instead of starting a second one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.engine import ActivityState, WorkflowState
from bridge.peak.convert import Catalogue, ExecuteRequest, to_workflow
from bridge.peak.definition import Definition
from bridge.peak.problems import FieldError
from bridge.store import ActivityRow, Store, WorkflowRow, iso, now_utc, parse_iso

HISTORY_DAYS = 90
"""Executions older than this are not listed (and :func:`prune` deletes them)."""

WORKFLOW_STATUS = {WorkflowState.COMPLETED: "Success", WorkflowState.FAILED: "Failed",
                   WorkflowState.CANCELLED: "Stopped"}
STEP_STATUS = {
    ActivityState.COMPLETED: "Success", ActivityState.SKIPPED: "Skipped",
    ActivityState.CANCELLED: "Stopped", ActivityState.PENDING: "Pending",
    ActivityState.RETRY_WAIT: "Retrying", ActivityState.SUBMITTING: "Running",
    ActivityState.QUEUED: "Running", ActivityState.RUNNING: "Running",
}
"""A step's status; the other final states (FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL) are
``Failed``."""


class ExecuteError(FieldError):
    """A bad execute body; ``field`` names the part."""


@dataclass(frozen=True)
class Execution:
    id: str
    peak_workflow_id: int
    workflow_id: int
    trigger: str
    created_at: datetime
    stop_requested_at: datetime | None


def parse_execute_body(data: object, defn: Definition) -> ExecuteRequest:
    """``{params: {global, stepWise}, stepsToRun: [{stepName, runDAG}]}`` (all optional)."""
    if data is None or data == {}:
        return ExecuteRequest()
    if not isinstance(data, dict):
        raise ExecuteError("body", "must be a JSON object")
    unknown = set(data) - {"params", "stepsToRun"}
    if unknown:
        raise ExecuteError(sorted(unknown)[0], "unknown field (params, stepsToRun)")
    params = _or_empty(data.get("params"), {})
    if not isinstance(params, dict) or set(params) - {"global", "stepWise"}:
        raise ExecuteError("params", "must be an object with global and stepWise")
    global_params = _strings(_or_empty(params.get("global"), {}), "params.global")
    step_wise = _or_empty(params.get("stepWise"), {})
    if not isinstance(step_wise, dict):
        raise ExecuteError("params.stepWise", "must be an object: step name → parameters")
    step_params: dict[str, dict[str, str]] = {}
    for name, values in step_wise.items():
        if name not in defn.steps:
            raise ExecuteError(f"params.stepWise.{name}", f"no step named {name!r}")
        step_params[name] = _strings(values, f"params.stepWise.{name}")
    runs = _or_empty(data.get("stepsToRun"), [])
    if not isinstance(runs, list):
        raise ExecuteError("stepsToRun", "must be a list of {stepName, runDAG}")
    chosen: list[tuple[str, bool]] = []
    for i, item in enumerate(runs):
        where = f"stepsToRun[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("stepName"), str) \
                or set(item) - {"stepName", "runDAG"}:
            raise ExecuteError(where, "must be {stepName: <name>, runDAG: true|false}")
        if not isinstance(item.get("runDAG", False), bool):
            raise ExecuteError(f"{where}.runDAG", "must be true or false")
        chosen.append((item["stepName"], bool(item.get("runDAG", False))))
    return ExecuteRequest(global_params, step_params, tuple(chosen))


def _or_empty(value: object, empty: object) -> object:
    """``None`` (the client drops unset values, but a null may come) is the empty value."""
    return empty if value is None else value


def _strings(values: object, where: str) -> dict[str, str]:
    if not isinstance(values, dict):
        raise ExecuteError(where, "must be an object of NAME: value")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not key.replace("_", "a").isalnum() or key[:1].isdigit():
            raise ExecuteError(f"{where}.{key}", "not an environment variable name")
        if isinstance(value, dict | list) or value is None:
            raise ExecuteError(f"{where}.{key}", "must be a string, number or boolean")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def execute(store: Store, submit: Any, catalogue: Catalogue, peak_workflow_id: int,
            defn: Definition, body: object, *, request_id: str | None = None,
            trigger: str = "manual") -> str:
    """Start an execution (or find the one this request id started); its id.
    ``submit(workflow, intake_key)`` stores the internal workflow and returns its id."""
    if request_id is not None:
        known = _by_request(store, request_id)
        if known is not None:
            return known
    request = parse_execute_body(body, defn)
    wf = to_workflow(defn, catalogue, request)
    execution_id = str(uuid.uuid4())
    wf_id = submit(wf, f"peak:{request_id or execution_id}")
    with store.transaction() as db:
        db.execute(
            "INSERT OR IGNORE INTO peak_executions(id, peak_workflow_id, workflow_id,"
            " request_id, trigger, created_at) VALUES (?,?,?,?,?,?)",
            (execution_id, peak_workflow_id, wf_id, request_id, trigger, iso(now_utc())))
        row = db.execute("SELECT id FROM peak_executions WHERE workflow_id=?",
                         (wf_id,)).fetchone()
    return str(row[0])


def _by_request(store: Store, request_id: str) -> str | None:
    row = store.db.execute("SELECT id FROM peak_executions WHERE request_id=?",
                           (request_id,)).fetchone()
    return str(row[0]) if row else None


def get(store: Store, peak_workflow_id: int, execution_id: str) -> Execution | None:
    row = store.db.execute("SELECT * FROM peak_executions WHERE id=? AND peak_workflow_id=?",
                           (execution_id, peak_workflow_id)).fetchone()
    return _execution(row) if row else None


def _execution(r: Any) -> Execution:
    created = parse_iso(r["created_at"])
    assert created is not None
    return Execution(r["id"], r["peak_workflow_id"], r["workflow_id"], r["trigger"], created,
                     parse_iso(r["stop_requested_at"]))


def status(store: Store, ex: Execution, wf: WorkflowRow | None = None) -> str:
    wf = wf or store.workflow(ex.workflow_id)
    if wf is None:
        return "Failed"
    if wf.state is WorkflowState.RUNNING:
        return "Stopping" if ex.stop_requested_at else "Running"
    return WORKFLOW_STATUS[wf.state]


def running(store: Store, peak_workflow_id: int) -> int:
    """How many executions of this definition have not ended."""
    return int(store.db.execute(
        "SELECT count(*) FROM peak_executions e JOIN workflows w ON w.id=e.workflow_id"
        " WHERE e.peak_workflow_id=? AND w.state='RUNNING'", (peak_workflow_id,)).fetchone()[0])


def stop(store: Store, ex: Execution) -> list[str]:
    """Ask every step of the execution to stop (jobs are scancelled by the owner's cycle)."""
    with store.transaction() as db:
        db.execute("UPDATE peak_executions SET stop_requested_at=coalesce(stop_requested_at, ?)"
                   " WHERE id=?", (iso(now_utc()), ex.id))
    return store.request_cancel(ex.workflow_id)


def summary(store: Store, ex: Execution) -> dict[str, Any]:
    """An item of the executions list."""
    wf = store.workflow(ex.workflow_id)
    finished = wf.finished_at if wf else None
    out: dict[str, Any] = {"executionId": ex.id, "executedAt": stamp(ex.created_at),
                           "finishedAt": stamp(finished), "status": status(store, ex, wf),
                           "duration": duration(ex.created_at, finished), "reruns": []}
    if ex.stop_requested_at:
        out["stoppedBy"] = "akobridge"
    return out


def listing(store: Store, peak_workflow_id: int, *, statuses: list[str],
            since: datetime | None, until: datetime | None) -> list[Execution]:
    """Executions of a definition, newest first, within the history window and filters."""
    floor = now_utc() - timedelta(days=HISTORY_DAYS)
    since = max(since, floor) if since else floor
    args: list[Any] = [peak_workflow_id, iso(since)]
    clause = ""
    if until:
        clause = " AND created_at<?"
        args.append(iso(until))
    rows = store.db.execute(
        "SELECT * FROM peak_executions WHERE peak_workflow_id=? AND created_at>=?"
        f"{clause} ORDER BY created_at DESC, id", args).fetchall()
    found = [_execution(r) for r in rows]
    return [e for e in found if not statuses or status(store, e) in statuses]


def latest(store: Store, peak_workflow_id: int) -> Execution | None:
    """The newest execution of a definition within the history window (one row read)."""
    floor = iso(now_utc() - timedelta(days=HISTORY_DAYS))
    row = store.db.execute(
        "SELECT * FROM peak_executions WHERE peak_workflow_id=? AND created_at>=?"
        " ORDER BY created_at DESC, id LIMIT 1", (peak_workflow_id, floor)).fetchone()
    return _execution(row) if row else None


def details(store: Store, ex: Execution, defn: Definition) -> dict[str, Any]:
    """``GET …/executions/{id}``: the execution and each of its steps."""
    wf = store.workflow(ex.workflow_id)
    acts = store.activities(ex.workflow_id)
    children: dict[str, list[str]] = {a.name: [] for a in acts}
    for a in acts:
        for parent in a.spec.parents:
            children.setdefault(parent, []).append(a.name)
    return {"executionId": ex.id, "status": status(store, ex, wf),
            "executedAt": stamp(ex.created_at),
            "finishedAt": stamp(wf.finished_at if wf else None),
            "steps": [_step(a, defn, children) for a in acts]}


def step_status(act: ActivityRow) -> str:
    return STEP_STATUS.get(act.state, "Failed")


def _step(act: ActivityRow, defn: Definition, children: Mapping[str, list[str]]) -> dict[str, Any]:
    given = defn.steps.get(act.name)
    resources = given.resources.model_dump(by_alias=True, exclude_none=True) \
        if given and given.resources else {}
    return {"name": act.name, "status": step_status(act), "stepType": "standard",
            "startedAt": stamp(act.started_at), "finishedAt": stamp(act.finished_at),
            "command": act.spec.run, "image": act.spec.image or "",
            "output": {"exitCode": None if act.exit_code is None else str(act.exit_code),
                       "message": act.reason or ("terminated" if act.state.terminal else "")},
            "resources": resources, "children": children.get(act.name, []),
            "attempt": act.attempt, "jobId": act.job_id}


def prune(store: Store, now: datetime | None = None) -> int:
    """Forget executions older than :data:`HISTORY_DAYS` days; how many."""
    cutoff = (now or now_utc()) - timedelta(days=HISTORY_DAYS)
    with store.transaction() as db:
        cur = db.execute("DELETE FROM peak_executions WHERE created_at<?", (iso(cutoff),))
    return int(cur.rowcount)


def stamp(when: datetime | None) -> str | None:
    """``2020-01-01T18:00:00.000Z`` (the seed's timestamps)."""
    if when is None:
        return None
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def duration(start: datetime, end: datetime | None) -> str:
    """``HH:MM:SS`` from start to end (or now)."""
    seconds = int(((end or now_utc()) - start).total_seconds())
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


__all__ = ["HISTORY_DAYS", "ExecuteError", "Execution", "details", "execute", "get", "listing",
           "parse_execute_body", "prune", "running", "status", "stop", "summary"]
