"""Peak triggers on real ``akobridge serve`` processes: an every-minute cron starts one
execution per slot, pause keeps a slot from firing and resume brings them back, kill -9 and a
restart rebuild the schedule from the store with no burst of missed runs (and a slot fired
again after a restart within the grace starts nothing twice); webhook triggers start exactly
one execution per request id, 404 for an unknown webhook, 409 while paused.

The cron test follows the real clock over two minute boundaries (T0, T1) with two daemons at
once, so it takes 70-130 s; the slots are read from the store's request ids
(``cron:<id>:<slot>``). The catch-up test keeps two daemons (``peak.cron_catch_up`` off and
on) down across two slots, 80-140 s."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_helpers import Daemon, _wait_ready
from test_peak_definitions_api import SHIPPED_PEAK, TOKEN, Api, peak_daemon

from bridge.config import DB_NAME
from bridge.peak.cron import cron_trigger
from bridge.peak.triggers import MISFIRE_GRACE_S, latest_slot

EVERY_MINUTE = [{"cron": "* * * * *"}]


def definition(name: str, triggers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "triggers": triggers, "steps": {"tick": {
        "type": "standard", "imageId": 123, "imageVersionId": 1, "command": "echo tick",
        "resources": {"instanceTypeId": 21}}}}


class Restartable:
    """A daemon on a fixed state dir that can be killed with SIGKILL and started again."""

    def __init__(self, tmp: Path, peak: dict[str, Any] | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "clusters").mkdir(exist_ok=True)
        tokens = tmp / "tokens"
        tokens.write_text(f"{TOKEN}\n")
        tokens.chmod(0o600)
        self.cfg = tmp / "bridge.yaml"
        self.cfg.write_text(yaml.safe_dump({
            "clusters_dir": str(tmp / "clusters"), "peak": {**SHIPPED_PEAK, **(peak or {})},
            "api": {"listen": ["127.0.0.1:0"], "token_file": str(tokens)}}))
        self.state, self.log = tmp / "state", tmp / "serve.log"
        self.db = self.state / DB_NAME
        self.daemon: Daemon | None = None
        self.api: Api | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve", "--config", str(self.cfg),
                 "--state-dir", str(self.state)], stdout=out, stderr=subprocess.STDOUT)
        self.daemon = Daemon("", self.state, proc, self.log)
        return proc

    def ready(self) -> Api:
        assert self.daemon is not None
        self.daemon.url = _wait_ready(self.daemon, 30)
        self.api = Api(self.daemon)
        return self.api

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.kill()
        self.daemon.proc.wait(10)

    def stop(self) -> int:
        assert self.daemon is not None
        return self.daemon.stop()

    def fired(self, wf_id: int) -> list[dict[str, Any]]:
        """The daemon's ``cron fired`` log records of ``wf_id``, all runs of it."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"cron fired"' in line:
                record = json.loads(line)
                if record.get("workflow") == wf_id:
                    found.append(record)
        return found


def runs(db: Path, wf_id: int) -> list[tuple[str, str]]:
    """``(request id, trigger)`` of each execution of ``wf_id``, oldest first."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(str(r[0]), str(r[1])) for r in conn.execute(
            "SELECT request_id, trigger FROM peak_executions WHERE peak_workflow_id=?"
            " ORDER BY created_at", (wf_id,))]


def slot(wf_id: int, at: float) -> str:
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"cron:{wf_id}:{when}"


def sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


def wait_for(check: Callable[[], bool], until: float, what: str) -> None:
    while time.time() < until:
        if check():
            return
        time.sleep(0.2)
    assert check(), what


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[tuple[Restartable, Restartable]]:
    x, y = Restartable(tmp_path / "x"), Restartable(tmp_path / "y")
    x.launch(), y.launch()
    x.ready(), y.ready()
    yield x, y
    codes = {}
    for d in (x, y):
        if d.daemon is not None and d.daemon.proc.poll() is None:
            codes[d.log] = d.stop()
    assert all(c == 0 for c in codes.values()), codes


def test_cron_fires_each_slot_pause_resume_and_restarts(
        pair: tuple[Restartable, Restartable]) -> None:
    x, y = pair
    assert x.api is not None and y.api is not None
    if 60 - time.time() % 60 < 8:  # room before the boundary for the set-up
        sleep_until((time.time() // 60 + 1) * 60 + 0.5)
    t0 = (time.time() // 60 + 1) * 60
    a = x.api.create(definition("cron-a", EVERY_MINUTE))
    b = x.api.create(definition("cron-b", EVERY_MINUTE))
    assert x.api.call("POST", f"/workflows/{b}/pause").status_code == 200
    c = y.api.create(definition("cron-c", EVERY_MINUTE))
    y.kill9()  # down across T0
    assert time.time() < t0 - 1, "the set-up ran into the boundary"
    listed = {w["id"]: w for w in x.api.call("GET", "/workflows/").json()["workflows"]}
    assert listed[a]["triggers"][0]["scheduled"].startswith(
        datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%dT%H:%M:00"))

    # T0: A fires once, paused B does not
    wait_for(lambda: len(runs(x.db, a)) >= 1, t0 + 10, "A did not fire")
    sleep_until(t0 + 3)
    db_x, db_y = x.db, y.db
    assert runs(db_x, a) == [(slot(a, t0), "cron")]
    assert runs(db_x, b) == [], "a paused workflow fired"
    listing = x.api.call("GET", f"/workflows/executions/{a}").json()
    assert listing["executionCount"] == 1

    # resume B, then kill -9 X and restart it within the grace: slot T0 of A fires again and
    # starts nothing new; B (resumed after T0) does not catch up on T0
    assert x.api.call("POST", f"/workflows/{b}/resume").status_code == 200
    x.kill9()
    x.launch()
    x.ready()
    restarted = time.time()
    if restarted < t0 + MISFIRE_GRACE_S - 2:
        wait_for(lambda: len(x.fired(a)) >= 2, t0 + MISFIRE_GRACE_S + 3,
                 "slot T0 was not fired again after a restart within the grace")
        assert {r["execution"] for r in x.fired(a)} == {
            x.fired(a)[0]["execution"]}, "the same slot started a second execution"
    assert runs(db_x, a) == [(slot(a, t0), "cron")]
    assert runs(db_x, b) == []

    # Y was down across T0; restarted after the grace it does not fire the missed slot
    sleep_until(t0 + MISFIRE_GRACE_S + 1)
    y.launch()
    y.ready()
    time.sleep(3)
    assert runs(db_y, c) == [], "a slot missed during downtime was fired after the restart"
    assert any('"cron triggers scheduled"' in line and '"jobs": 1' in line
               for line in y.log.read_text().splitlines())

    # T1: A, resumed B and restarted Y's C each fire once
    t1 = t0 + 60
    wait_for(lambda: all(runs(db, w) and runs(db, w)[-1][0] == slot(w, t1)
                         for db, w in ((db_x, a), (db_x, b), (db_y, c))),
             t1 + 15, "a slot of T1 did not fire")
    time.sleep(2)
    assert [r for r, _ in runs(db_x, a)] == [slot(a, t0), slot(a, t1)]
    assert [r for r, _ in runs(db_x, b)] == [slot(b, t1)]
    assert [r for r, _ in runs(db_y, c)] == [slot(c, t1)]


@pytest.mark.parametrize(("expr", "back_s", "latest"), [
    ("* * * * *", 3600, "2026-12-03T17:03"), ("0 * * * *", 3600, "2026-12-03T17:00"),
    ("0 * * * *", 200, None), ("*/7 * * * *", 7 * 86400, "2026-12-03T17:00"),
    ("0 0 1 * 1", 7 * 86400, "2026-12-01T00:00"),  # the 1st or a Monday: Tue 1 Dec
    ("30 17 * * *", 86400, "2026-12-02T17:30")])
def test_latest_slot_in_a_window(expr: str, back_s: int, latest: str | None) -> None:
    now = datetime(2026, 12, 3, 17, 3, 24, 500000, UTC)
    found = latest_slot(cron_trigger(expr), now - timedelta(seconds=back_s), now)
    assert (found.strftime("%Y-%m-%dT%H:%M") if found else None) == latest
    assert latest_slot(cron_trigger("* * * * *"), now, now) is None  # 17:04 is after now


def test_cron_catch_up_runs_one_missed_slot_only_when_configured(tmp_path: Path) -> None:
    """Two daemons down across slots T0 and T1 and started after T1's 15 s: with the default
    (catch-up off) neither slot runs; with ``cron_catch_up: true`` exactly one execution
    runs, for T1 (the two coalesced), and a second restart starts nothing more."""
    off = Restartable(tmp_path / "off")
    on = Restartable(tmp_path / "on", {"cron_catch_up": True, "cron_catch_up_grace": "1h"})
    daemons = (off, on)
    try:
        for d in daemons:
            d.launch()
        for d in daemons:
            d.ready()
        if 60 - time.time() % 60 < 8:
            sleep_until((time.time() // 60 + 1) * 60 + 0.5)
        t0 = (time.time() // 60 + 1) * 60
        assert off.api is not None and on.api is not None
        a = off.api.create(definition("catch-up-off", EVERY_MINUTE))
        b = on.api.create(definition("catch-up-on", EVERY_MINUTE))
        for d in daemons:
            d.kill9()
        assert time.time() < t0 - 1, "the set-up ran into the boundary"
        t1 = t0 + 60
        sleep_until(t1 + MISFIRE_GRACE_S + 1)  # both missed T0 and T1
        for d in daemons:
            d.launch()
        for d in daemons:
            d.ready()
        wait_for(lambda: len(runs(on.db, b)) >= 1, time.time() + 10, "no catch-up run")
        time.sleep(3)
        assert time.time() < t1 + 60 - 2, "ran into T2"
        assert runs(on.db, b) == [(slot(b, t1), "cron")]
        assert runs(off.db, a) == [], "a slot missed during downtime ran without catch-up"
        on.kill9()  # again: the same latest slot is found, and its execution with it
        on.launch()
        on.ready()
        wait_for(lambda: len(on.fired(b)) >= 2, time.time() + 10, "no second catch-up fire")
        assert {r["execution"] for r in on.fired(b)} == {on.fired(b)[0]["execution"]}
        assert runs(on.db, b) == [(slot(b, t1), "cron")]
        assert time.time() < t1 + 60, "ran into T2"
    finally:
        codes = [d.stop() for d in daemons if d.daemon and d.daemon.proc.poll() is None]
    assert all(c == 0 for c in codes), codes


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from peak_daemon(tmp_path_factory.mktemp("peak-triggers"))


def hook(api: Api, webhook_id: str, headers: dict[str, str] | None = None,
         body: Any = None) -> Any:
    """POST the webhook URL as any HTTP client would (token, no peak headers unless given)."""
    return api.http.post(f"/workflows/api/v1/webhooks/{webhook_id}", json=body,
                         headers=headers or {})


def test_a_webhook_starts_one_execution_per_request_id(api: Api) -> None:
    r = api.call("POST", "/workflows/", definition("hooked", [{"webhook": True}]))
    assert r.status_code == 200, r.text
    wf_id, webhook = r.json()["id"], r.json()["triggers"][0]["webhook"]
    request_id = str(uuid.uuid4())
    first = hook(api, webhook, {"x-peak-requestId": request_id})
    assert first.status_code == 200, first.text
    ex = first.json()["executionId"]
    uuid.UUID(ex)
    assert hook(api, webhook, {"x-peak-requestId": request_id}).json()["executionId"] == ex
    keyed = hook(api, webhook, {"Idempotency-Key": "delivery-7"})
    assert keyed.status_code == 200 and keyed.json()["executionId"] != ex
    again = hook(api, webhook, {"Idempotency-Key": "delivery-7"})
    assert again.json()["executionId"] == keyed.json()["executionId"]
    assert [t for _, t in runs(api.daemon.db, wf_id)] == ["webhook", "webhook"]
    listing = api.call("GET", f"/workflows/executions/{wf_id}").json()
    assert listing["executionCount"] == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = api.call("GET", f"/workflows/{wf_id}/executions/{ex}").json()
        if got["status"] not in ("Running",):
            break
        time.sleep(0.2)
    assert got["status"] == "Success", got


def test_webhook_unknown_paused_and_without_token(api: Api) -> None:
    r = api.call("POST", "/workflows/", definition("hooked-paused", [{"webhook": True}]))
    wf_id, webhook = r.json()["id"], r.json()["triggers"][0]["webhook"]
    unknown = hook(api, str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["field"] == "webhookId"
    assert api.call("POST", f"/workflows/{wf_id}/pause").status_code == 200
    paused = hook(api, webhook, {"x-peak-requestId": "p-1"})
    assert paused.status_code == 409, paused.text
    assert runs(api.daemon.db, wf_id) == []
    bare = api.http.post(f"/workflows/api/v1/webhooks/{webhook}",
                         headers={"Authorization": ""})
    assert bare.status_code == 401
    assert api.call("POST", f"/workflows/{wf_id}/resume").status_code == 200
    resumed = hook(api, webhook, {"x-peak-requestId": "p-1"})
    assert resumed.status_code == 200, resumed.text
    assert len(runs(api.daemon.db, wf_id)) == 1
    bad = hook(api, webhook, body={"stepsToRun": [{"stepName": "nope"}]})
    assert bad.status_code == 400, bad.text
