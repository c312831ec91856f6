"""The webhook outbox: order per workflow and URL, retries with backoff, giving up."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from bridge.events import (
    Deliverer,
    DeliveryLoop,
    DeliveryPolicy,
    destination,
    make_due,
    next_try,
    pending_by_destination,
)
from bridge.spec import parse_akoflow
from bridge.store import SCHEMA_VERSION, Store, now_utc
from conftest import Receiver

FAST = DeliveryPolicy(timeout_s=2, first_delay_s=0.05, max_delay_s=0.1, max_tries=4)


def _store(tmp_path: Path) -> tuple[Store, int]:
    store = Store(tmp_path / "s.db")
    wf = parse_akoflow("name: w\nspec:\n  activities:\n    - name: a\n      run: 'true'\n")
    return store, store.add_workflow(wf.workflow)


def _emit(store: Store, wf_id: int, n: int, urls: list[str]) -> None:
    for i in range(n):
        with store.transaction() as db:
            Store.add_event(db, wf_id, "ACTIVITY_COMPLETED", {"type": "X", "n": i}, urls,
                            now_utc())


def _drain(d: Deliverer, store: Store, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while store.pending_deliveries() and time.monotonic() < deadline:
        d.deliver_due()
        time.sleep(0.01)


def test_events_arrive_in_order_after_retries(tmp_path: Path, receiver: Receiver) -> None:
    store, wf_id = _store(tmp_path)
    receiver.fail_first = 2
    _emit(store, wf_id, 5, [receiver.url])
    d = Deliverer(store, FAST)
    _drain(d, store)
    assert [r.body["n"] for r in receiver.wait_for(5)] == [0, 1, 2, 3, 4]
    tries = store.db.execute("SELECT tries FROM deliveries ORDER BY id").fetchall()
    assert [t[0] for t in tries] == [3, 1, 1, 1, 1]  # two 503s, then success
    deliveries = receiver.requests
    assert len({r.headers["X-Akobridge-Delivery"] for r in deliveries}) == 5


def test_a_dead_receiver_is_given_up_after_max_tries(tmp_path: Path, receiver: Receiver) -> None:
    store, wf_id = _store(tmp_path)
    dead = "http://127.0.0.1:9/nothing-listens-here"
    _emit(store, wf_id, 2, [dead, receiver.url])
    d = Deliverer(store, FAST)
    _drain(d, store)
    rows = store.db.execute("SELECT id, url, state, tries, last_error, held_by FROM deliveries"
                            " ORDER BY id").fetchall()
    head = next(r[0] for r in rows if r[1] == dead)
    for id_, url, state, tries, error, held_by in rows:
        if url == dead and id_ == head:  # dead-lettered ...
            assert state == "dead" and tries == FAST.max_tries and "Connect" in error
        elif url == dead:  # ... with the event queued behind it (never posted, kept in order)
            assert state == "dead" and tries == 0 and held_by == head
        else:
            assert state == "delivered" and tries == 1
    assert [r.body["n"] for r in receiver.requests] == [0, 1]  # not held up by the dead URL


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    p = DeliveryPolicy(first_delay_s=1, max_delay_s=8)
    for tries, base in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        delays = {p.delay(tries) for _ in range(50)}
        assert all(base * 0.5 <= x <= base for x in delays)
        assert len(delays) > 1


def test_not_due_is_not_posted(tmp_path: Path, receiver: Receiver) -> None:
    store, wf_id = _store(tmp_path)
    with store.transaction() as db:
        Store.add_event(db, wf_id, "X", {"n": 0}, [receiver.url],
                        now_utc() + timedelta(hours=1))
    assert Deliverer(store, FAST).deliver_due() == 0
    assert receiver.requests == []


def test_schema_is_versioned_and_reopens(tmp_path: Path) -> None:
    store, wf_id = _store(tmp_path)
    instance = store.instance
    store.close()
    again = Store(tmp_path / "s.db")
    assert again.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.instance == instance and again.workflow(wf_id) is not None


class BlackHole:
    """A TCP listener that accepts connections and never answers (a hung receiver)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.conns: list[object] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)  # keep it open, read nothing, answer nothing

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for c in self.conns:
            c.close()  # type: ignore[attr-defined]
        self.sock.close()


def test_a_black_holed_url_does_not_delay_another_destination(tmp_path: Path,
                                                              receiver: Receiver) -> None:
    hole = BlackHole()
    store, wf_id = _store(tmp_path)
    _emit(store, wf_id, 5, [hole.url, receiver.url])
    loop = DeliveryLoop(store.path, DeliveryPolicy(timeout_s=8, first_delay_s=0.05,
                                                   max_delay_s=0.1), interval_s=0.05)
    try:
        started = time.monotonic()
        loop.start()
        got = receiver.wait_for(5, timeout=6)
        took = time.monotonic() - started
        assert [r.body["n"] for r in got] == [0, 1, 2, 3, 4]
        assert took < 3, f"the working receiver waited {took:.1f} s behind the black hole"
        deadline = time.monotonic() + 2
        while len(pending_by_destination(store)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the last delivery's row is written just after its answer
        assert pending_by_destination(store) == {hole.url.split("/")[2]: 5}
    finally:
        loop.stop(timeout=0.5)
        hole.close()


def test_one_pass_posts_destinations_concurrently(tmp_path: Path, receiver: Receiver) -> None:
    hole = BlackHole()
    try:
        store, wf_id = _store(tmp_path)
        _emit(store, wf_id, 1, [hole.url, receiver.url])
        d = Deliverer(store, DeliveryPolicy(timeout_s=2, max_tries=4))
        seen: list[float] = []
        started = time.monotonic()
        threading.Thread(target=lambda: seen.append(len(receiver.wait_for(1, 5)) and
                                                    time.monotonic() - started),
                         daemon=True).start()
        assert d.deliver_due() == 2
        time.sleep(0.05)
        assert seen and seen[0] < 1.0, seen  # delivered while the black hole still hung
        states = dict(store.db.execute("SELECT url, state FROM deliveries").fetchall())
        assert states == {hole.url: "pending", receiver.url: "delivered"}
    finally:
        hole.close()


def test_destination_and_make_due(tmp_path: Path) -> None:
    assert destination("http://a.example/x") == "a.example:80"
    assert destination("https://a.example:8443/x?q") == "a.example:8443"
    store, wf_id = _store(tmp_path)
    with store.transaction() as db:
        Store.add_event(db, wf_id, "X", {"n": 0}, ["http://h:1/a", "http://h:1/b"],
                        now_utc() + timedelta(hours=1))
    assert pending_by_destination(store) == {"h:1": 2}
    assert make_due(store) == 2
    assert next_try(store) is not None and next_try(store) <= now_utc()  # type: ignore[operator]
