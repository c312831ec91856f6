"""One owner per state directory: an exclusive ``flock`` on ``<state>/owner.lock``.

The process that drives workflows (``run``, ``resume``, ``retry``, ``cancel`` without an
owner, later ``serve``) holds the lock for its whole life and records who it is in
``<state>/owner.json`` (pid, command, start time, and for the daemon how to reach its API).
Every other process on that state dir is a client: it reads the record to say who owns the
directory. The kernel releases the lock when the owner dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCK_FILE = "owner.lock"
OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class OwnerInfo:
    """Who holds a state directory."""

    pid: int | None
    command: str
    since: str
    api: str | None = None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        what = f" ({self.command})" if self.command else ""
        return f"{who}{what}, since {self.since}" if self.since else f"{who}{what}"


class StateDirBusy(RuntimeError):
    """Another process owns the state directory."""

    def __init__(self, state_dir: Path, owner: OwnerInfo) -> None:
        self.state_dir, self.owner = state_dir, owner
        super().__init__(
            f"state dir {state_dir} is in use by {owner.describe()}: one process drives a "
            "state dir at a time. Wait for it to finish, follow it with `akobridge status`, "
            "or use another --state-dir"
        )


def read_owner(state_dir: Path) -> OwnerInfo | None:
    """The recorded owner if a live process holds the lock, else ``None``."""
    lock = state_dir / LOCK_FILE
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _recorded(state_dir)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _recorded(state_dir: Path) -> OwnerInfo:
    try:
        data: dict[str, Any] = json.loads((state_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        data = {}
    pid = data.get("pid")
    return OwnerInfo(pid if isinstance(pid, int) else None, str(data.get("command", "")),
                     str(data.get("since", "")), data.get("api"))


class StateDirLock:
    """Hold the state directory for this process (a context manager; released on exit)."""

    def __init__(self, state_dir: Path, command: str | None = None,
                 api: str | None = None) -> None:
        self.state_dir = state_dir
        self.command = command if command is not None else " ".join(
            ["akobridge", *sys.argv[1:]])[:200]
        self.api = api
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusy(self.state_dir, _recorded(self.state_dir)) from None
        self._fd = fd
        record = {"pid": os.getpid(), "command": self.command,
                  "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "api": self.api}
        tmp = self.state_dir / f".{OWNER_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.state_dir / OWNER_FILE)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.state_dir / OWNER_FILE).unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
