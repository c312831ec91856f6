"""The AkoFlow surface: ``POST /workflows`` with ``{"workflow": "<base64 YAML>"}`` (the
integration guide's example works unchanged) and the AkoFlow engine's own paths and replies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.api.app import MAX_ID, ApiContext, WorkflowId, context, error_response
from bridge.service import ServiceError, decode_workflow

router = APIRouter(tags=["AkoFlow"])

DEPLOYED = "Workflow has been deployed successfully."
MAX_WORKFLOW_CHARS = 16 * 1024 * 1024
MAX_KEY_CHARS = 200
ENGINE_STATUS = {"created": 0, "running": 1, "finished": 2}
"""The AkoFlow engine's integer statuses (its store: 0 created, 1 running, 2 finished)."""


class WorkflowIn(BaseModel):
    """The guide's request body."""

    model_config = ConfigDict(extra="allow")
    workflow: str = Field(description="The workflow YAML, base64-encoded (UTF-8).",
                          max_length=MAX_WORKFLOW_CHARS)
    runtime: str | None = Field(default=None, description="Run on this cluster instead of "
                                "spec.runtime (akobridge extension).", max_length=MAX_KEY_CHARS)


class Accepted(BaseModel):
    id: int
    name: str
    message: str


class EngineAccepted(BaseModel):
    workflow_entity: str
    workflow_id: int
    message: str


async def _submit(request: Request, body: WorkflowIn, key: str | None) -> tuple[int, str]:
    ctx = context(request)
    text = decode_workflow(body.workflow)
    intake_key = f"api:{key}" if key else None
    wf_id, wf = await ctx.intake.submit(text, intake_key=intake_key, runtime=body.runtime)
    return wf_id, wf.name


def accepted(wf_id: int, name: str) -> Accepted:
    return Accepted(id=wf_id, name=name, message=DEPLOYED)


def engine_accepted(wf_id: int, name: str) -> EngineAccepted:
    return EngineAccepted(workflow_entity=name, workflow_id=wf_id, message=DEPLOYED)


@router.post("/workflows", status_code=201, response_model=Accepted)
async def post_workflow(request: Request, body: WorkflowIn,
                        idempotency_key: str | None = Header(default=None,
                                                             max_length=MAX_KEY_CHARS),
                        ) -> Accepted:
    """Submit an AkoFlow workflow. An ``Idempotency-Key`` header makes a retried request
    return the workflow it already created."""
    wf_id, name = await _submit(request, body, idempotency_key)
    return accepted(wf_id, name)


@router.post("/akoflow-server/workflow/", response_model=EngineAccepted)
async def post_engine_server(request: Request, body: WorkflowIn) -> EngineAccepted:
    """The AkoFlow engine's server path (same body, its reply shape)."""
    wf_id, name = await _submit(request, body, None)
    return engine_accepted(wf_id, name)


@router.post("/akoflow-api/workflows/", response_model=EngineAccepted)
async def post_engine_api(request: Request, body: WorkflowIn) -> EngineAccepted:
    """The AkoFlow engine's API path (same body, its reply shape)."""
    wf_id, name = await _submit(request, body, None)
    return engine_accepted(wf_id, name)


_REPLIES: dict[str, tuple[int, Callable[[int, str], BaseModel], bool]] = {
    # path: (status, the route's reply from (id, name), whether an Idempotency-Key counts)
    "/workflows": (201, accepted, True),
    "/akoflow-server/workflow/": (200, engine_accepted, False),
    "/akoflow-api/workflows/": (200, engine_accepted, False),
}


class IntakeLane:
    """The three intake POSTs above without FastAPI's request machinery, for a well-formed
    request: the framework's routing, dependency solving, body model and response model
    cost about as much of the API thread as checking the workflow itself, at hundreds of
    requests a second. Anything that is not plainly well-formed — another content type,
    a body that is not a JSON object with a string ``workflow``, a header over its limit
    — goes on to the FastAPI routes above (the body replayed), which answer it as ever;
    the replies and errors of both are the same, and the routes stay the OpenAPI's."""

    def __init__(self, app: ASGIApp, ctx: ApiContext, routes: dict[str, Any]) -> None:
        self.app, self.ctx, self.routes = app, ctx, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = _REPLIES.get(scope["path"]) if scope["type"] == "http" else None
        if reply is None or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client left (or the body limit answered 413)
            return
        fields = _well_formed(scope, body, keyed=reply[2])
        if fields is None:
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.routes[scope["path"]]  # the request metric's route label
        encoded, runtime, key = fields
        try:
            text = decode_workflow(encoded)
            wf_id, wf = await self.ctx.intake.submit(
                text, intake_key=f"api:{key}" if key else None, runtime=runtime)
        except ServiceError as exc:
            response = error_response(exc.status, exc.error, exc.detail)
        else:
            response = JSONResponse(reply[1](wf_id, wf.name).model_dump(),
                                    status_code=reply[0])
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives the body already read once more, then the client's own."""
    given = False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}
    return again


def _well_formed(scope: Scope, body: bytes, keyed: bool
                 ) -> tuple[str, str | None, str | None] | None:
    """(workflow, runtime, idempotency key) of a request :class:`WorkflowIn` and the route's
    header take as they are; None for anything else (FastAPI answers it)."""
    keys: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media != b"application/json":
                return None
        elif name == b"idempotency-key":
            keys.append(value)
    if len(keys) > 1 or not body:
        return None
    key = keys[0].decode("latin-1") if keys and keyed else None
    if key is not None and len(key) > MAX_KEY_CHARS:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if type(data) is not dict:
        return None
    encoded, runtime = data.get("workflow"), data.get("runtime")
    if type(encoded) is not str or len(encoded) > MAX_WORKFLOW_CHARS:
        return None
    if runtime is not None and (type(runtime) is not str or len(runtime) > MAX_KEY_CHARS):
        return None
    return encoded, runtime, key


def engine_status(state: str, started: bool) -> int:
    if state == "RUNNING":
        return ENGINE_STATUS["running"] if started else ENGINE_STATUS["created"]
    return ENGINE_STATUS["finished"]


def _activity_status(state: str) -> int:
    if state in ("PENDING", "READY", "RETRY_WAIT"):
        return ENGINE_STATUS["created"]
    if state in ("SUBMITTING", "QUEUED", "RUNNING"):
        return ENGINE_STATUS["running"]
    return ENGINE_STATUS["finished"]


@router.get("/akoflow-api/workflows/")
async def engine_list(request: Request, limit: int = Query(100, ge=1, le=1000),
                      offset: int = Query(0, ge=0, le=MAX_ID)) -> list[dict[str, Any]]:
    """Workflows as the AkoFlow engine lists them (integer ``status``) plus ``state``."""
    page = await run_in_threadpool(context(request).service.workflows, limit=limit,
                                   offset=offset)
    return [{"id": w["id"], "name": w["name"], "namespace": w["namespace"],
             "runtime": w["runtime"], "status": engine_status(w["state"], True),
             "state": w["state"], "created_at": w["created_at"],
             "finished_at": w["finished_at"]} for w in page["items"]]


@router.get("/akoflow-api/workflows/{workflow_id}/")
async def engine_get(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """One workflow and its activities with the engine's integer statuses."""
    wf = await run_in_threadpool(context(request).service.workflow, workflow_id)
    started = any(a["state"] != "PENDING" for a in wf["activities"])
    return {"id": wf["id"], "name": wf["name"], "namespace": wf["namespace"],
            "runtime": wf["runtime"], "status": engine_status(wf["state"], started),
            "state": wf["state"], "reason": wf["reason"], "created_at": wf["created_at"],
            "finished_at": wf["finished_at"],
            "activities": [{"id": a["id"], "name": a["name"],
                            "status": _activity_status(a["state"]), "state": a["state"],
                            "proc_id": a["job_id"], "exit_code": a["exit_code"],
                            "depends_on": a["depends_on"], "started_at": a["started_at"],
                            "finished_at": a["finished_at"]} for a in wf["activities"]]}
