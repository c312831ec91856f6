"""The intake's fast path under load: the three AkoFlow POSTs answered without FastAPI's
request machinery when well-formed (bridge.api.akoflow.IntakeLane) and by the FastAPI routes
otherwise, with the same replies; a batch stored in a constant number of statements with ids
SQLite would have given; a batch's log lines in one write; checkpoints on a thread of their
own (bridge.store.Checkpointer)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from bridge import logs, metrics
from bridge.api import akoflow
from bridge.api.app import ApiContext, create_app
from bridge.runner import Bridge
from bridge.service import Service
from bridge.spec import parse_akoflow
from bridge.store import Checkpointer, Store
from runtimes.config import Clusters

ONE = "name: {name}\nspec:\n  runtime: local\n  activities:\n    - name: a\n      run: sleep 600\n"


def body(name: str = "lane", **extra: Any) -> dict[str, Any]:
    return {"workflow": base64.b64encode(ONE.format(name=name).encode()).decode(), **extra}


class Client:
    """A blocking client of the app in this process (httpx over ASGI, one event loop)."""

    def __init__(self, runner: asyncio.Runner, http: httpx.AsyncClient) -> None:
        self.runner, self.http = runner, http

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.runner.run(self.http.post(path, **kwargs))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = Store(tmp_path / "state.db")
    service = Service(Bridge(store, Clusters([]), tmp_path))
    ctx = ApiContext(service, tokenless_ports={80})  # the transport's server: testserver:80
    transport = httpx.ASGITransport(app=create_app(ctx))
    with asyncio.Runner() as runner:
        http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        yield Client(runner, http)
        runner.run(http.aclose())
    ctx.intake.close()


def requests_counted(route: str, code: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "akobridge_api_requests_total", {"method": "POST", "route": route, "code": code})
    return value or 0.0


def test_well_formed_posts_are_answered_without_the_fastapi_routes(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_here(*_args: Any) -> None:
        raise AssertionError("a well-formed intake request reached the FastAPI route")
    monkeypatch.setattr(akoflow, "_submit", not_here)
    before = requests_counted("/workflows", "201")

    r = client.post("/workflows", json=body("guide"))
    assert r.status_code == 201, r.text
    assert r.json() == {"id": r.json()["id"], "name": "guide", "message": akoflow.DEPLOYED}
    assert r.headers["content-type"] == "application/json"
    for path in ("/akoflow-server/workflow/", "/akoflow-api/workflows/"):
        r = client.post(path, json=body("engine"))
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"workflow_entity", "workflow_id", "message"}
        assert r.json()["workflow_entity"] == "engine"
    # the content type may carry a charset; the runtime extension is read
    r = client.post("/workflows", content=json.dumps(body("charset", runtime="local")),
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    # an Idempotency-Key still makes one workflow
    first = client.post("/workflows", json=body("keyed"), headers={"Idempotency-Key": "k-1"})
    again = client.post("/workflows", json=body("keyed"), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    # counted under the route's own label, as the routes are
    assert requests_counted("/workflows", "201") == before + 4


def test_the_lane_answers_a_bad_workflow_as_the_routes_do(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(akoflow, "_submit", lambda *_a: pytest.fail("reached the route"))
    r = client.post("/workflows", json={"workflow": "%%% not base64"})
    assert r.status_code == 400
    assert r.json()["detail"][0]["field"] == "workflow"
    bad = base64.b64encode(b"name: x\nspec:\n  activities: []\n").decode()
    r = client.post("/workflows", json={"workflow": bad})
    assert r.status_code == 422
    assert r.json()["error"] == "the workflow is not valid"


@pytest.mark.parametrize(("send", "status", "field"), [
    ({"json": body(runtime=5)}, 422, "runtime"),
    ({"json": {"name": "no workflow"}}, 422, "workflow"),
    ({"json": [body()]}, 422, "body"),
    ({"json": {"workflow": 12}}, 422, "workflow"),
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ({"json": body(), "headers": {"Idempotency-Key": "k" * 201}}, 422, "idempotency-key"),
])
def test_anything_not_plainly_well_formed_gets_the_routes_own_errors(
        client: Client, send: dict[str, Any], status: int, field: str) -> None:
    r = client.post("/workflows", **send)
    assert r.status_code == status, r.text
    reply = r.json()
    assert set(reply) == {"error", "detail"}
    assert any(d["field"] == field for d in reply["detail"]), reply


def test_another_content_type_goes_to_the_route_with_its_body(client: Client) -> None:
    r = client.post("/workflows", content=json.dumps(body()),
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 422, r.text  # FastAPI's answer, the body replayed to it
    assert r.json()["error"] == "the request is not valid"


# -- the store's side of a batch ------------------------------------------------------------
def workflows(n: int) -> list[Any]:
    return [parse_akoflow(ONE.format(name=f"w{i}")).workflow for i in range(n)]


def test_a_batch_is_stored_in_the_same_few_statements_whatever_its_size(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    counts = []
    for n in (1, 50):
        seen: list[str] = []
        store.db.set_trace_callback(seen.append)
        store.add_workflows([(wf, f"key-{n}-{i}", True) for i, wf in enumerate(workflows(n))])
        store.db.set_trace_callback(None)
        # a trigger's run is traced as its statement once more: count each statement once
        counts.append(sum(1 for i, sql in enumerate(seen) if i == 0 or sql != seen[i - 1]))
    assert counts[0] == counts[1] == 6, counts  # BEGIN, 2 SELECTs, 2 INSERTs, COMMIT
    assert store.db.execute("SELECT count(*) FROM activities").fetchone()[0] == 51


def test_ids_follow_sqlites_own_numbering_and_are_never_reused(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    other = Store(tmp_path / "state.db")
    ids = [i for i, _ in store.add_workflows([(wf, None, False) for wf in workflows(3)])]
    assert ids == [1, 2, 3]
    with store.transaction() as db:  # the newest one gone: its id is not given again
        db.execute("DELETE FROM activities WHERE workflow_id=3")
        db.execute("DELETE FROM workflows WHERE id=3")
    assert other.add_workflow(workflows(1)[0]) == 4  # one at a time, another connection
    ids = [i for i, _ in store.add_workflows([(wf, None, False) for wf in workflows(2)])]
    assert ids == [5, 6]
    rows = store.db.execute("SELECT w.id, count(a.id) FROM workflows w JOIN activities a"
                            " ON a.workflow_id = w.id GROUP BY w.id").fetchall()
    assert [tuple(r) for r in rows] == [(1, 1), (2, 1), (4, 1), (5, 1), (6, 1)]


def test_a_batchs_log_lines_are_written_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    class Counting(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            Counting.writes += 1
            return super().write(s)

    stream = Counting()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", json=True)
    log = structlog.get_logger("test")
    try:
        with logs.together():
            for i in range(5):
                log.info("workflow accepted", workflow=i)
            with logs.together():  # nested: the outer one writes
                log.info("inner")
            assert stream.getvalue() == ""
        assert Counting.writes == 1
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [ln.get("workflow") for ln in lines] == [0, 1, 2, 3, 4, None]
        log.info("alone")
        assert Counting.writes == 2
    finally:
        logs.configure("WARNING")


# -- checkpoints ----------------------------------------------------------------------------
def test_checkpoints_run_on_their_own_thread_while_a_checkpointer_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    checkpointer = Checkpointer(path)
    checkpointer.INTERVAL_S = 0.05
    checkpointer.start()
    try:
        store = Store(path)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        size = path.stat().st_size
        with store.transaction() as db:  # ~2,000 pages into the log; none into the file
            db.execute("CREATE TABLE filler (x BLOB)")
            db.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,)] * 2000)
        deadline = time.monotonic() + 10
        while path.stat().st_size < size + 4_000_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size >= size + 4_000_000  # copied by the checkpointer
    finally:
        checkpointer.stop()
    after = Store(path)  # no checkpointer: connections checkpoint themselves again
    assert after.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


def test_without_a_checkpointer_the_log_is_left_for_the_connections(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    store = Store(path)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
