"""The daemon's main loop paces its cycles: a stream of wake-ups from requests (submissions)
is planned ten times a second (``WAKE_GAP_S``), changes found by the rounds go on at once
(``CYCLE_GAP_S``), and without a subscriber the change feed is not read at all.
Fakes around :meth:`bridge.daemon.Daemon._loop`: no sockets, no store."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.daemon import CYCLE_GAP_S, WAKE_GAP_S, Daemon, pause_s


class FakeBridge:
    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.cycles = 0

        self.at: list[float] = []

    def cycle(self) -> bool:
        self.cycles += 1
        self.at.append(time.monotonic())
        return self.changed

    def idle_s(self) -> float:
        return 0.25


class FakeFeed:
    def __init__(self) -> None:
        self.polls = 0

    def poll(self) -> list[dict[str, Any]]:
        self.polls += 1
        return []

    def watch_from(self, _since: Any) -> None:
        pass


def run_loop(changed: bool, seconds: float, wake_every: float | None,
             bridge: FakeBridge | None = None, wake_at: float | None = None,
             ) -> tuple[int, int]:
    """Cycles and feed reads in ``seconds`` of the loop, woken every ``wake_every`` s."""
    d = Daemon.__new__(Daemon)
    d.stop_requested, d.reload_requested, d.wake = (threading.Event(), threading.Event(),
                                                    threading.Event())
    d._last_cycle = time.monotonic()
    bridge = bridge or FakeBridge(changed)
    d.bridge = bridge  # type: ignore[assignment]
    feed = FakeFeed()
    api = SimpleNamespace(alive=lambda: True, is_alive=lambda: True)
    ctx = SimpleNamespace(hub=SimpleNamespace(subscribers=0, watched_since=None,
                                              publish=lambda _events: None))
    notifier = SimpleNamespace(watchdog_interval_s=None)
    delivery = SimpleNamespace(poke=lambda: None)
    loop = threading.Thread(target=d._loop, args=(api, feed, ctx, notifier, delivery))
    loop.start()
    if wake_at is not None:
        threading.Timer(wake_at, d.wake.set).start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if wake_every is not None:
            d.wake.set()  # what Service.submit_text does for each accepted workflow
        time.sleep(wake_every or 0.05)
    d.stop_requested.set()
    d.wake.set()
    loop.join(5)
    assert not loop.is_alive()
    return bridge.cycles, feed.polls


def test_a_stream_of_submissions_is_planned_ten_times_a_second() -> None:
    cycles, polls = run_loop(changed=False, seconds=2.0, wake_every=0.004)
    assert 2.0 / WAKE_GAP_S * 0.5 <= cycles <= 2.0 / WAKE_GAP_S + 2, cycles
    assert polls == 0  # nothing changed: the feed has nothing to read


def test_changes_found_by_rounds_are_followed_at_once_and_unwatched_feeds_not_read() -> None:
    cycles, polls = run_loop(changed=True, seconds=2.0, wake_every=None)
    assert cycles >= 2.0 / CYCLE_GAP_S * 0.5, cycles  # not held to WAKE_GAP_S
    assert polls == 0  # nobody listens on /events


def test_a_submission_to_an_idle_loop_is_planned_at_once() -> None:
    """Idle for longer than WAKE_GAP_S: the wake-up's cycle starts without waiting for it.
    (The decision, not wall time: CI's loaded runner once took 52 ms to switch threads.)"""
    assert pause_s(changed=False, woken=True, began=10.0, now=10.0 + WAKE_GAP_S + 0.15) == 0
    rest = pause_s(changed=False, woken=True, began=10.0, now=10.03)
    assert rest == pytest.approx(WAKE_GAP_S - 0.03)


def test_a_round_that_changed_something_waits_only_the_cycle_gap() -> None:
    rest = pause_s(changed=True, woken=False, began=5.0, now=5.005)
    assert rest == pytest.approx(CYCLE_GAP_S - 0.005)
    assert pause_s(changed=False, woken=False, began=5.0, now=5.3) == 0  # idle wait ran out


def test_the_loop_plans_a_wake_up_after_an_idle_spell() -> None:
    """Through the real loop: a wake-up after idling is followed by a cycle (well before the
    next idle timeout would have brought one)."""
    bridge = FakeBridge(changed=False)
    t0 = time.monotonic()
    run_loop(changed=False, seconds=0.6, wake_every=None, bridge=bridge, wake_at=0.4)
    woken = [t - t0 for t in bridge.at if t - t0 >= 0.4]
    assert woken and woken[0] < 0.4 + bridge.idle_s() * 0.8, [t - t0 for t in bridge.at]


def test_full_collections_wait_for_a_quiet_spell_or_the_longest_gap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection (tenths of a second with tens of thousands queued) runs when nothing
    woke or changed the loop for FULL_GC_QUIET_S, at most once a minute, and under endless
    load at the latest after FULL_GC_EVERY_S[1]."""
    import gc

    from bridge import daemon as d

    ran: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(gc, "collect", lambda *a: ran.append(now[0]) or 0)
    full = d.FullCollections(clock=lambda: now[0])
    low, high = d.FULL_GC_EVERY_S

    def tick(seconds: float, busy: bool) -> None:
        end = now[0] + seconds
        while now[0] < end:
            now[0] += 0.1
            full.after_cycle(busy)

    tick(low + 10, busy=False)  # quiet, but not a minute since the last one (start-up)
    assert ran == [pytest.approx(1000 + low, abs=0.2)]
    tick(low, busy=True)  # a minute since, but busy all along
    assert len(ran) == 1
    tick(d.FULL_GC_QUIET_S - 0.5, busy=False)  # not quiet for long enough yet
    assert len(ran) == 1
    tick(1.0, busy=False)
    assert len(ran) == 2
    tick(high + 5, busy=True)  # never quiet again: once, at the longest gap
    assert len(ran) == 3 and ran[2] - ran[1] == pytest.approx(high, abs=0.2)
    assert d.GC_THRESHOLDS[2] >= 100_000  # no full collection starts by itself
