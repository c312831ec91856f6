"""Signed, short-lived links to a step's log (peak-sdk fetches ``downloadUrl`` with no auth
header): ``<payload>.<signature>``, the payload naming workflow, execution, step and expiry,
the signature an HMAC-SHA256 under a random per-daemon key kept in the state dir (0600), so
links survive a restart and no other daemon's key signs them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "peak-links.key"
KEY_BYTES = 32
TTL = 300
"""Seconds a link stays valid."""
MAX_TOKEN = 2048


class LinkError(Exception):
    """A token that is malformed, forged or expired (the message says which)."""


@dataclass(frozen=True)
class LogLink:
    """What a link grants: the log of ``step`` of one execution until ``expires`` (epoch s)."""

    workflow_id: int
    execution_id: str
    step: str
    expires: int


def load_key(state_dir: Path) -> bytes:
    """The daemon's link key, made on first use (written aside at mode 0600, then linked
    into place, so a reader never sees half a key and two daemons agree on one)."""
    path = state_dir / KEY_FILE
    if not path.exists():
        tmp = state_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise LinkError(f"{path} holds a key shorter than {KEY_BYTES} bytes")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, b"peak-log-link\0" + payload.encode(), hashlib.sha256).digest())


def sign(key: bytes, workflow_id: int, execution_id: str, step: str,
         ttl: int = TTL, now: float | None = None) -> str:
    """A token for the log of ``step``, valid ``ttl`` seconds from ``now``."""
    expires = int(now if now is not None else time.time()) + ttl
    payload = _b64(json.dumps([workflow_id, execution_id, step, expires],
                              separators=(",", ":")).encode())
    return f"{payload}.{_mac(key, payload)}"


def verify(key: bytes, token: str, now: float | None = None) -> LogLink:
    """The link a token grants; :class:`LinkError` if forged, malformed or expired."""
    payload, dot, signature = token.partition(".")
    if not dot or len(token) > MAX_TOKEN or not hmac.compare_digest(
            _mac(key, payload).encode(), signature.encode()):
        raise LinkError("the link's signature does not match")
    try:
        wf_id, ex_id, step, expires = json.loads(_unb64(payload))
    except (ValueError, TypeError) as exc:
        raise LinkError("the link is malformed") from exc
    if not (isinstance(wf_id, int) and isinstance(ex_id, str) and isinstance(step, str)
            and isinstance(expires, int)):
        raise LinkError("the link is malformed")
    if expires < (now if now is not None else time.time()):
        raise LinkError("the link has expired; ask …/logs/download for a new one")
    return LogLink(wf_id, ex_id, step, expires)


__all__ = ["KEY_FILE", "TTL", "LinkError", "LogLink", "load_key", "sign", "verify"]
