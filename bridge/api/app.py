"""The HTTP API: one FastAPI app, a router per surface (AkoFlow, monitoring), errors as JSON
``{error, detail: [{field, message}]}``, bearer tokens, a body size limit, metrics."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any

import structlog
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import __version__, metrics
from bridge.api.stream import EventHub
from bridge.intake import GroupIntake
from bridge.peak.catalogue import EMPTY, Catalogue
from bridge.service import Service, ServiceError

log = structlog.get_logger("akobridge.api")

MAX_ID = 2**62
WorkflowId = Annotated[int, Path(ge=1, le=MAX_ID, description="A workflow id.")]

class Problem(BaseModel):
    """One thing wrong with a request: the field at fault (``""``: none) and why."""

    model_config = ConfigDict(extra="allow")
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error reply: ``{error, detail: [{field, message}]}``."""

    error: str
    detail: list[Problem]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the :class:`ErrorBody` shape."""
    return {s: {"model": ErrorBody, "description": _ERROR_TEXT.get(s, "Error")}
            for s in statuses}


_ERROR_TEXT = {400: "Bad JSON or base64", 401: "No or bad token", 404: "Not found",
               409: "Conflicts with the workflow's state", 413: "Body over api.max_body",
               422: "A field is not valid (each problem names its field)",
               502: "The cluster cannot be reached now", 503: "Not ready"}
COMMON_ERRORS = errors(400, 401, 404, 413, 422)
"""What any route can answer (bad JSON, token, unknown id, body size, validation)."""

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
"""Answered without a token: they tell nothing about workflows."""
UI_PREFIX = "/ui"
"""The monitoring page's static files (no data in them: every data call needs the token)."""
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
"""On every file of the page: nothing but its own files runs, it cannot be framed."""
SIGNED_LOG_PREFIX = "/workflows/api/v1/log-downloads/"
"""``GET <prefix><token>``: a step's log behind a signed, expiring token (peak-sdk fetches
``downloadUrl`` without an auth header); the route checks the token, so no token here."""


@dataclass
class ApiContext:
    """What the routes need: the service, the change hub, readiness and auth settings."""

    service: Service
    hub: EventHub = field(default_factory=EventHub)
    tokens: list[str] = field(default_factory=list)
    tokenless_ports: set[int] = field(default_factory=set)
    """TCP ports (loopback listeners) the config lets answer without a token."""
    max_body: int = 1024 * 1024
    readiness: Callable[[], dict[str, Any]] = dict
    dead_letters: Callable[[int, int], list[dict[str, Any]]] | None = None
    redeliver: Callable[[int], bool] | None = None
    catalogue: Catalogue = EMPTY
    """The Peak-style service's images and instance types (the config's ``peak:``)."""
    on_definition_change: Callable[[int], None] = lambda _wf_id: None
    """Called with a Peak definition's id after create, PUT, delete, pause and resume (the
    daemon re-reads its cron trigger)."""
    intake: GroupIntake = field(init=False)
    """The AkoFlow routes' submissions, stored by one writer in group commits."""

    def __post_init__(self) -> None:
        self.intake = GroupIntake(self.service)


def error_response(status: int, error: str, detail: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail or []}, status_code=status,
                        headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("query", "path")`` → ``path``; the whole body (``("body",)``) → ``body``."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts)


class BodyLimit:
    """413 for a body over ``limit`` bytes, whether announced by Content-Length or not."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen, refused = 0, False

        async def limited() -> Message:
            # Over the limit: answer 413 at once and tell the app the client left (raising
            # here would reach FastAPI's body parser, which turns any error into a 400).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # the app's own reply after the 413 is dropped
                await send(message)

        await self.app(scope, limited, guarded)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(413, f"request body over {self.limit} bytes",
                              [{"field": "body", "message": f"at most {self.limit} bytes"}])
        await resp(scope, receive, send)


class Guard:
    """Bearer tokens where the listener needs them, and the request counter by route and
    status (plain ASGI: FastAPI's ``@app.middleware`` costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a reply starts: an exception leaves through here

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            await (refusal or self.app)(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.API_REQUESTS.labels(scope["method"], path, str(status)).inc()

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        """The 401 for a request that needs a token and has no good one."""
        if (scope["path"] in PUBLIC_PATHS or _is_unix(scope) or _signed_link(scope)
                or _ui_file(scope)):
            return None
        server = scope.get("server") or ("", 0)
        if server[1] in self.ctx.tokenless_ports:
            return None
        given = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k == b"authorization"), "")
        scheme, _, token = given.partition(" ")
        if not token and scheme:  # the raw token, as peak-sdk sends it
            scheme, token = "bearer", scheme
        ok = scheme.lower() == "bearer" and bool(token) and any(
            hmac.compare_digest(token.strip().encode(), t.encode()) for t in self.ctx.tokens)
        if ok:
            return None
        why = "missing bearer token" if not given else "invalid token"
        return error_response(401, f"unauthorised: {why}", [
            {"field": "Authorization", "message": "send `Authorization: Bearer <token>` (or "
             "the raw token) with a token from the daemon's api.token_file"}],
            headers={"WWW-Authenticate": "Bearer"})


def _signed_link(scope: Scope) -> bool:
    """A GET of exactly one segment under :data:`SIGNED_LOG_PREFIX` (nothing deeper)."""
    path: str = scope["path"]
    rest = path[len(SIGNED_LOG_PREFIX):]
    return (scope["method"] == "GET" and path.startswith(SIGNED_LOG_PREFIX)
            and bool(rest) and "/" not in rest)


def _ui_file(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (
        path == UI_PREFIX or path.startswith(UI_PREFIX + "/"))


def _is_unix(scope: Scope) -> bool:
    server = scope.get("server")
    return server is None or not isinstance(server[1], int)


def create_app(ctx: ApiContext) -> FastAPI:
    """The app for one daemon (routers import lazily to keep this module small)."""
    from bridge.api import akoflow, monitoring, peak, peak_executions, peak_triggers

    app = FastAPI(title="akobridge", version=__version__,
                  description="AkoFlow-compatible intake, monitoring and webhooks of a Slurm "
                              "bridge. Errors are `{error, detail: [{field, message}]}`.",
                  redoc_url=None)
    app.state.ctx = ctx

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the body is not valid JSON", [
                {"field": "body", "message": str(e.get("ctx", {}).get("error", e["msg"]))}
                for e in errors if e.get("type") == "json_invalid"])
        return error_response(422, "the request is not valid", [
            {"field": _field(e["loc"]), "message": e["msg"]} for e in errors])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), [],
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", path=req.url.path)
        return error_response(500, "internal error (logged by the daemon)")

    # routes match in this order: the AkoFlow intake first (the busiest; its paths are
    # exact), Peak executions before monitoring (/workflows/executions/{id} would
    # otherwise reach /workflows/{id})
    app.include_router(akoflow.router, responses=COMMON_ERRORS)
    app.include_router(peak_executions.router, responses=COMMON_ERRORS)
    app.include_router(peak_triggers.router, responses=COMMON_ERRORS)
    app.include_router(peak.router, responses=COMMON_ERRORS)
    app.include_router(peak.side_router)
    app.include_router(monitoring.router, responses=COMMON_ERRORS)
    _mount_ui(app)
    intake_routes = {r.path: r for r in akoflow.router.routes
                     if isinstance(r, APIRoute) and "POST" in (r.methods or ())}
    app.add_middleware(akoflow.IntakeLane, ctx=ctx, routes=intake_routes)
    app.add_middleware(Guard, ctx=ctx)
    app.add_middleware(BodyLimit, limit=ctx.max_body)
    return app


def _mount_ui(app: FastAPI) -> None:
    """``/ui/``: the monitoring page shipped in the package (``/ui`` redirects there)."""
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.responses import Response

    static = FilePath(__file__).resolve().parent.parent / "ui" / "static"

    @app.get(UI_PREFIX, include_in_schema=False)
    async def _ui_root() -> RedirectResponse:
        return RedirectResponse(UI_PREFIX + "/")

    if not (static / "index.html").is_file():  # a broken install: say so, never a 500
        log.warning("monitoring page not installed", missing=str(static))

        @app.get(UI_PREFIX + "/{rest:path}", include_in_schema=False)
        async def _no_ui(rest: str) -> JSONResponse:
            return error_response(404, "the monitoring page is not installed", [
                {"field": "path", "message": f"{static} has no index.html: reinstall "
                 "akoflow-bridge"}])
        return
    class UiFiles(StaticFiles):
        async def get_response(self, path: str, scope: Scope) -> Response:
            reply = await super().get_response(path, scope)
            reply.headers.update(UI_HEADERS)
            return reply

    app.mount(UI_PREFIX + "/", UiFiles(directory=static, html=True), name="ui")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
