"""Peak executions under ``/workflows/api/v1``: execute (idempotent per
``x-peak-requestId``), list (``/workflows/executions/{id}``, the client's path order),
details, logs paged with ``nextToken``, a signed ``downloadUrl`` for a step's whole log (fetched
without a token), and stop (``Stopping`` until the jobs are gone, then ``Stopped``)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from bridge.api.app import MAX_ID, SIGNED_LOG_PREFIX, WorkflowId, context, errors
from bridge.api.peak import MAX_PAGE, ExecutionStatus, RequestId, _db, _not_found
from bridge.peak import executions, signed
from bridge.peak import store as peak_store
from bridge.peak.catalogue import CatalogueError
from bridge.peak.executions import ExecuteError, Execution
from bridge.runner import SubmissionError
from bridge.service import ServiceError
from bridge.store import Store

router = APIRouter(prefix="/workflows/api/v1", tags=["Peak"])
T = TypeVar("T")
StepName = Annotated[str, Query(alias="stepName", min_length=1, max_length=200)]


def _no_execution(execution_id: str) -> ServiceError:
    return ServiceError(404, f"no execution {execution_id}", [
        {"field": "executionId", "message": "no execution of this workflow has this id"}])


async def _json_body(request: Request) -> object:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ServiceError(400, "the body is not valid JSON", [
            {"field": "body", "message": str(exc) or "not JSON"}]) from None


@router.post("/workflows/{workflow_id}/execute", responses=errors(409))
async def execute_workflow(request: Request, workflow_id: WorkflowId,
                           request_id: RequestId = None) -> dict[str, Any]:
    """Start an execution now: ``{executionId}``. Retried with the same
    ``x-peak-requestId``, the answer is the execution the first call started."""
    body = await _json_body(request)
    ctx = context(request)
    service = ctx.service

    def start(store: Store) -> str | None:
        wf = peak_store.get(store, workflow_id)
        if wf is None:
            return None
        return executions.execute(
            store, lambda w, key: service.bridge.submit(w, key, store=store), ctx.catalogue,
            wf.id, wf.definition, body, request_id=request_id)

    try:
        execution_id = await _db(request, start)
    except (ExecuteError, CatalogueError) as exc:
        raise ServiceError(400, "the execution cannot start", exc.detail()) from None
    except SubmissionError as exc:  # e.g. a cluster that went away in a reload
        raise ServiceError(400, "the execution cannot start", [
            {"field": "steps", "message": str(exc)}]) from None
    if execution_id is None:
        raise _not_found(workflow_id)
    service.wake()
    return {"executionId": execution_id}


@router.get("/workflows/executions/{workflow_id}")
async def list_executions(
    request: Request, workflow_id: WorkflowId,
    count: int | None = Query(None, ge=1, le=MAX_ID),
    statuses: Annotated[list[ExecutionStatus] | None, Query()] = None,
    date_from: Annotated[datetime | None, Query(alias="dateFrom")] = None,
    date_to: Annotated[datetime | None, Query(alias="dateTo")] = None,
    page_size: int = Query(25, alias="pageSize", ge=1, le=MAX_PAGE),
    page_number: int = Query(1, alias="pageNumber", ge=1, le=MAX_ID),
) -> dict[str, Any]:
    """A definition's executions of the last 90 days, newest first (``count`` caps them)."""
    def page(store: Store) -> dict[str, Any] | None:
        if peak_store.get(store, workflow_id) is None:
            return None
        found = executions.listing(store, workflow_id, statuses=list(statuses or []),
                                   since=date_from, until=date_to)
        if count is not None:
            found = found[:count]
        start = (page_number - 1) * page_size
        items = [executions.summary(store, e) for e in found[start:start + page_size]]
        return {"executions": items, "pageSize": page_size, "pageNumber": page_number,
                "pageCount": math.ceil(len(found) / page_size), "workflowId": workflow_id,
                "executionCount": len(found)}

    found = await _db(request, page)
    if found is None:
        raise _not_found(workflow_id)
    return found


async def _execution(request: Request, workflow_id: int, execution_id: str
                     ) -> tuple[Execution, peak_store.PeakWorkflow]:
    def look(store: Store) -> tuple[Execution | None, peak_store.PeakWorkflow | None]:
        return executions.get(store, workflow_id, execution_id), peak_store.get(store,
                                                                                workflow_id)
    ex, wf = await _db(request, look)
    if wf is None:
        raise _not_found(workflow_id)
    if ex is None:
        raise _no_execution(execution_id)
    return ex, wf


@router.get("/workflows/{workflow_id}/executions/{execution_id}")
async def execution_details(request: Request, workflow_id: WorkflowId,
                            execution_id: str) -> dict[str, Any]:
    """The execution with each step's status, times, exit code, image, command, resources
    and children."""
    ex, wf = await _execution(request, workflow_id, execution_id)
    return await _db(request, executions.details, ex, wf.definition)


@router.post("/workflows/{workflow_id}/executions/{execution_id}/stop")
async def stop_execution(request: Request, workflow_id: WorkflowId,
                         execution_id: str) -> dict[str, Any]:
    """Stop an execution: ``{}``; it shows ``Stopping`` until its jobs are cancelled."""
    ex, _ = await _execution(request, workflow_id, execution_id)
    await _db(request, executions.stop, ex)
    context(request).service.wake()
    return {}


@router.get("/workflows/{workflow_id}/executions/{execution_id}/logs")
async def execution_logs(
    request: Request, workflow_id: WorkflowId, execution_id: str,
    step_name: StepName,
    next_token: str | None = Query(None, alias="nextToken", max_length=40),
) -> dict[str, Any]:
    """A page of a step's output: ``{logs: [{message, timestamp (ms)}], nextToken,
    stepRunStatus}``; pass ``nextToken`` back for the next page (it stays the same while
    nothing new was written; ``null`` once the step ended and everything was read)."""
    ex, _ = await _execution(request, workflow_id, execution_id)
    offset = _offset(next_token)
    service = context(request).service

    def read(store: Store) -> dict[str, Any]:
        page = service.read_log(ex.workflow_id, step_name, "out", offset)
        act = service.activity(ex.workflow_id, step_name)
        text: str = page["data"]
        read = page["next"] - offset
        if text.endswith("\n") or page["final"]:
            complete, used = text, read
        else:  # whole lines only while the step writes: the rest comes on the next page
            complete = text[:text.rfind("\n") + 1]
            used = max(0, read - len(text[len(complete):].encode()))
        lines = complete.splitlines()
        now_ms = int(time.time() * 1000)
        done = page["final"] and used == read
        return {"logs": [{"message": line, "timestamp": now_ms} for line in lines],
                "nextToken": None if done else str(offset + used),
                "stepRunStatus": executions.step_status(act)}

    return await _step_call(request, step_name, read)


async def _step_call(request: Request, step_name: str, fn: Callable[[Store], T]) -> T:
    """``fn(store)`` on a worker thread, an unknown step a 404 naming ``stepName``."""
    try:
        return await _db(request, fn)
    except ServiceError as exc:
        if exc.detail and exc.detail[0].get("field") == "name":
            raise ServiceError(404, f"no step {step_name!r} in this execution", [
                {"field": "stepName", "message": "unknown step"}]) from None
        raise


def _link_key(request: Request) -> bytes:
    """The daemon's link key (state dir, 0600), read once per app."""
    state = request.app.state
    key: bytes | None = getattr(state, "peak_link_key", None)
    if key is None:
        key = state.peak_link_key = signed.load_key(context(request).service.bridge.state_dir)
    return key


@router.get("/workflows/{workflow_id}/executions/{execution_id}/logs/download")
async def execution_logs_download(request: Request, workflow_id: WorkflowId,
                                  execution_id: str, step_name: StepName) -> dict[str, Any]:
    """``{downloadUrl}``: a link to the step's whole log, signed and valid for
    five minutes, that needs no auth header (peak-sdk fetches it bare)."""
    ex, _ = await _execution(request, workflow_id, execution_id)
    service = context(request).service
    await _step_call(request, step_name, lambda _s: service.activity(ex.workflow_id, step_name))
    token = await run_in_threadpool(
        lambda: signed.sign(_link_key(request), workflow_id, execution_id, step_name))
    return {"downloadUrl": str(request.url_for("download_log", token=token))}


@router.get(SIGNED_LOG_PREFIX.removeprefix(router.prefix) + "{token}",
            response_class=PlainTextResponse, responses=errors(403))
async def download_log(request: Request, token: str) -> PlainTextResponse:
    """The step's whole log as text, for a token from ``…/logs/download`` (403 when it is
    forged or expired; no auth header needed)."""
    try:
        link = signed.verify(await run_in_threadpool(_link_key, request), token)
    except signed.LinkError as exc:
        raise ServiceError(403, str(exc), [
            {"field": "token", "message": "ask …/logs/download for a fresh downloadUrl"}]) from None
    ex, _ = await _execution(request, link.workflow_id, link.execution_id)
    service = context(request).service

    def whole(_store: Store) -> str:
        text: str = service.read_log(ex.workflow_id, link.step, "out", 0,
                                     limit=sys.maxsize)["data"]
        return text

    text = await _step_call(request, link.step, whole)
    return PlainTextResponse(text, headers={"Cache-Control": "no-store"})


def _offset(token: str | None) -> int:
    if token is None:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise ServiceError(400, "not a nextToken of this service", [
            {"field": "nextToken", "message": "pass back the nextToken of the last page"}])
    return int(token)
