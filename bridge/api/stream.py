"""Server-sent events: the daemon publishes state changes, each ``GET /events`` client gets
its own bounded queue (a slow client loses its oldest events, never slows the bridge)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

KEEPALIVE_S = 15.0
QUEUE_SIZE = 1000


class EventHub:
    """Fan-out of change events from any thread to the subscribers on the API's loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.watched_since: datetime | None = None
        """When the subscribers of now began (the first of them subscribed); None without
        any. Changes before it need not be published: a new client reads the state first."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Thread-safe; a no-op without subscribers."""
        if not events or not self._subs or self._loop is None:
            return
        with self._lock:
            numbered = [{"id": next(self._seq), **e} for e in events]
        self._loop.call_soon_threadsafe(self._deliver, numbered)

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        for q in list(self._subs):
            for e in events:
                if q.full():
                    q.get_nowait()  # drop the oldest for this slow client
                q.put_nowait(e)

    async def stream(self, workflow: int | None, once: bool = False) -> AsyncIterator[str]:
        """``text/event-stream`` lines for events of ``workflow`` (all when None)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        if not self._subs:
            self.watched_since = datetime.now(UTC)
        self._subs.add(q)
        try:
            yield ": akobridge events\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if workflow is not None and event.get("workflow_id") != workflow:
                    continue
                yield (f"id: {event['id']}\nevent: {event['type']}\n"
                       f"data: {json.dumps(event, separators=(',', ':'))}\n\n")
                if once:
                    return
        finally:
            self._subs.discard(q)
            if not self._subs:
                self.watched_since = None
