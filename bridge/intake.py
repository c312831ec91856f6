"""Group commit of the API's submissions: each request is checked on the API's event loop
(a large one on a worker thread), then waits for ONE writer thread that stores every
workflow waiting at that moment in one transaction.

Under a stream of requests this replaces one worker-thread hop, one write-lock wait and one
commit per request by one of each per batch; a batch is as large as what arrived while the
previous one was being written, so a single client still gets its reply after one commit.
A reply (201) is sent only after its workflow's transaction committed; a batch that fails
fails every request in it, and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from bridge import metrics
from bridge.service import Service
from bridge.spec import Workflow

INLINE_CHARS = 16 * 1024
"""Workflow texts up to this size are parsed and checked on the event loop (well under a
millisecond for the common few activities); larger ones on a worker thread, so a big upload
never holds the other requests."""
MAX_BATCH = 256
"""Most workflows stored in one transaction."""


@dataclass
class _Waiting:
    workflow: Workflow
    intake_key: str | None
    reply: asyncio.Future[int]


class GroupIntake:
    """``await submit(...)`` from the API's event loop; one instance per daemon."""

    def __init__(self, service: Service, intake: str = "api") -> None:
        self.service = service
        self.intake = intake
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="akb-intake")
        self._waiting: list[_Waiting] = []
        self._flush: asyncio.Task[None] | None = None

    async def submit(self, text: str, *, intake_key: str | None = None,
                     runtime: str | None = None) -> tuple[int, Workflow]:
        """Check and store one workflow; its id (an earlier one for a known key).
        Raises :class:`~bridge.service.ServiceError` for a workflow that cannot be taken."""
        if len(text) <= INLINE_CHARS:
            wf = self.service.prepare(text, runtime)
        else:
            wf = await run_in_threadpool(self.service.prepare, text, runtime)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(wf, intake_key, loop.create_future())
        # read the outcome even when nobody waits any more (no "never retrieved" warning)
        waiting.reply.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append(waiting)
        if self._flush is None or self._flush.done():
            self._flush = loop.create_task(self._write_all())
        # the write goes on if this request is cancelled (its client left): shielded
        return await asyncio.shield(waiting.reply), wf

    async def _write_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            items = [(w.workflow, w.intake_key) for w in batch]
            metrics.INTAKE_BATCH.observe(len(items))
            try:
                stored = await loop.run_in_executor(self._writer, self.service.store_prepared,
                                                    items, self.intake)
            except Exception as exc:  # noqa: BLE001 - each request answers it (logged there)
                for w in batch:
                    if not w.reply.done():
                        w.reply.set_exception(exc)
                continue
            for w, (wf_id, _new) in zip(batch, stored, strict=True):
                if not w.reply.done():
                    w.reply.set_result(wf_id)

    def close(self) -> None:
        """Stop the writer thread (after the batch it is writing)."""
        with contextlib.suppress(RuntimeError):
            self._writer.shutdown(wait=True, cancel_futures=False)
