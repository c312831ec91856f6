"""Monitoring and control: workflows, activities, logs, cancel/retry, artifacts, the change
stream, health, metrics and the webhook dead letters."""

from __future__ import annotations

import asyncio
import shutil
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from bridge.api.app import MAX_ID, WorkflowId, context, errors
from bridge.service import ServiceError, problem

router = APIRouter()

Name = Annotated[str, Field(min_length=1, max_length=200)]


class CancelIn(BaseModel):
    activities: list[Name] | None = Field(
        default=None, max_length=10_000,
        description="Activity names to cancel (default: every activity not finished).")


class Requested(BaseModel):
    workflow_id: int
    activities: list[str]
    message: str


@router.get("/workflows", tags=["monitoring"])
async def list_workflows(
    request: Request,
    state: Annotated[Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "running",
                             "completed", "failed", "cancelled"] | None, Query()] = None,
    name: Annotated[str | None, Query(max_length=200, description="exactly this name")] = None,
    search: Annotated[str | None, Query(max_length=200,
                                        description="names containing this (any case)")] = None,
    runtime: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    """Workflows, newest first: ``{items, total, limit, offset}``; each item has its activity
    ``counts`` by group (done, running, queued, failed, …), ``states`` (by state), their
    number (``activities``) and ``duration_s``."""
    return await run_in_threadpool(context(request).service.workflows, state=state, name=name,
                                   search=search,
                                   runtime=runtime, since=since, until=until, limit=limit,
                                   offset=offset)


@router.get("/workflows/{workflow_id}", tags=["monitoring"])
async def get_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """A workflow with its activities and their attempts (job ids, exit codes, reasons,
    timestamps, durations, and what sacct measured when accounting has it)."""
    return await run_in_threadpool(context(request).service.workflow, workflow_id)


@router.get("/workflows/{workflow_id}/activities/{name}", tags=["monitoring"])
async def get_activity(request: Request, workflow_id: WorkflowId, name: Name) -> dict[str, Any]:
    """One activity as ``GET /workflows/{id}`` lists it (attempts and all), with its
    ``workflow``'s summary."""
    return await run_in_threadpool(context(request).service.activity_detail, workflow_id, name)


@router.get("/workflows/{workflow_id}/activities/{name}/logs", tags=["monitoring"],
            responses=errors(502))
async def get_logs(
    request: Request, workflow_id: WorkflowId, name: Name,
    stream: Literal["out", "err"] = "out",
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    attempt: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    limit: Annotated[int, Query(ge=1, le=1024 * 1024)] = 256 * 1024,
) -> dict[str, Any]:
    """A page of the job's stdout/stderr from ``offset``; follow by asking again from
    ``next`` until ``final`` is true."""
    return await run_in_threadpool(context(request).service.read_log, workflow_id, name,
                                   stream, offset, attempt, limit)


@router.get("/workflows/{workflow_id}/activities/{name}/script", tags=["monitoring"],
            responses=errors(502))
async def get_script(
    request: Request, workflow_id: WorkflowId, name: Name,
    attempt: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> dict[str, Any]:
    """The rendered job script (sbatch header and all) of an attempt (the last by default)
    and the command file it runs: ``{attempt, job_id, cluster, jobdir, script, command}``."""
    return await run_in_threadpool(context(request).service.script, workflow_id, name, attempt)


@router.post("/workflows/{workflow_id}/cancel", status_code=202, response_model=Requested,
             tags=["control"])
async def cancel(request: Request, workflow_id: WorkflowId,
                 body: CancelIn | None = None) -> Requested:
    """Cancel activities (all unfinished by default); their jobs are stopped."""
    names = body.activities if body else None
    hit = await run_in_threadpool(context(request).service.cancel, workflow_id, names)
    msg = (f"cancel requested for {len(hit)} activities" if hit
           else "nothing to cancel: the activities have ended")
    return Requested(workflow_id=workflow_id, activities=hit, message=msg)


@router.post("/workflows/{workflow_id}/retry", status_code=202, response_model=Requested,
             tags=["control"], responses=errors(409))
async def retry(request: Request, workflow_id: WorkflowId) -> Requested:
    """Run the failed, cancelled and skipped activities of a finished workflow again."""
    names = await run_in_threadpool(context(request).service.retry, workflow_id)
    return Requested(workflow_id=workflow_id, activities=names,
                     message=f"retrying {len(names)} activities")


@router.get("/workflows/{workflow_id}/artifacts", tags=["artifacts"], responses=errors(502))
async def list_artifacts(request: Request, workflow_id: WorkflowId) -> list[dict[str, Any]]:
    """Files under the workflow's volume targets, mount paths and job directories."""
    return await run_in_threadpool(_list_artifacts, request, workflow_id)


def _files(request: Request, workflow_id: int) -> Any:
    from bridge.artifacts import ArtifactError, WorkflowFiles

    svc = context(request).service
    try:
        return WorkflowFiles(svc.store, svc.bridge, workflow_id)
    except ArtifactError as exc:
        raise ServiceError(404, str(exc), [problem("workflow_id", str(exc))]) from None


def _list_artifacts(request: Request, workflow_id: int) -> list[dict[str, Any]]:
    from bridge.artifacts import ArtifactError
    from runtimes.transport import TransportError

    try:
        listed = _files(request, workflow_id).list()
    except ArtifactError as exc:
        raise ServiceError(404, str(exc), [problem("workflow_id", str(exc))]) from None
    except (OSError, TransportError) as exc:
        raise ServiceError(502, "cannot list the files on the cluster",
                           [problem("", str(exc))]) from None
    return [{"cluster": a.cluster, "path": a.path, "size": a.info.size,
             "mtime": a.info.mtime} for a in listed]


@router.get("/workflows/{workflow_id}/artifacts/download", tags=["artifacts"],
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {},
                                         "application/gzip": {}}}, **errors(502)})
async def download_artifact(request: Request, workflow_id: WorkflowId,
                            path: Annotated[str, Query(min_length=1, max_length=4096)]
                            ) -> Response:
    """One file as is, or a directory as a ``.tar.gz``."""
    return await run_in_threadpool(_download, request, workflow_id, path)


def _download(request: Request, workflow_id: int, path: str) -> Response:
    from bridge.artifacts import ArtifactError
    from runtimes.transport import TransportError

    if "\x00" in path:
        raise ServiceError(422, "bad path", [problem("path", "contains a NUL byte")])
    files = _files(request, workflow_id)
    tmp = Path(tempfile.mkdtemp(prefix="akb-dl-"))
    try:
        files.get(path, tmp)
    except ArtifactError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServiceError(404, str(exc), [problem("path", str(exc))]) from None
    except (OSError, TransportError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServiceError(502, "cannot fetch the file from the cluster",
                           [problem("path", str(exc))]) from None
    entries = list(tmp.iterdir())
    cleanup = BackgroundTask(shutil.rmtree, tmp, ignore_errors=True)
    if len(entries) == 1 and entries[0].is_file():
        return FileResponse(entries[0], filename=entries[0].name, background=cleanup,
                            media_type="application/octet-stream")
    archive = tmp.with_suffix(".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for e in entries:
            tar.add(e, arcname=e.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return FileResponse(archive, filename=f"workflow-{workflow_id}.tar.gz",
                        media_type="application/gzip",
                        background=BackgroundTask(archive.unlink, missing_ok=True))


@router.get("/events", tags=["monitoring"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request,
                 workflow: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> Response:
    """Server-sent events of state changes (``workflow`` and ``activity`` events), with a
    keep-alive comment every 15 s."""
    gen = context(request).hub.stream(workflow)
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """The store is open and each cluster in use is reachable (or why not); 503 otherwise."""
    report = await run_in_threadpool(context(request).readiness)
    return JSONResponse(report, status_code=200 if report.get("ready") else 503)


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics_page() -> Response:
    """Prometheus metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from bridge.metrics import REGISTRY

    data = await asyncio.to_thread(generate_latest, REGISTRY)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/webhooks/dead", tags=["webhooks"])
async def dead_letters(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0
                       ) -> list[dict[str, Any]]:
    """Webhook deliveries that used all their attempts or grew too old."""
    ctx = context(request)
    if ctx.dead_letters is None:
        return []
    return await run_in_threadpool(ctx.dead_letters, limit, offset)


@router.post("/webhooks/dead/{delivery_id}/redeliver", status_code=202, tags=["webhooks"])
async def redeliver(request: Request,
                    delivery_id: Annotated[int, FPath(ge=1, le=MAX_ID)]) -> dict[str, Any]:
    """Send a dead-lettered delivery again (order per workflow and URL kept)."""
    ctx = context(request)
    ok = ctx.redeliver is not None and await run_in_threadpool(ctx.redeliver, delivery_id)
    if not ok:
        raise ServiceError(404, f"no dead-lettered delivery {delivery_id}",
                           [problem("delivery_id", "not in the dead letters")])
    return {"delivery_id": delivery_id, "message": "queued for delivery"}
