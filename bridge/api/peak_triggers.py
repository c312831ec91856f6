"""Peak webhook triggers: ``POST /workflows/api/v1/webhooks/{webhookId}`` starts an execution
of the definition whose ``{webhook: true}`` trigger was given that id (create's reply and
describe show it). The API token is needed as for every other route; the request id is the
``x-peak-requestId`` header, else ``Idempotency-Key``: a retry with it answers the same
``executionId``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from bridge.api.app import context, errors
from bridge.api.peak import RequestId, _db
from bridge.api.peak_executions import _json_body
from bridge.peak import store as peak_store
from bridge.peak import triggers
from bridge.peak.catalogue import CatalogueError
from bridge.peak.executions import ExecuteError
from bridge.runner import SubmissionError
from bridge.service import ServiceError
from bridge.store import Store

router = APIRouter(prefix="/workflows/api/v1", tags=["Peak"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


@router.post("/webhooks/{webhook_id}", responses=errors(409))
async def webhook_trigger(request: Request, webhook_id: str, request_id: RequestId = None,
                          idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Start an execution of the workflow with this webhook id: ``{executionId}``. The body,
    if any, is an execute body (``params``, ``stepsToRun``). 404: no such webhook; 409: the
    workflow is paused."""
    body = await _json_body(request)
    ctx = context(request)
    key = request_id or idempotency_key

    def fire(store: Store) -> tuple[str, peak_store.PeakWorkflow | None]:
        wf = peak_store.by_webhook(store, webhook_id)
        if wf is None or wf.status == "Paused":
            return "", wf
        return triggers.start(ctx.service, ctx.catalogue, store, wf, body,
                              request_id=key and f"webhook:{wf.id}:{key}",
                              trigger="webhook"), wf

    try:
        execution_id, wf = await _db(request, fire)
    except (ExecuteError, CatalogueError) as exc:
        raise ServiceError(400, "the execution cannot start", exc.detail()) from None
    except SubmissionError as exc:
        raise ServiceError(400, "the execution cannot start", [
            {"field": "steps", "message": str(exc)}]) from None
    if wf is None:
        raise ServiceError(404, "no such webhook", [
            {"field": "webhookId", "message": "no workflow has a webhook trigger with this id"}])
    if not execution_id:
        raise ServiceError(409, f"workflow {wf.id} is paused", [
            {"field": "webhookId", "message": "resume the workflow to use its webhook"}])
    return {"executionId": execution_id}
