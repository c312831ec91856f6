"""A client of a daemon's API (``akobridge submit``, and the CLI commands when a daemon owns
the state dir). Addresses are ``unix:/path/api.sock`` or ``http://host:port``; a token comes
from ``--token-file`` or ``AKOBRIDGE_TOKEN``."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import httpx

from bridge.peak.client import WorkflowClient as WorkflowClient

TOKEN_ENV = "AKOBRIDGE_TOKEN"  # noqa: S105 - the variable name, not a token


class ApiError(RuntimeError):
    """The daemon refused a request (``status``, its JSON ``error`` and ``detail``)."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]]) -> None:
        self.status, self.error, self.detail = status, error, detail
        lines = [error] + [f"{d.get('field')}: {d.get('message')}" if d.get("field")
                           else str(d.get("message")) for d in detail]
        super().__init__("\n".join(lines))


class Unreachable(RuntimeError):
    """No daemon answers at the address."""


def read_token(token_file: Path | None = None) -> str | None:
    if token_file is not None:
        lines = [ln.strip() for ln in token_file.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
        return lines[0] if lines else None
    return os.environ.get(TOKEN_ENV) or None


class Client:
    """Synchronous calls to one daemon."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"User-Agent": "akobridge-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if address.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=address[len("unix:"):])
            self.http = httpx.Client(transport=transport, base_url="http://akobridge",
                                     headers=headers, timeout=timeout)
        else:
            base = address.rstrip("/")
            base = base.removesuffix("/workflows")
            self.http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
        self.address = address

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"no daemon answers at {self.address}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                raise ApiError(resp.status_code, str(body.get("error")),
                               list(body.get("detail") or []))
            except (ValueError, AttributeError):
                raise ApiError(resp.status_code, f"HTTP {resp.status_code}", []) from None
        return resp.json()

    # -- the calls ------------------------------------------------------------------------------
    def submit(self, text: str, runtime: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"workflow": base64.b64encode(text.encode()).decode()}
        if runtime:
            body["runtime"] = runtime
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self.call("POST", "/workflows", json=body, headers=headers)
        return result

    def cancel(self, wf_id: int, names: list[str] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/workflows/{wf_id}/cancel",
                                           json={"activities": names} if names else None)
        return result

    def retry(self, wf_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/workflows/{wf_id}/retry")
        return result

    def log(self, wf_id: int, name: str, stream: str, offset: int = 0,
            attempt: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"stream": stream, "offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        result: dict[str, Any] = self.call(
            "GET", f"/workflows/{wf_id}/activities/{name}/logs", params=params)
        return result

    def read_all(self, wf_id: int, name: str, stream: str, attempt: int | None) -> bytes:
        """The whole log of an attempt (paged)."""
        out, offset = [], 0
        while True:
            page = self.log(wf_id, name, stream, offset, attempt)
            out.append(page["data"].encode())
            if page["next"] >= page["size"] or page["next"] == offset:
                return b"".join(out)
            offset = page["next"]
