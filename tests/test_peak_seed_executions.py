"""The seed's ``cron_workflow_body`` and ``webhook_workflow_body``, created as written on a
real ``akobridge serve`` with the shipped configs/bridge.yaml catalogue, and executed: the cron
one through ``execute``, the webhook one through its minted webhook URL.

What the shipped config implies (docs/peak.md, "Using the real peak-sdk client"): it has no
``peak.secrets_file``, so every step naming ``secret-1``/``secret-2`` fails before any job,
its message naming ``secret-1`` (the first one missing; the repository clone, which comes after,
never runs, so no test reaches github.com); ``step2`` of the webhook body waits for ``step1``
to succeed (``parentStatus`` all-of success) and is Skipped. The cron body's fail watchers do
fire: its e-mails wait in their queue (the shipped config has no ``smtp.host``) and its webhook
to ``https://abc.com/post`` is refused by the URL policy this test adds (``deny: [abc.com]``),
so nothing leaves this host."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_peak_definition import CRON, WEBHOOK
from test_peak_definitions_api import Api, peak_daemon
from test_peak_executions_api import execute, steps_of, wait

MISSING = "secret secret-1 is not in the daemon's secrets file"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from peak_daemon(tmp_path_factory.mktemp("peak-seed-runs"),
                           {"webhooks": {"deny": ["abc.com"], "first_delay": 0.2}})


def rows(api: Api, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(api.daemon.db) as conn:
        return conn.execute(sql, args).fetchall()


def settled(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)
    return got


def test_the_cron_body_executes_as_written(api: Api) -> None:
    wf_id = api.create(CRON[0])
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed", "Stopped"}, timeout=90)
    assert got["status"] == "Failed", got
    step = steps_of(got)["stepName"]
    assert (step["status"], step["jobId"]) == ("Failed", None), step  # no job started
    assert MISSING in step["output"]["message"], step["output"]
    assert step["command"] == "python script.py"

    # its fail watchers heard of it: two e-mails queued, the webhook refused by the policy
    queued = settled(lambda: rows(api, "SELECT kind, event, state FROM peak_notifications"
                                       " WHERE execution_id=? ORDER BY kind", ex))
    assert [(k, e) for k, e, _ in queued] == [("email", "fail"), ("user", "fail"),
                                              ("webhook", "fail")]
    [(state, error)] = settled(lambda: rows(
        api, "SELECT state, last_error FROM deliveries WHERE url='https://abc.com/post'"
             " AND state='dead'"))
    assert "denied by the URL policy" in error


def test_the_webhook_body_runs_through_its_webhook_url(api: Api) -> None:
    r = api.call("POST", "/workflows/", WEBHOOK[0])
    assert r.status_code == 200, r.text
    wf_id, hook = r.json()["id"], r.json()["triggers"][0]["webhook"]
    fired = api.call("POST", f"/webhooks/{hook}")
    assert fired.status_code == 200, fired.text
    ex = fired.json()["executionId"]
    got = wait(api, wf_id, ex, {"Success", "Failed", "Stopped"}, timeout=90)
    assert got["status"] == "Failed", got
    steps = steps_of(got)
    assert (steps["step1"]["status"], steps["step1"]["jobId"]) == ("Failed", None)
    assert MISSING in steps["step1"]["output"]["message"], steps["step1"]["output"]
    assert (steps["step2"]["status"], steps["step2"]["jobId"]) == ("Skipped", None)
    listed = api.call("GET", f"/workflows/executions/{wf_id}").json()["executions"]
    assert [e["executionId"] for e in listed] == [ex]
