"""The daemon the browser tests drive, one per test module: a token required even on
loopback, the test Slurm (``devslurm``) beside ``local``, the shipped Peak catalogue,
webhooks tried once. Running workflows are cancelled (and waited for) at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from daemon_helpers import running_daemon
from test_peak_definitions_api import SHIPPED_PEAK

from conftest import lab_cluster
from ui.browser import Api

TOKEN = "ui-browser-" + "t" * 28


@contextmanager
def ui_daemon(tmp: Path) -> Iterator[Api]:
    clusters = tmp / "clusters"
    clusters.mkdir()
    (clusters / "devslurm.yaml").write_text(yaml.safe_dump(
        lab_cluster("local", tmp).model_dump(mode="json", exclude_none=True)))
    tokens = tmp / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    config = {"api": {"allow_loopback_without_token": False, "token_file": str(tokens)},
              "webhooks": {"attempts": 1}, "peak": SHIPPED_PEAK}
    with running_daemon(tmp, config) as daemon:
        client = Api(daemon.url, TOKEN)
        yield client
        running = client.http.get("/workflows", params={"state": "RUNNING", "limit": 1000})
        for w in running.json()["items"]:  # local sleeps would outlive the daemon
            client.cancel(w["id"])
        deadline = time.monotonic() + 60  # a 2,000-activity workflow takes ~12 s to cancel
        while client.http.get("/workflows", params={"state": "RUNNING"}).json()["total"]:
            assert time.monotonic() < deadline, "workflows still running at the end"
            time.sleep(0.5)
        client.http.close()


__all__ = ["TOKEN", "ui_daemon"]
