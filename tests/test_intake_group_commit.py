"""The API's group commit (bridge.intake) and the cycle's incremental read of the RUNNING
workflows (store.RunningHeads): many concurrent submissions share transactions yet each gets
its own workflow; one idempotency key makes one workflow even inside a batch; a failed batch
fails its requests only; the heads follow every change made by any connection."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from daemon_helpers import running_daemon

from bridge import intake as intake_mod
from bridge.intake import GroupIntake
from bridge.spec import parse_akoflow
from bridge.store import RunningHeads, Store

ONE = "name: {name}\nspec:\n  runtime: local\n  activities:\n    - name: a\n      run: sleep 600\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post_many(url: str, bodies: list[tuple[str, dict[str, str]]], clients: int
              ) -> list[tuple[int, dict[str, Any], str]]:
    """POST each (workflow text, headers) to /workflows from ``clients`` threads at once, each
    on its own keep-alive connection; (status, reply, name posted) per request."""
    where = urlsplit(url)
    out: list[tuple[int, dict[str, Any], str]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(mine: list[tuple[str, dict[str, str]]]) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        start.wait()
        for text, headers in mine:
            conn.request("POST", "/workflows", body=json.dumps({"workflow": b64(text)}),
                         headers={"Content-Type": "application/json", **headers})
            r = conn.getresponse()
            reply = json.loads(r.read())
            with lock:
                out.append((r.status, reply, text.split("\n")[0].removeprefix("name: ")))
        conn.close()

    threads = [threading.Thread(target=client, args=(bodies[i::clients],))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_concurrent_submissions_share_commits_and_each_gets_its_own_workflow(
        tmp_path: Path) -> None:
    n, clients = 400, 40
    with running_daemon(tmp_path) as d:
        replies = post_many(d.url, [(ONE.format(name=f"wf-{i}"), {}) for i in range(n)],
                            clients)
        assert [s for s, _, _ in replies] == [201] * n
        ids = [r["id"] for _, r, _ in replies]
        assert len(set(ids)) == n
        assert all(r["name"] == name for _, r, name in replies)
        batches = metric(d.url, "akobridge_intake_batch_workflows_count")
        stored = metric(d.url, "akobridge_intake_batch_workflows_sum")
        db = sqlite3.connect(d.db)
        by_id = dict(db.execute("SELECT id, name FROM workflows"))
        acts = db.execute("SELECT count(*) FROM activities").fetchone()[0]
    assert {i: by_id[i] for i in ids} == {r["id"]: name for _, r, name in replies}
    assert len(by_id) == n and acts == n, "every workflow stored once, with its activity"
    assert stored == n
    assert batches < n, f"{n} submissions from {clients} clients took {batches} commits"


def test_one_idempotency_key_makes_one_workflow_even_within_a_batch(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        same = [(ONE.format(name="once"), {"Idempotency-Key": "k-1"})] * 30
        others = [(ONE.format(name=f"other-{i}"), {}) for i in range(30)]
        replies = post_many(d.url, same + others, 30)
        db = sqlite3.connect(d.db)
        rows = db.execute("SELECT id FROM workflows WHERE name='once'").fetchall()
        total = db.execute("SELECT count(*) FROM workflows").fetchone()[0]
        accepted = metric(d.url, 'akobridge_workflows_accepted_total{intake="api"}')
    assert [s for s, _, _ in replies] == [201] * 60
    assert len(rows) == 1 and total == 31
    assert {r["id"] for _, r, name in replies if name == "once"} == {rows[0][0]}
    assert accepted == 31, "a known key is not counted again"


def test_a_large_workflow_is_checked_off_the_event_loop_and_stored(tmp_path: Path) -> None:
    acts = "".join(f"    - name: step{i:04d}\n      run: echo {'x' * 40} {i}\n"
                   for i in range(400))
    text = f"name: big\nspec:\n  runtime: local\n  activities:\n{acts}"
    assert len(text) > intake_mod.INLINE_CHARS
    with running_daemon(tmp_path) as d:
        r = httpx.post(f"{d.url}/workflows", json={"workflow": b64(text)}, timeout=30)
        bad = httpx.post(f"{d.url}/workflows", timeout=30, json={
            "workflow": b64(text.replace("runtime: local", "runtime: nowhere"))})
        n = sqlite3.connect(d.db).execute("SELECT count(*) FROM activities").fetchone()[0]
    assert r.status_code == 201, r.text
    assert n == 400
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "spec.runtime"


def test_the_same_key_twice_in_one_call_is_one_workflow(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    wf = parse_akoflow(ONE.format(name="x")).workflow
    got = store.add_workflows([(wf, "k", True), (wf, None, True), (wf, "k", True)])
    assert got[0][1] and got[1][1] and got[2] == (got[0][0], False)
    assert got[0][0] != got[1][0]
    assert store.add_workflows([(wf, "k", False)]) == [(got[0][0], False)]


class _FailingOnce:
    """A service whose first store fails (a full disk, say): checks pass, storing raises."""

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self, text: str, runtime: str | None = None) -> Any:
        return parse_akoflow(text).workflow

    def store_prepared(self, items: list[Any], intake: str = "api") -> list[tuple[int, bool]]:
        self.calls += 1
        if self.calls == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return [(100 + i, True) for i in range(len(items))]


def test_a_failed_batch_fails_its_requests_and_the_next_batch_is_written() -> None:
    service = _FailingOnce()
    intake = GroupIntake(service)  # type: ignore[arg-type]

    async def run() -> tuple[list[Any], Any]:
        first = await asyncio.gather(
            *(intake.submit(ONE.format(name=f"a{i}")) for i in range(5)),
            return_exceptions=True)
        second = await intake.submit(ONE.format(name="b"))
        return first, second

    try:
        first, second = asyncio.run(run())
    finally:
        intake.close()
    assert all(isinstance(e, sqlite3.OperationalError) for e in first)
    assert second[0] == 100 and service.calls == 2


def test_running_heads_follow_changes_from_any_connection(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store, other = Store(path), Store(path)
    wf = parse_akoflow(ONE.format(name="x")).workflow
    ids = [store.add_workflow(wf) for _ in range(5)]
    heads = RunningHeads(store)
    first = dict(heads.read())
    assert set(first) == set(ids) and not any(h.prepared for h in first.values())
    assert store.head_changes(heads._seq) == ([], heads._seq), "nothing changed: nothing read"

    with other.transaction() as db:  # another connection: one finishes, one is prepared,
        db.execute("UPDATE workflows SET state='COMPLETED' WHERE id=?", (ids[0],))
        db.execute("UPDATE workflows SET prepared_at='x' WHERE id=?", (ids[1],))
        db.execute("UPDATE activities SET cancel_requested=1 WHERE workflow_id=?", (ids[2],))
    new_id = other.add_workflow(wf)  # … and a new one arrives
    changed, _ = store.head_changes(heads._seq)
    assert sorted(r[0] for r in changed) == sorted([ids[0], ids[1], ids[2], new_id])
    now = heads.read()
    assert set(now) == {*ids[1:], new_id}
    assert now[ids[1]].prepared
    assert now[ids[2]].signature != first[ids[2]].signature, "an activity's change moves it"
    assert now[ids[3]] == first[ids[3]]


def test_an_older_store_gets_the_change_sequence(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    wf = parse_akoflow(ONE.format(name="x")).workflow
    ids = [store.add_workflow(wf) for _ in range(3)]
    store.close()
    db = sqlite3.connect(path)  # back to schema 10: no seq column, its triggers gone
    for name in ("workflows_seq_insert", "workflows_seq_update"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP INDEX workflows_seq")
    db.execute("ALTER TABLE workflows DROP COLUMN seq")
    db.execute("PRAGMA user_version=10")
    db.commit()
    db.close()
    reopened = Store(path)
    assert set(RunningHeads(reopened).read()) == set(ids)
    seqs = [r[0] for r in reopened.db.execute("SELECT seq FROM workflows ORDER BY id")]
    assert seqs == sorted(set(seqs)) and seqs[0] > 0


@pytest.mark.parametrize("resync", [False, True])
def test_a_full_read_and_an_incremental_one_agree(tmp_path: Path, resync: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "s.db")
    wf = parse_akoflow(ONE.format(name="x")).workflow
    heads = RunningHeads(store)
    for round_ in range(6):
        ids = [store.add_workflow(wf) for _ in range(4)]
        with store.transaction() as db:
            db.execute("UPDATE workflows SET state='FAILED' WHERE id=?", (ids[round_ % 4],))
        if resync:
            monkeypatch.setattr(RunningHeads, "RESYNC_S", 0.0)
        before = dict(heads._heads)
        assert dict(heads.read()) == store.running_heads()
        if round_:  # what moved: the new ones still running (a resync, too, reports them)
            assert heads.changed is not None
            assert set(ids) - {ids[round_ % 4]} <= heads.changed
            assert heads.changed <= {*ids, *before}


def test_the_periodic_check_reads_every_running_row_only_when_it_finds_a_difference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RESYNC_S the heads are checked against one aggregate row (how many RUNNING, the
    sum of their ids); every RUNNING row is read again only when that differs — a workflow
    deleted behind the change sequence's back, say. Reading them all each minute took 0.2 s
    of the interpreter with 36,000 queued."""
    store = Store(tmp_path / "s.db")
    wf = parse_akoflow(ONE.format(name="x")).workflow
    ids = [store.add_workflow(wf) for _ in range(5)]
    heads = RunningHeads(store)
    full_reads: list[int] = []
    original = store.running_heads
    monkeypatch.setattr(store, "running_heads", lambda: full_reads.append(1) or original())
    heads.read()
    monkeypatch.setattr(RunningHeads, "RESYNC_S", 0.0)
    for _ in range(3):
        heads.read()
    assert len(full_reads) == 1, "the check found nothing different: no full read"
    with store.transaction() as db:  # gone without a change of its sequence number
        db.execute("DELETE FROM activities WHERE workflow_id=?", (ids[2],))
        db.execute("DELETE FROM workflows WHERE id=?", (ids[2],))
    now = heads.read()
    assert len(full_reads) == 2 and ids[2] not in now and heads.changed == {ids[2]}
    assert dict(now) == store.running_heads()
