"""A Python client of the daemon's Peak-style service (``/workflows/api/v1``) with the method
names and keyword arguments of seeds/peak-workflows-sdk.txt, over httpx.

Every call sends a fresh ``x-peak-requestId`` and is retried on a connection error or a
429/500/502/503/504 reply (up to :data:`RETRIES` times, ``Retry-After`` honoured) with the *same*
request id, so a retried ``create_workflow`` or ``execute_workflow`` makes one workflow or one
execution: the service is idempotent per request id. List methods return page iterators that
yield each page's reply, pages ``page_number``..``pageCount``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from bridge.peak.definition import parse_definition
from bridge.peak.patch import apply_patch

BASE_PATH = "/workflows/api/v1"
RETRIES = 3
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
DEFINITION_KEYS = ("name", "tags", "triggers", "watchers", "retryOptions", "metadata", "steps")


class PeakApiError(RuntimeError):
    """The service refused a call: HTTP ``status``, its ``error`` and ``detail``
    (``[{field, message}]``); ``status`` 0 when no reply came at all."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]]) -> None:
        self.status, self.error, self.detail = status, error, detail
        parts = [f"{d.get('field')}: {d.get('message')}" if d.get("field")
                 else str(d.get("message")) for d in detail]
        text = f"HTTP {status}: {error}" if status else error
        super().__init__("; ".join([text, *parts]))


def _error_of(resp: httpx.Response) -> PeakApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return PeakApiError(resp.status_code, resp.reason_phrase or "error", [])
    detail = body.get("detail")
    if isinstance(detail, str):  # FastAPI's own errors
        detail = [{"message": detail}]
    items = [d if isinstance(d, dict) else {"message": str(d)} for d in detail or []]
    return PeakApiError(resp.status_code, str(body.get("error") or body.get("message")
                                             or resp.reason_phrase), items)


def _retry_delay(resp: httpx.Response | None, attempt: int, backoff: float) -> float:
    header = resp.headers.get("Retry-After") if resp is not None else None
    if header and header.strip().isdigit():
        return min(float(header), MAX_RETRY_AFTER)
    return float(backoff * 2 ** attempt)


def definition_of(described: Mapping[str, Any]) -> dict[str, Any]:
    """A describe reply as a definition body again: its definition keys only, each step's
    ``parameters.env`` folded back into a map, a minted webhook id back to ``true``."""
    body = {k: described[k] for k in DEFINITION_KEYS if k in described}
    body["triggers"] = [{"webhook": True} if "webhook" in t else
                        {k: v for k, v in t.items() if k == "cron"}
                        for t in body.get("triggers") or []]
    steps = {}
    for name, step in dict(body.get("steps") or {}).items():
        step = {k: v for k, v in step.items() if k not in ("imageName", "imageVersion")}
        params = step.get("parameters")
        if isinstance(params, dict) and isinstance(params.get("env"), list):
            env: dict[str, Any] = {}
            for pair in params["env"]:
                env.update(pair)
            step["parameters"] = {**params, "env": env}
        steps[name] = step
    body["steps"] = steps
    return body


class WorkflowClient:
    """Calls to one daemon: ``base_url`` is ``http://host:port`` (a trailing
    ``/workflows/api/v1`` is dropped) or ``unix:/path/api.sock``; or give ``unix_socket``.
    ``token`` is sent as ``Authorization: Bearer``."""

    def __init__(self, base_url: str | None = None, token: str | None = None, *,
                 unix_socket: str | None = None, timeout: float = 30.0, retries: int = RETRIES,
                 backoff: float = 0.5, transport: httpx.BaseTransport | None = None) -> None:
        if base_url and base_url.startswith("unix:"):
            unix_socket, base_url = base_url[len("unix:"):], None
        if unix_socket:
            transport = transport or httpx.HTTPTransport(uds=unix_socket)
            base_url = "http://akobridge"
        if not base_url:
            raise ValueError("give base_url (http://host:port or unix:/path) or unix_socket")
        base = base_url.rstrip("/").removesuffix(BASE_PATH)
        self.address = f"unix:{unix_socket}" if unix_socket else base
        self.token, self.retries, self.backoff = token, retries, backoff
        self.http = httpx.Client(base_url=base, timeout=timeout, transport=transport,
                                 headers={"User-Agent": "akobridge-workflows-client"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WorkflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None) -> Any:
        """One call under ``/workflows/api/v1`` (``None`` params dropped), retried with the
        same request id; the reply's JSON, or :class:`PeakApiError`."""
        headers = {"x-peak-requestId": str(uuid.uuid4())}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        json_body = (body if body is not None else {}) if method in ("POST", "PUT") else None
        for attempt in range(self.retries + 1):
            resp: httpx.Response | None = None
            try:
                resp = self.http.request(method, BASE_PATH + path, params=query,
                                         json=json_body, headers=headers)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise PeakApiError(0, f"no reply from {self.address}: {exc}", []) from None
            if resp is not None and (resp.status_code not in RETRY_STATUSES
                                     or attempt == self.retries):
                break
            time.sleep(_retry_delay(resp, attempt, self.backoff))
        assert resp is not None
        if resp.status_code >= 400:
            raise _error_of(resp)
        try:
            return resp.json()
        except ValueError:
            return {}

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        number = int(params.pop("pageNumber", None) or 1)
        while True:
            page: dict[str, Any] = self.request("GET", path, params={**params,
                                                                    "pageNumber": number})
            yield page
            number += 1
            if number > int(page["pageCount"]):
                return

    # -- definitions ---------------------------------------------------------------------------
    def list_workflows(self, workflow_status: list[str] | None = None,
                       last_execution_status: list[str] | None = None,
                       last_modified_by: list[str] | None = None, page_size: int | None = None,
                       page_number: int | None = None, name: str | None = None
                       ) -> Iterator[dict[str, Any]]:
        """Pages of ``{pageCount, pageNumber, pageSize, workflows, workflowsCount}``."""
        return self._pages("/workflows/", {
            "workflowStatus": workflow_status, "lastExecutionStatus": last_execution_status,
            "lastModifiedBy": last_modified_by, "pageSize": page_size,
            "pageNumber": page_number, "searchTerm": name})

    def create_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{id, triggers}`` of the new definition."""
        result: dict[str, Any] = self.request("POST", "/workflows/", body=body)
        return result

    def update_workflow(self, workflow_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a definition (PUT): ``{id, triggers}``."""
        result: dict[str, Any] = self.request("PUT", f"/workflows/{workflow_id}", body=body)
        return result

    def patch_workflow(self, workflow_id: int, body: dict[str, Any] | None = None,
                       step_names: list[str] | None = None, **flags: Any) -> dict[str, Any]:
        """Describe, merge ``body`` and the flags (``name``, ``image_id``,
        ``instance_type_id``, ... for ``step_names`` or every step) as
        :func:`bridge.peak.patch.apply_patch` does, then PUT. A patch that leaves an invalid
        definition raises :class:`bridge.peak.DefinitionError` before anything is sent."""
        existing = parse_definition(definition_of(self.describe_workflow(workflow_id)))
        patched = apply_patch(existing, body or {}, flags=flags, step_names=step_names)
        return self.update_workflow(workflow_id, patched.to_body())

    def create_or_update_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT over the definition of exactly ``body["name"]``, else create it."""
        name = body.get("name")
        for page in self.list_workflows(name=name, page_size=100):
            for wf in page.get("workflows", []):
                if wf.get("name") == name:
                    return self.update_workflow(int(wf["id"]), body)
        return self.create_workflow(body)

    def describe_workflow(self, workflow_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/workflows/{workflow_id}")
        return result

    def delete_workflow(self, workflow_id: int) -> dict[str, Any]:
        """``{}``; a 409 while one of its executions runs."""
        result: dict[str, Any] = self.request("DELETE", f"/workflows/{workflow_id}")
        return result

    def pause_workflow(self, workflow_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/workflows/{workflow_id}/pause")
        return result

    def resume_workflow(self, workflow_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/workflows/{workflow_id}/resume")
        return result

    # -- executions ----------------------------------------------------------------------------
    def execute_workflow(self, workflow_id: int, body: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """``{executionId}``; ``body`` is ``{params: {global, stepWise}, stepsToRun}``."""
        result: dict[str, Any] = self.request("POST", f"/workflows/{workflow_id}/execute",
                                              body=body)
        return result

    def list_executions(self, workflow_id: int, date_from: str | None = None,
                        date_to: str | None = None, status: list[str] | None = None,
                        count: int | None = None, page_size: int | None = None,
                        page_number: int | None = None) -> Iterator[dict[str, Any]]:
        """Pages of ``{executions, pageSize, pageNumber, pageCount, workflowId,
        executionCount}``, newest first."""
        return self._pages(f"/workflows/executions/{workflow_id}", {
            "dateFrom": date_from, "dateTo": date_to, "statuses": status, "count": count,
            "pageSize": page_size, "pageNumber": page_number})

    def get_execution_details(self, workflow_id: int, execution_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/workflows/{workflow_id}/executions/{execution_id}")
        return result

    def get_execution_logs(self, workflow_id: int, execution_id: str, step_name: str,
                           next_token: str | None = None, save: bool = False,
                           file_name: str | None = None) -> dict[str, Any] | None:
        """A page ``{logs, nextToken, stepRunStatus}``; with ``save`` the step's whole log is
        written to ``file_name`` (default ``workflow_execution_logs_<id>_<exec>_<step>.log``)
        through the signed ``downloadUrl``, and ``None`` is returned."""
        path = f"/workflows/{workflow_id}/executions/{execution_id}/logs"
        if not save:
            page: dict[str, Any] = self.request("GET", path, params={
                "stepName": step_name, "nextToken": next_token})
            return page
        link = self.request("GET", f"{path}/download", params={"stepName": step_name})
        resp = self.http.get(str(link["downloadUrl"]))  # signed: no auth header
        if resp.status_code >= 400:
            raise _error_of(resp)
        target = file_name or f"workflow_execution_logs_{workflow_id}_{execution_id}_" \
                              f"{step_name}.log"
        Path(target).write_bytes(resp.content)
        return None

    def stop_execution(self, workflow_id: int, execution_id: str) -> dict[str, Any]:
        """``{}``; the execution shows ``Stopping`` until its jobs are cancelled."""
        result: dict[str, Any] = self.request(
            "POST", f"/workflows/{workflow_id}/executions/{execution_id}/stop")
        return result

    # -- resources -----------------------------------------------------------------------------
    def list_resources(self) -> list[dict[str, Any]]:
        """``[{id, cpu, memory, gpu, gpuMemory}]``."""
        result: list[dict[str, Any]] = self.request("GET", "/resources")
        return result

    def get_default_resource(self) -> dict[str, Any]:
        """``{instanceTypeId, storage}``."""
        result: dict[str, Any] = self.request("GET", "/resources/defaults")
        return result


__all__ = ["PeakApiError", "WorkflowClient", "definition_of"]
