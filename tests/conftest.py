"""Shared fixtures: the real test Slurm cluster, a real HTTP webhook receiver, bridges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from runtimes.config import ClusterConfig, Clusters, load_cluster

# A suite started in the background by a shell without job control (`cmd &`, nohup, some CI
# runners) inherits SIGINT ignored, and so would every `akobridge run` the tests start: their
# Ctrl-C tests would see the signal do nothing. Give the children the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
LAB = Path(os.environ.get("AKB_LAB", "/var/tmp/akb-lab"))
SLURM_CONF = str(LAB / "slurm.conf")
STANDIN_BIN = REPO / "tests" / "standin"


def slurm_env() -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": SLURM_CONF}


def slurm(*argv: str) -> str:
    """Run a Slurm client command against the test cluster; its stdout."""
    res = subprocess.run(argv, capture_output=True, text=True, env=slurm_env(), check=True)
    return res.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """The real single-node Slurm from tests/cluster/setup.sh (fails loudly if it is down)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             env=slurm_env(), timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"no test Slurm cluster ({exc}): run `bash tests/cluster/setup.sh` first")
    if out.returncode != 0 or not out.stdout.strip():
        pytest.fail(f"test Slurm cluster not answering: {out.stderr.strip()} — "
                    "run `bash tests/cluster/setup.sh` first")
    return LAB


def lab_cluster(transport: str, tmp_path: Path) -> ClusterConfig:
    """The test cluster's config for ``transport`` (configs/devslurm*.yaml), job directories
    under this test's tmp dir and short poll intervals."""
    name = "devslurm.yaml" if transport == "local" else "devslurm-ssh.yaml"
    base = load_cluster(REPO / "configs" / name)
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    return base.model_copy(update={
        "name": "devslurm",  # the same name over both transports: tests read runtimes by it
        "workdir": str(jobs),
        "env": {**base.env, "SLURM_CONF": SLURM_CONF},
        "slurm": base.slurm.model_copy(update={"poll_interval": 0.5, "marker_interval": 0.2}),
    })


@pytest.fixture(params=["local", "ssh"])
def devslurm(request: pytest.FixtureRequest, slurm_cluster: Path,
             tmp_path: Path) -> ClusterConfig:
    """The test cluster over the local transport, then over SSH: the same test code."""
    return lab_cluster(request.param, tmp_path)


@pytest.fixture()
def devslurm_local(slurm_cluster: Path, tmp_path: Path) -> ClusterConfig:
    return lab_cluster("local", tmp_path)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST (optionally failing some)."""

    url: str
    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0
    seen: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.body.get("type") == type_]


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rec.cond:
                rec.seen += 1
                if rec.seen <= rec.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                rec.requests.append(Received(self.path, dict(self.headers), json.loads(body)))
                rec.cond.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@dataclass
class Harness:
    """A bridge on a fresh store, driving one cluster config."""

    bridge: Bridge
    store: Store
    cluster: ClusterConfig

    def submit(self, yaml_text: str) -> int:
        wf = parse_akoflow(yaml_text).workflow
        return self.bridge.submit(wf.model_copy(update={"runtime": self.cluster.name}))

    def run(self, wf_id: int, timeout: float = 240.0,
            on_cycle: Callable[[], None] | None = None) -> None:
        self.bridge.run([wf_id], idle_s=0.05, timeout_s=timeout, on_cycle=on_cycle)

    def states(self, wf_id: int) -> dict[str, str]:
        return {a.name: a.state.value for a in self.store.activities(wf_id)}

    def deliver_all(self, timeout: float = 30.0) -> None:
        from bridge.events import Deliverer, DeliveryPolicy

        deliverer = Deliverer(self.store, DeliveryPolicy(first_delay_s=0.05, max_delay_s=0.2))
        deadline = time.monotonic() + timeout
        while self.store.pending_deliveries() and time.monotonic() < deadline:
            deliverer.deliver_due()
            time.sleep(0.02)
        deliverer.client.close()


@pytest.fixture()
def harness(tmp_path: Path) -> Iterator[Callable[[ClusterConfig], Harness]]:
    made: list[Harness] = []

    def make(cluster: ClusterConfig) -> Harness:
        state = tmp_path / f"state{len(made)}"
        store = Store(state / "akobridge.db")
        bridge = Bridge(store, Clusters([cluster]), state)
        h = Harness(bridge, store, cluster)
        made.append(h)
        return h

    yield make
    for h in made:
        h.bridge.close()
        h.store.close()
