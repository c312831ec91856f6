"""The AkoFlow surface: ``POST /workflows`` with ``{"workflow": "<base64 YAML>"}`` (the
integration guide's example works unchanged) and the AkoFlow engine's own paths and replies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from bridge.api.app import MAX_ID, WorkflowId, context
from bridge.service import decode_workflow

router = APIRouter(tags=["AkoFlow"])

DEPLOYED = "Workflow has been deployed successfully."
ENGINE_STATUS = {"created": 0, "running": 1, "finished": 2}
"""The AkoFlow engine's integer statuses (its store: 0 created, 1 running, 2 finished)."""


class WorkflowIn(BaseModel):
    """The guide's request body."""

    model_config = ConfigDict(extra="allow")
    workflow: str = Field(description="The workflow YAML, base64-encoded (UTF-8).",
                          max_length=16 * 1024 * 1024)
    runtime: str | None = Field(default=None, description="Run on this cluster instead of "
                                "spec.runtime (akobridge extension).", max_length=200)


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


@router.post("/workflows", status_code=201, response_model=Accepted)
async def post_workflow(request: Request, body: WorkflowIn,
                        idempotency_key: str | None = Header(default=None, max_length=200),
                        ) -> Accepted:
    """Submit an AkoFlow workflow. An ``Idempotency-Key`` header makes a retried request
    return the workflow it already created."""
    wf_id, name = await _submit(request, body, idempotency_key)
    return Accepted(id=wf_id, name=name, message=DEPLOYED)


@router.post("/akoflow-server/workflow/", response_model=EngineAccepted)
async def post_engine_server(request: Request, body: WorkflowIn) -> EngineAccepted:
    """The AkoFlow engine's server path (same body, its reply shape)."""
    wf_id, name = await _submit(request, body, None)
    return EngineAccepted(workflow_entity=name, workflow_id=wf_id, message=DEPLOYED)


@router.post("/akoflow-api/workflows/", response_model=EngineAccepted)
async def post_engine_api(request: Request, body: WorkflowIn) -> EngineAccepted:
    """The AkoFlow engine's API path (same body, its reply shape)."""
    wf_id, name = await _submit(request, body, None)
    return EngineAccepted(workflow_entity=name, workflow_id=wf_id, message=DEPLOYED)


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
