"""A real ``akobridge serve`` for tests: ``with running_daemon(tmp_path) as d: httpx.get(d.url)``.

The daemon listens on 127.0.0.1 with a free port and no token (``allow_loopback_without_token``),
keeps its state in ``tmp_path/state`` and uses ``tmp_path/clusters`` as its clusters dir (empty:
only the built-in ``local`` cluster). It is stopped with SIGTERM on leaving the block, and the
block fails if it did not exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml


@dataclass
class Daemon:
    """A running daemon: ``url`` (``http://127.0.0.1:PORT``), its ``state`` dir, the process
    and its combined output in ``log``."""

    url: str
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def db(self) -> Path:
        """The daemon's SQLite store."""
        from bridge.config import DB_NAME

        return self.state / DB_NAME

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@contextmanager
def running_daemon(tmp_path: Path, extra_config: dict[str, Any] | None = None,
                   env: dict[str, str] | None = None, timeout: float = 30.0) -> Iterator[Daemon]:
    """Start ``akobridge serve`` (config: TCP loopback API, ``extra_config`` merged in, nested
    dicts key by key) and yield it once ``/healthz`` answers; SIGTERM at the end (exit 0)."""
    clusters, state = tmp_path / "clusters", tmp_path / "state"
    clusters.mkdir(exist_ok=True)
    config = _merge({"clusters_dir": str(clusters),
                     "api": {"listen": ["127.0.0.1:0"], "allow_loopback_without_token": True}},
                    extra_config or {})
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(cfg),
             "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    daemon = Daemon("", state, proc, log)
    try:
        daemon.url = _wait_ready(daemon, timeout)
        yield daemon
    finally:
        code = daemon.stop()
    assert code == 0, f"akobridge serve exited {code}:\n{daemon.output()}"


def _wait_ready(daemon: Daemon, timeout: float) -> str:
    owner = daemon.state / "owner.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, f"akobridge serve ended:\n{daemon.output()}"
        try:
            record = json.loads(owner.read_text())
            if record.get("pid") == daemon.proc.pid and str(record.get("api", "")).startswith(
                    "http"):
                url = str(record["api"])
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"akobridge serve did not answer /healthz:\n{daemon.output()}")


__all__ = ["Daemon", "running_daemon"]
