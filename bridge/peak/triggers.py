"""Peak triggers that start executions by themselves: ``{cron: "…"}`` as one APScheduler job
per definition (:class:`CronTriggers`) and the shared :func:`start` a webhook POST uses too.

The schedule lives in the store, not in APScheduler: the jobs are rebuilt from the definitions
when the daemon starts and re-read by :meth:`CronTriggers.sync` after each change. A fire for
the slot ``S`` of definition ``N`` executes with the request id ``cron:N:<S as ISO UTC>``, so
firing the same slot again (a restart within the grace) finds the execution the first fire
started instead of starting a second one.

After downtime there is never a burst. A restart schedules each definition from its next
slot and, before that, fires at most ONE past slot: the latest one at most
:data:`MISFIRE_GRACE_S` old (``peak.cron_catch_up`` off, the default: a restart right after a
slot still runs it) or at most ``peak.cron_catch_up_grace`` old (catch-up on: every slot
missed in that window is coalesced into that one run). Never a slot from before the
definition's last change, pause or resume. The store is what makes this hold across restarts:
the fired slot's request id finds the execution an earlier fire of it started (before a crash,
or before another restart), so a slot runs once however often the daemon restarts. While the
daemon runs, APScheduler coalesces late fires of a job into one, dropped when later than the
same grace.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger

from bridge.peak import executions
from bridge.peak import store as peak_store
from bridge.peak.catalogue import CatalogueError
from bridge.peak.convert import Catalogue
from bridge.peak.cron import cron_trigger
from bridge.peak.definition import Definition
from bridge.peak.executions import ExecuteError
from bridge.runner import SubmissionError
from bridge.store import Store

log = structlog.get_logger("akobridge.peak.triggers")

MISFIRE_GRACE_S = 15
"""A slot is fired at most this late (a busy or just restarted daemon); older ones are skipped."""
LOOKBACK = timedelta(seconds=59)
"""A fire looks this far back for the slot it is for (crontab slots are a minute apart)."""
JOB_PREFIX = "peak-cron:"


def start(service: Any, catalogue: Catalogue, store: Store, wf: peak_store.PeakWorkflow,
          body: object, *, request_id: str | None, trigger: str) -> str:
    """Start an execution of ``wf`` on this thread's ``store`` (or find the one ``request_id``
    started) and wake the bridge loop; the execution id. Raises ExecuteError, CatalogueError
    or SubmissionError for a body or definition that cannot run."""
    found = executions.execute(
        store, lambda w, key: service.bridge.submit(w, key, store=store), catalogue, wf.id,
        wf.definition, body, request_id=request_id, trigger=trigger)
    service.wake()
    return found


def schedule_of(defn: Definition) -> BaseTrigger | None:
    """The APScheduler trigger of every cron trigger of ``defn`` (``None``: no cron)."""
    crons = [cron_trigger(t.cron) for t in defn.triggers or () if t.cron]
    if not crons:
        return None
    return crons[0] if len(crons) == 1 else OrTrigger(crons)


def latest_slot(trigger: BaseTrigger, since: datetime, now: datetime) -> datetime | None:
    """The latest fire time of ``trigger`` in ``[since, now]`` (``None``: none there), in a
    few dozen trigger look-ups however many slots the window holds (a binary search on "the
    first slot at or after ``x`` is ``<= now``", which holds up to the latest slot)."""
    low: datetime | None = trigger.get_next_fire_time(None, since)
    if low is None or low > now:
        return None
    high = now + timedelta(seconds=1)  # low: a slot <= now; no slot in [high, ...) is <= now
    while high - low > timedelta(seconds=1):  # cron slots are whole seconds apart
        mid = low + (high - low) / 2
        found = trigger.get_next_fire_time(None, mid)
        if found is not None and found <= now:
            low = found
        else:
            high = mid
    return low


def slot_id(when: datetime) -> str:
    """``2025-01-01T12:00:00Z``: the slot's part of a cron request id."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CronTriggers:
    """The daemon's cron jobs: one per ``Available`` definition with a cron trigger."""

    def __init__(self, scheduler: Any, service: Any, catalogue: Catalogue,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), *,
                 catch_up: bool = False, catch_up_grace_s: float = 3600.0) -> None:
        self.scheduler, self.service, self.catalogue = scheduler, service, catalogue
        self.clock = clock
        self.grace_s = math.ceil(catch_up_grace_s) if catch_up else MISFIRE_GRACE_S
        """How late a slot may still be fired (at start: how far back the one slot fired
        may be)."""
        self._lock = threading.Lock()  # a sync's read and its job change go together

    def start(self) -> int:
        """Add the job of every scheduled definition (a slot within the grace fires now);
        how many."""
        store: Store = self.service.store
        ids = [int(r[0]) for r in store.db.execute(
            "SELECT id FROM peak_workflows WHERE status='Available' ORDER BY id")]
        added = sum(self._apply(store, wf_id, catch_up=True) for wf_id in ids)
        log.info("cron triggers scheduled", jobs=added)
        return added

    def sync(self, wf_id: int) -> None:
        """Re-read definition ``wf_id`` (after create, PUT, delete, pause, resume) and add,
        replace or remove its job. Slots already past are not fired."""
        self._apply(self.service.store, wf_id, catch_up=False)

    def _apply(self, store: Store, wf_id: int, *, catch_up: bool) -> bool:
        job_id = f"{JOB_PREFIX}{wf_id}"
        with self._lock:
            wf = peak_store.get(store, wf_id)
            try:
                trigger = schedule_of(wf.definition) if wf and wf.status == "Available" else None
            except ValueError as exc:  # stored before a stricter cron check: not scheduled
                log.warning("cron trigger not scheduled", workflow=wf_id, error=str(exc))
                trigger = None
            if wf is None or trigger is None:
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(job_id)
                return False
            if catch_up:
                now = self.clock()
                # not a slot that passed while the definition was paused or different (a
                # resume or PUT after it marks updated_at)
                since = max(now - timedelta(seconds=self.grace_s), wf.updated_at)
                missed = latest_slot(trigger, since, now)
                if missed is not None:
                    log.info("cron catching up", workflow=wf_id, slot=slot_id(missed))
                    self.scheduler.add_job(
                        self._fire, "date", run_date=now, args=(wf_id, missed),
                        id=f"{job_id}:catch-up", name=f"peak cron {wf_id} catch-up",
                        replace_existing=True, misfire_grace_time=None)
            self.scheduler.add_job(
                self._fire, trigger, args=(wf_id,), id=job_id, name=f"peak cron {wf_id}",
                replace_existing=True, coalesce=True, max_instances=1,
                misfire_grace_time=self.grace_s)
            return True

    def _fire(self, wf_id: int, slot: datetime | None = None) -> None:
        """One slot of ``wf_id`` (``None``: the latest one due, for a late fire the latest
        within the grace): execute it, once per slot, if the definition still runs and was not
        changed after the slot."""
        store: Store = self.service.store  # this job thread's connection
        wf = peak_store.get(store, wf_id)
        trigger = schedule_of(wf.definition) if wf and wf.status == "Available" else None
        if wf is None or trigger is None:
            return  # paused, deleted or changed since the job was scheduled
        now = self.clock()
        if slot is None:
            back = max(LOOKBACK, timedelta(seconds=self.grace_s))
            slot = latest_slot(trigger, now - back, now)
        if slot is None:
            log.warning("cron fire matches no slot", workflow=wf_id, at=now.isoformat())
            return
        if slot < wf.updated_at:
            return  # a PUT, pause or resume came after the slot: it is not run
        request_id = f"cron:{wf_id}:{slot_id(slot)}"
        try:
            execution = start(self.service, self.catalogue, store, wf, None,
                              request_id=request_id, trigger="cron")
        except (ExecuteError, CatalogueError, SubmissionError) as exc:
            log.warning("cron execution cannot start", workflow=wf_id, slot=slot_id(slot),
                        error=str(exc))
            return
        log.info("cron fired", workflow=wf_id, slot=slot_id(slot), execution=execution)


__all__ = ["JOB_PREFIX", "MISFIRE_GRACE_S", "CronTriggers", "latest_slot", "schedule_of",
           "slot_id", "start"]
