"""The Peak-style workflow service's definitions: ``/workflows/api/v1`` as peak-sdk's
``workflows`` client calls it (reference/peak-api.md), and the client's two side endpoints.

Bodies are read raw (a bad one is a 400 listing every problem with its field path, as
:func:`bridge.peak.parse_definition` finds them); a create retried with the same
``x-peak-requestId`` answers the definition it made the first time.
"""

from __future__ import annotations

import getpass
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool

from bridge.api.app import MAX_ID, WorkflowId, context, errors
from bridge.peak import DefinitionError, describe_json, parse_definition
from bridge.peak import store as peak_store
from bridge.peak.catalogue import CatalogueError
from bridge.peak.cron import cron_trigger
from bridge.peak.definition import Definition
from bridge.service import ServiceError
from bridge.store import Store

router = APIRouter(prefix="/workflows/api/v1", tags=["Peak"])
side_router = APIRouter(tags=["Peak"])

T = TypeVar("T")
WorkflowStatus = Literal["Draft", "Running", "Available", "Paused"]
ExecutionStatus = Literal["Success", "Running", "Stopped", "Stopping", "Failed"]
RequestId = Annotated[str | None, Header(alias="x-peak-requestId", max_length=200)]
MAX_PAGE = 1000
_SCHEMA = {"type": "object", "description": "A Peak workflow definition (name, steps, ...)"}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _SCHEMA}}}}
"""The definition body in the OpenAPI document (it is read raw, so FastAPI does not list it)."""


def _daemon_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "akobridge"


MODIFIED_BY = _daemon_user()
"""``lastModifiedBy`` of every change: the API's tokens name no user, so the daemon's user."""


async def _db(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(store, *args, **kwargs)`` on a worker thread with that thread's store."""
    service = context(request).service
    return await run_in_threadpool(lambda: fn(service.store, *args, **kwargs))


async def _changed(request: Request, wf_id: int) -> None:
    """Tell the daemon definition ``wf_id`` changed (its cron job is re-read)."""
    await run_in_threadpool(context(request).on_definition_change, wf_id)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _definition(request: Request) -> Definition:
    """The body's definition, checked against the daemon's catalogue; 400 with every
    problem otherwise."""
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ServiceError(400, "the body is not valid JSON", [
            {"field": "body", "message": str(exc) or "not JSON"}]) from None
    try:
        defn = parse_definition(data)
    except DefinitionError as exc:
        raise ServiceError(400, "the workflow definition is not valid", exc.detail) from None
    problems = context(request).catalogue.step_problems(defn)
    if problems:
        raise ServiceError(400, "the workflow names images or instance types this daemon "
                           "does not have", problems)
    return defn


def _ts(when: datetime) -> str:
    """``2020-01-01T18:00:00.000Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _not_found(wf_id: int) -> ServiceError:
    return ServiceError(404, f"no workflow {wf_id}", [
        {"field": "workflowId", "message": f"no Peak workflow has the id {wf_id}"}])


def _name_taken(exc: peak_store.NameTaken) -> ServiceError:
    return ServiceError(409, str(exc), [
        {"field": "name", "message": f"{exc} (names are unique; PUT /workflows/{exc.other_id} "
                                     "replaces it)"}])


def _described(store: Store, wf_id: int) -> dict[str, Any] | None:
    wf = peak_store.get(store, wf_id)
    if wf is None:
        return None
    body = describe_json(wf.definition, webhook_id=wf.webhook_id)
    return {"id": wf.id, "name": wf.name, "createdAt": _ts(wf.created_at),
            "updatedAt": _ts(wf.updated_at), "status": peak_store.status(store, wf.id, wf.status),
            "steps": body.pop("steps"), "lastExecution": peak_store.last_execution(store, wf.id),
            **body}


def _list_item(store: Store, wf: peak_store.PeakWorkflow) -> dict[str, Any]:
    triggers = describe_json(wf.definition, webhook_id=wf.webhook_id)["triggers"]
    if wf.status != "Paused":
        for trigger in triggers:
            if "cron" in trigger:
                fire = cron_trigger(trigger["cron"]).get_next_fire_time(None, datetime.now(UTC))
                trigger["scheduled"] = _ts(fire) if fire else None
    return {"id": wf.id, "name": wf.name, "createdAt": _ts(wf.created_at),
            "updatedAt": _ts(wf.updated_at), "status": peak_store.status(store, wf.id, wf.status),
            "lastExecution": peak_store.last_execution(store, wf.id), "triggers": triggers,
            "tags": [{"name": t} for t in wf.tags], "lastModifiedBy": wf.last_modified_by}


@router.get("/workflows/")
async def list_workflows(
    request: Request,
    page_size: int = Query(25, alias="pageSize", ge=1, le=MAX_PAGE),
    page_number: int = Query(1, alias="pageNumber", ge=1, le=MAX_ID),
    workflow_status: Annotated[list[WorkflowStatus] | None, Query(alias="workflowStatus")]
    = None,
    last_execution_status: Annotated[list[ExecutionStatus] | None,
                                     Query(alias="lastExecutionStatus")] = None,
    last_modified_by: Annotated[list[str] | None, Query(alias="lastModifiedBy")] = None,
    search_term: str | None = Query(None, alias="searchTerm", max_length=200),
) -> dict[str, Any]:
    """Definitions matching every filter given (repeat a key for several values), by id."""
    def page(store: Store) -> dict[str, Any]:
        found = peak_store.list_workflows(
            store, statuses=list(workflow_status or []), modified_by=last_modified_by,
            search_term=search_term, last_execution_statuses=list(last_execution_status or []),
            page_size=page_size, page_number=page_number)
        return {"pageCount": math.ceil(found.total / page_size), "pageNumber": page_number,
                "pageSize": page_size, "workflows": [_list_item(store, w) for w in found.items],
                "workflowsCount": found.total}

    return await _db(request, page)


@router.post("/workflows/", openapi_extra=BODY, responses=errors(409))
async def create_workflow(request: Request, request_id: RequestId = None) -> dict[str, Any]:
    """Create a definition: ``{id, triggers}`` (a webhook trigger shows its minted id)."""
    defn = await _definition(request)
    try:
        wf, _ = await _db(request, peak_store.create, defn, request_id=request_id,
                          modified_by=MODIFIED_BY)
    except peak_store.NameTaken as exc:
        raise _name_taken(exc) from None
    await _changed(request, wf.id)
    return {"id": wf.id,
            "triggers": describe_json(wf.definition, webhook_id=wf.webhook_id)["triggers"]}


@router.put("/workflows/{workflow_id}", openapi_extra=BODY, responses=errors(409))
async def update_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """Replace a definition (its status and webhook id stay): ``{id, triggers}``."""
    defn = await _definition(request)
    try:
        wf = await _db(request, peak_store.update, workflow_id, defn, modified_by=MODIFIED_BY)
    except peak_store.NameTaken as exc:
        raise _name_taken(exc) from None
    if wf is None:
        raise _not_found(workflow_id)
    await _changed(request, wf.id)
    return {"id": wf.id,
            "triggers": describe_json(wf.definition, webhook_id=wf.webhook_id)["triggers"]}


@router.get("/workflows/{workflow_id}")
async def describe_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """A definition as describe shows it (``parameters.env`` as ``[{NAME: value}]``)."""
    found = await _db(request, _described, workflow_id)
    if found is None:
        raise _not_found(workflow_id)
    return found


@router.delete("/workflows/{workflow_id}", responses=errors(409))
async def delete_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """Delete a definition: ``{}``; 409 while one of its executions runs."""
    def delete(store: Store) -> int | None:
        running = peak_store.running_executions(store, workflow_id)
        if running:
            return running
        return 0 if peak_store.delete(store, workflow_id) else None

    running = await _db(request, delete)
    if running is None:
        raise _not_found(workflow_id)
    if running:
        raise ServiceError(409, f"workflow {workflow_id} has {running} running execution(s)", [
            {"field": "workflowId", "message": "stop its executions first"}])
    await _changed(request, workflow_id)
    return {}


async def _set_status(request: Request, workflow_id: int, status: str) -> dict[str, Any]:
    if await _db(request, peak_store.set_status, workflow_id, status) is None:
        raise _not_found(workflow_id)
    await _changed(request, workflow_id)
    return {}


@router.post("/workflows/{workflow_id}/pause")
async def pause_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """Pause the workflow's cron trigger (no slot fires while paused) and its webhook (409):
    ``{}`` (already paused: the same)."""
    return await _set_status(request, workflow_id, "Paused")


@router.post("/workflows/{workflow_id}/resume")
async def resume_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """Resume a paused workflow (its cron fires again from the next slot): ``{}``."""
    return await _set_status(request, workflow_id, "Available")


@router.get("/resources")
async def list_resources(request: Request) -> list[dict[str, Any]]:
    """The instance types: ``[{id, cpu, memory (GiB), gpu, gpuMemory (GiB)}]``."""
    return context(request).catalogue.resources()


@router.get("/resources/defaults")
async def default_resource(request: Request) -> dict[str, Any]:
    """``{instanceTypeId, storage}`` for steps without ``resources``."""
    try:
        return context(request).catalogue.defaults()
    except CatalogueError as exc:
        raise ServiceError(404, "no default resource", [
            {"field": exc.field, "message": exc.message}]) from None


@side_router.get("/tenant-management/api/v1/external/tenants/tenant-metadata")
async def tenant_metadata() -> dict[str, Any]:
    """``{}``: peak-sdk asks at session start (a ``spokeDetails`` would move its logs)."""
    return {}


@side_router.post("/resource-usage/api/v1/telemetry")
async def telemetry() -> dict[str, Any]:
    """``{}``: peak-sdk reports each call here; nothing is kept."""
    return {}
