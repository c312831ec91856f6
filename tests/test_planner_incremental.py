"""The planner skips workflows that cannot move: a pass reads the activities only of workflows
whose revision changed (any connection's write bumps it), whose retry is due, or that wait for
a cluster which now has room. Real stores and the local process runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.store import Store
from conftest import Harness
from runtimes.config import LOCAL

ONE = "name: wf{i}\nspec:\n  activities:\n    - name: a\n      run: {run}\n"


def counting(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[int]:
    """Workflow ids whose activities the planner reads, in order."""
    read: list[int] = []
    original = store.activities

    def activities(wf_id: int):  # noqa: ANN202 - list[ActivityRow]
        read.append(wf_id)
        return original(wf_id)

    monkeypatch.setattr(store, "activities", activities)
    return read


def test_waiting_workflows_are_not_read_while_the_cluster_is_full(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_slot = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 1})
    h = harness(one_slot)
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(50)]
    planner = h.bridge.planner
    read = counting(monkeypatch, h.store)
    for _ in range(2):  # prepare, then the first pass claims the one slot
        h.bridge.cycle()
    assert h.store.live_count("local") == 1
    planner.plan(set(ids))  # the running one's submission moved its revision: read once more
    read.clear()
    for _ in range(5):
        planner.plan(set(ids))
    assert read == [], "the cluster is full: no waiting workflow needs reading"
    h.bridge.store.request_cancel(ids[0])  # the running one: its revision moves
    planner.plan(set(ids))
    assert read == [ids[0]]


def test_a_write_from_another_connection_wakes_the_workflow(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    wf_id = h.submit(ONE.format(i=0, run="sleep 30"))
    for _ in range(3):
        h.bridge.cycle()
    read = counting(monkeypatch, h.store)
    h.bridge.planner.plan({wf_id})
    h.bridge.planner.plan({wf_id})
    assert read.count(wf_id) <= 1  # quiet after one look
    other = Store(h.store.path)  # e.g. `akobridge cancel` without a daemon
    try:
        other.request_cancel(wf_id)
    finally:
        other.close()
    read.clear()
    h.bridge.planner.plan({wf_id})
    assert read == [wf_id]
    h.run(wf_id, timeout=30)
    assert h.states(wf_id) == {"a": "CANCELLED"}


def test_a_retry_wakes_its_workflow_when_it_is_due(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    text = ONE.format(i=0, run="exit 3") + "      retry: {retries: 1, backoff: 1}\n"
    wf_id = h.submit(text)
    began = time.monotonic()
    h.run(wf_id, timeout=60)
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.attempt) == ("FAILED", 2)  # the retry ran after its backoff
    attempts = h.store.attempts(act.id)
    gap = attempts[1].submitted_at - attempts[0].finished_at
    assert timedelta(seconds=0.9) <= gap < timedelta(seconds=10)
    assert time.monotonic() - began < 30


def test_the_change_feed_reads_only_workflows_that_moved(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.changes import ChangeFeed

    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 2}))
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(3)]
    feed = ChangeFeed(h.store)
    first = feed.poll()
    assert {e["workflow_id"] for e in first if e["type"] == "activity"} == set(ids)
    assert feed.poll() == []  # nothing moved
    other = Store(h.store.path)  # a write from another connection moves its revision
    try:
        with other.transaction() as db:
            db.execute("UPDATE activities SET state='SKIPPED' WHERE workflow_id=?", (ids[1],))
    finally:
        other.close()
    events = feed.poll()
    assert [(e["workflow_id"], e.get("activity"), e["state"]) for e in events] == [
        (ids[1], "a", "SKIPPED")]
    assert feed.poll() == []


def test_the_change_feed_skips_what_ended_before_anyone_listened(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    from bridge.changes import ChangeFeed
    from bridge.store import iso, now_utc

    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(3)]
    feed = ChangeFeed(h.store)
    feed.poll()

    def finish(wf_id: int) -> None:
        with h.store.transaction() as db:
            db.execute("UPDATE workflows SET state='CANCELLED', finished_at=? WHERE id=?",
                       (iso(now_utc()), wf_id))

    finish(ids[0])  # nobody listens: the daemon does not poll
    feed.watch_from(now_utc())
    finish(ids[1])
    events = feed.poll()
    ended = {e["workflow_id"] for e in events if e["type"] == "workflow"}
    assert ended == {ids[1]}, events
    feed.watch_from(datetime(2000, 1, 1, tzinfo=UTC))  # never moves the window back
    assert feed.poll() == []


def test_many_waiting_activities_end_in_one_transaction_with_their_webhooks(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling (or skipping) 400 activities without jobs is one transaction, not 400 (2,000
    cancelled on the monitoring page took 20 s), and each still gets its ACTIVITY_COMPLETED."""
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    leaves = "".join(f"    - name: leaf{i}\n      run: 'true'\n      dependsOn: [root]\n"
                     for i in range(400))
    text = ("name: wide\nspec:\n  webhooks: [{url: 'http://127.0.0.1:9/hook'}]\n"
            f"  activities:\n    - name: root\n      run: sleep 30\n{leaves}")
    wf_id = h.submit(text)
    for _ in range(3):
        h.bridge.cycle()
    assert h.states(wf_id)["root"] == "RUNNING"
    h.store.request_cancel(wf_id, [f"leaf{i}" for i in range(400)])
    opened: list[int] = []
    real = h.store.transaction

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(h.store, "transaction", counted)
    h.bridge.planner.plan({wf_id})
    states = h.states(wf_id)
    assert [n for n, s in states.items() if s != "CANCELLED"] == ["root"]
    assert len(opened) <= 3, len(opened)
    events = h.store.db.execute(
        "SELECT count(*) FROM events WHERE workflow_id=? AND type='ACTIVITY_COMPLETED'",
        (wf_id,)).fetchone()[0]
    assert events == 400
    h.store.request_cancel(wf_id)
    h.run(wf_id, timeout=60)
    assert h.states(wf_id)["root"] == "CANCELLED"


def test_a_workflow_with_nothing_to_prepare_is_planned_in_its_first_cycle(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    """No volume to stage and no image: stored prepared, so the first cycle submits it (no
    round of the worker to prepare it first); one with an image or a volume still waits for
    its preparation (in the worker's round of that cycle, so it is not planned before the
    next)."""
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    plain = h.submit(ONE.format(i=0, run="sleep 30"))
    imaged = h.submit(f"name: img\nspec:\n  image: {tmp_path}/nowhere/model.sif\n  activities:\n"
                      "    - name: a\n      run: 'true'\n")
    (tmp_path / "src").mkdir()
    staged = h.submit(f"name: vol\nspec:\n  volumes:\n    - {tmp_path / 'src'}:"
                      f"{tmp_path / 'dst'}\n  activities:\n    - name: a\n      run: 'true'\n")
    rows = {i: h.store.workflow(i) for i in (plain, imaged, staged)}
    assert rows[plain] is not None and rows[plain].prepared_at is not None
    assert rows[imaged] is not None and rows[imaged].prepared_at is None
    assert rows[staged] is not None and rows[staged].prepared_at is None
    h.bridge.cycle()
    assert h.states(plain)["a"] in ("SUBMITTING", "QUEUED", "RUNNING")
    assert h.states(imaged)["a"] in ("PENDING", "SKIPPED")  # SKIPPED: no such image
    assert h.states(staged)["a"] == "PENDING"
    assert h.store.attempts(h.store.activities(imaged)[0].id) == []


def test_live_attempts_of_many_workflows(harness: Callable[..., Harness],
                                         tmp_path: Path) -> None:
    """``live_attempts(wf_ids)`` (filtered in Python) with tens of thousands of workflow ids,
    as a cycle asks with every RUNNING workflow, any iterable, with and without a cluster."""
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 2}))
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(3)]
    for _ in range(3):
        h.bridge.cycle()
    live = h.store.live_attempts()
    assert {a.workflow_id for a in live} == set(ids[:2])  # two slots
    many = [*range(10**6, 10**6 + 40_000), ids[1], ids[2]]
    assert [a.id for a in h.store.live_attempts(many)] == [
        a.id for a in live if a.workflow_id == ids[1]]
    assert [a.id for a in h.store.live_attempts(iter(many), "local")] == [
        a.id for a in live if a.workflow_id == ids[1]]
    assert h.store.live_attempts([]) == []


def looked_at(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many quiet records each pass checks (one entry per Quiet.still call)."""
    from bridge.phases import plan

    calls: list[int] = []
    original = plan.Quiet.still

    def still(self: plan.Quiet, signature: Any, now: datetime) -> bool:
        calls.append(1)
        return original(self, signature, now)

    monkeypatch.setattr(plan.Quiet, "still", still)
    return calls


def test_a_cycle_looks_only_at_workflows_that_can_move(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 300 workflows queued behind a one-slot cluster, a cycle (which passes the heads
    that changed) checks none of the quiet ones; a change from another connection makes it
    look at that one; the slot freeing up makes it look at the ones waiting for it."""
    one_slot = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 1})
    h = harness(one_slot)
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(300)]
    for _ in range(3):
        h.bridge.cycle()
    assert h.store.live_count("local") == 1
    checks = looked_at(monkeypatch)
    read = counting(monkeypatch, h.store)
    for _ in range(5):
        h.bridge.cycle()
    assert checks == [] and read == [], "nothing moved: no quiet workflow looked at"
    assert len(h.bridge.planner.plan(set(ids)).created) == 0  # a full pass: checks them all
    assert len(checks) >= 299
    checks.clear()
    other = Store(h.store.path)
    try:
        other.request_cancel(ids[150])  # a waiting one, from another connection
    finally:
        other.close()
    h.bridge.cycle()
    assert set(read) == {ids[150]}, "only the one that moved is read"
    assert h.states(ids[150]) == {"a": "CANCELLED"}
    read.clear()
    running = next(i for i in ids if h.states(i)["a"] == "RUNNING")
    h.store.request_cancel(running)  # its job ends: the slot frees, a waiting one takes it
    deadline = time.monotonic() + 30
    checks.clear()
    while h.store.live_count("local") != 1 or h.states(running)["a"] != "CANCELLED":
        assert time.monotonic() < deadline, "the freed slot was not taken"
        h.bridge.cycle()
        time.sleep(0.05)
    # one slot freed: the oldest waiting one is woken for it, not all 298 looked at
    assert len(checks) <= 5, len(checks)
    started = [i for i in ids if h.states(i)["a"] in ("SUBMITTING", "QUEUED", "RUNNING")]
    assert len(started) == 1 and started[0] not in (running, ids[150])
    for i in ids:
        h.store.request_cancel(i)
    h.run(ids[-1], timeout=60)


def test_a_quiet_workflow_wakes_for_its_retry_without_a_change(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A retry whose backoff ends changes nothing in the store: the cycle still plans it
    (the retry's due time is indexed, not found by looking at every quiet workflow)."""
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    text = ONE.format(i=0, run="exit 3") + "      retry: {retries: 2, backoff: 1}\n"
    wf_id = h.submit(text)
    h.run(wf_id, timeout=60)
    [act] = h.store.activities(wf_id)
    assert (act.state.value, act.attempt) == ("FAILED", 3)


class _RowsRead:
    """A connection stand-in that counts the rows its queries return (the feed's reads)."""

    def __init__(self, db: Any) -> None:
        self.db, self.rows = db, 0

    def execute(self, *args: Any) -> Any:
        rows = self.db.execute(*args).fetchall()
        self.rows += len(rows)
        return _Fetched(rows)


class _Fetched(list):  # type: ignore[type-arg]
    def fetchall(self) -> list[Any]:
        return list(self)

    def fetchone(self) -> Any:
        return self[0] if self else None


def test_the_change_feed_reads_only_what_changed_after_its_first_poll(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 200 workflows queued, a poll after the first reads the rows of the one workflow
    that changed (the change sequence), not the 200; one that ends is reported once and then
    forgotten; a retried one comes back."""
    from bridge.changes import ChangeFeed

    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 1}))
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(200)]
    feed = ChangeFeed(h.store)
    counter = _RowsRead(h.store.db)
    monkeypatch.setattr(feed.store, "db", counter)
    first = feed.poll()
    assert counter.rows >= 400 and len(first) == 400  # 200 workflows, 200 activities
    counter.rows = 0
    assert feed.poll() == [] and counter.rows <= 1, "nothing changed: nothing read"
    other = Store(h.store.path)
    try:
        with other.transaction() as db:
            db.execute("UPDATE activities SET state='SKIPPED' WHERE workflow_id=?", (ids[7],))
            db.execute("UPDATE workflows SET state='COMPLETED', finished_at='x' WHERE id=?",
                       (ids[7],))
    finally:
        other.close()
    counter.rows = 0
    events = feed.poll()
    assert counter.rows <= 3, counter.rows
    assert sorted((e["type"], e["state"]) for e in events) == [
        ("activity", "SKIPPED"), ("workflow", "COMPLETED")]
    assert ids[7] not in feed._wfs and ids[7] not in feed._acts_of
    h.store.retry_workflow(ids[7])
    assert {(e["type"], e["state"]) for e in feed.poll()} == {
        ("workflow", "RUNNING"), ("activity", "PENDING")}


def test_a_pass_that_fails_leaves_its_changes_for_the_next(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The changes a cycle read are planned even when its pass raised (the daemon logs the
    failure and cycles on): the next read is a full one."""
    from bridge.phases.plan import Planner

    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 1}))
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(5)]
    for _ in range(3):
        h.bridge.cycle()
    waiting = next(i for i in ids if h.states(i)["a"] == "PENDING")
    h.store.request_cancel(waiting)
    real = Planner.plan

    def broken(self: Planner, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in this pass")

    monkeypatch.setattr(Planner, "plan", broken)
    with pytest.raises(RuntimeError):
        h.bridge.cycle()  # read the cancel's change, then failed
    monkeypatch.setattr(Planner, "plan", real)
    h.bridge.cycle()
    assert h.states(waiting) == {"a": "CANCELLED"}
    for i in ids:
        h.store.request_cancel(i)
    h.run(ids[0], timeout=60)


class NoWalk(AbstractSet[int]):
    """The driven workflows, answering ``in`` but refusing to be walked through."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = ids

    def __contains__(self, x: object) -> bool:
        return x in self.ids

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("an incremental pass walked through every driven workflow")

    def __len__(self) -> int:
        return len(self.ids)


def test_an_incremental_pass_never_walks_every_driven_workflow(
        harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tens of thousands queued made each pass's set operations over all of them (and a
    copy of them per cycle) a few milliseconds, ten passes a second under a stream: a pass
    given the changes touches only what changed, what is loud, what is due."""
    one_slot = LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs"), "max_running": 1})
    h = harness(one_slot)
    ids = [h.submit(ONE.format(i=i, run="sleep 30")) for i in range(200)]
    for _ in range(3):
        h.bridge.cycle()
    planner, heads = h.bridge.planner, h.bridge.heads
    read = counting(monkeypatch, h.store)
    for _ in range(3):
        planner.plan(NoWalk(set(ids)), heads.read(), heads.changed)
    assert read == []
    late = h.submit(ONE.format(i=999, run="sleep 30"))  # a new one: read once, then quiet
    planner.plan(NoWalk({*ids, late}), heads.read(), heads.changed)
    planner.plan(NoWalk({*ids, late}), heads.read(), heads.changed)
    assert read == [late]
    for i in [*ids, late]:
        h.store.request_cancel(i)
    h.run(late, timeout=60)


def test_a_workflow_not_driven_yet_is_planned_when_a_later_pass_drives_it(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    """`run` of one workflow, then of another stored before: the second was loud all along."""
    h = harness(LOCAL.model_copy(update={"workdir": str(tmp_path / "jobs")}))
    first = h.submit(ONE.format(i=1, run="echo one"))
    second = h.submit(ONE.format(i=2, run="echo two"))
    h.run(first, timeout=30)
    assert h.states(second) == {"a": "PENDING"}
    h.run(second, timeout=30)
    assert h.states(second) == {"a": "COMPLETED"}
