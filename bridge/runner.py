"""The bridge's cycle: plan the driven workflows, then let each cluster's worker look up,
cancel, poll, submit and stage — each state change one committed transaction.

Crash safety: an attempt is committed as SUBMITTING (with its unique token as the Slurm job
name) before sbatch runs, and its job id is committed right after. An attempt whose fate is
unknown (a restart, a lost connection, an unclear sbatch answer) is looked up by token before
anything else: found → adopted; absent → submitted. No job is lost or doubled, whatever
instant the bridge was killed at. See :mod:`bridge.worker`.

One process drives a state directory (``bridge.owner``); a ``Bridge`` drives only the
workflows it is given (``run([7])`` leaves the others of the store alone).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import structlog

from bridge.phases.plan import Planner, PlanResult
from bridge.phases.prepare import staged_volumes
from bridge.spec.model import Workflow
from bridge.store import Store, WorkflowRow, now_utc
from bridge.worker import ClusterWorker, RoundOrder
from runtimes import Runtime, open_runtime
from runtimes.config import ClusterConfig, Clusters, UnknownCluster
from runtimes.render import RenderError, render
from runtimes.transport import TransportError, TransportRefused

log = structlog.get_logger("akobridge.runner")

ROUND_WAIT_S = 1.0
"""How long a cycle waits for the clusters' rounds before it plans again (a slow cluster's
round goes on in the background; it is not started twice)."""


class SubmissionError(ValueError):
    """A workflow cannot be accepted for running (unknown cluster, unrenderable step)."""


class _Lane:
    """A cluster's worker, its thread and its round in flight."""

    def __init__(self, worker: ClusterWorker, store: Store, pool: ThreadPoolExecutor) -> None:
        self.worker = worker
        self.store = store
        self.pool = pool
        self.round: Future[bool] | None = None


class Bridge:
    """Drives workflows of a store to their end."""

    def __init__(
        self, store: Store, clusters: Clusters, state_dir: Path,
        clock: Callable[[], datetime] = now_utc,
        runtime_factory: Callable[[ClusterConfig], Runtime] = open_runtime,
    ) -> None:
        self.store = store
        self.clusters = clusters
        self.state_dir = state_dir
        self.clock = clock
        self.runtimes: dict[str, Runtime] = {}
        self._runtime_factory = runtime_factory
        self._runtime_lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self.planner = Planner(store, self.cluster, self._staged, clock)
        self.unreachable: dict[str, str] = {}
        """Cluster → why its last round could not reach it."""

    @property
    def hold(self) -> bool:
        """Create and submit no new attempts (only look up, cancel and follow)."""
        return self.planner.hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self.planner.hold = value

    # -- intake -----------------------------------------------------------------------------
    def cluster(self, name: str) -> ClusterConfig:
        try:
            return self.clusters.require(name).resolved(self.state_dir)
        except UnknownCluster as exc:
            raise SubmissionError(str(exc)) from None

    def submit(self, wf: Workflow) -> int:
        """Check that every step can run where it asks to, then store the workflow."""
        for step in wf.steps:
            cfg = self.cluster(step.runtime or wf.runtime)
            try:
                render(wf, step, cfg, workflow_id=0, token="akb-check", jobdir="/check",
                       attempt=1)
            except RenderError as exc:
                raise SubmissionError(str(exc)) from None
        wf_id = self.store.add_workflow(wf)
        log.info("workflow accepted", workflow=wf_id, name=wf.name, activities=len(wf.steps))
        return wf_id

    # -- runtimes and workers -----------------------------------------------------------------
    def runtime(self, name: str) -> Runtime:
        """The (one, shared) runtime of a cluster, opened on first use."""
        with self._runtime_lock:
            if name not in self.runtimes:
                self.runtimes[name] = self._runtime_factory(self.cluster(name))
            return self.runtimes[name]

    def _lane(self, name: str) -> _Lane:
        if name not in self._lanes:
            pool = ThreadPoolExecutor(1, thread_name_prefix=f"akb-{name}")
            store = pool.submit(Store, self.store.path).result()  # the thread's own connection
            worker = ClusterWorker(name, store, self.runtime, self.cluster, self.clock)
            self._lanes[name] = _Lane(worker, store, pool)
        return self._lanes[name]

    def _staged(self, wf: WorkflowRow) -> bool:
        return bool(staged_volumes(wf, self.cluster(wf.runtime)))

    def close(self) -> None:
        """Wait for rounds in flight, then close connections."""
        for lane in self._lanes.values():
            lane.pool.submit(lane.store.close).result()
            lane.pool.shutdown(wait=True)
        self._lanes.clear()
        for rt in self.runtimes.values():
            rt.close()

    # -- the cycle ----------------------------------------------------------------------------
    def cycle(self, wf_ids: Iterable[int] | None = None) -> bool:
        """Plan, run one round per cluster (waiting up to :data:`ROUND_WAIT_S`); True if
        anything changed. ``wf_ids``: the workflows to drive (default: all active ones)."""
        driven = self.store.active_ids(wf_ids)
        changed = self._collect()
        plan = self.planner.plan(driven)
        changed |= plan.changed
        for name, ids in plan.created.items():
            self._lane(name).worker.mark_absent(ids)
        for name in self._clusters_wanted(driven, plan):
            lane = self._lane(name)
            if lane.round is None:
                order = RoundOrder(driven, plan.prepare.get(name, set()),
                                   plan.stage_out.get(name, set()), self.hold)
                lane.round = lane.pool.submit(lane.worker.round, order)
        pending = [lane.round for lane in self._lanes.values() if lane.round is not None]
        deadline = time.monotonic() + ROUND_WAIT_S
        for fut in pending:
            with contextlib.suppress(Exception):  # looked at in _collect
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
        return self._collect() or changed

    def _clusters_wanted(self, driven: set[int], plan: PlanResult) -> set[str]:
        names = {a.cluster for a in self.store.live_attempts(driven)}
        names |= {n for n, ids in plan.prepare.items() if ids}
        names |= {n for n, ids in plan.stage_out.items() if ids}
        return names

    def _collect(self) -> bool:
        """Results of finished rounds; a cluster that could not be reached is noted (and
        tried again next cycle), anything else is a bug and is raised."""
        changed = False
        for name, lane in self._lanes.items():
            fut = lane.round
            if fut is None or not fut.done():
                continue
            lane.round = None
            exc = fut.exception()
            if exc is None:
                changed |= fut.result()
                self.unreachable.pop(name, None)
            elif isinstance(exc, TransportRefused):
                raise exc
            elif isinstance(exc, TransportError):
                if self.unreachable.get(name) != str(exc):
                    log.warning("cannot reach cluster", cluster=name, error=str(exc))
                self.unreachable[name] = str(exc)
            else:
                raise exc
        return changed

    def run(self, wf_ids: Iterable[int] | None = None, *, idle_s: float | None = None,
            on_cycle: Callable[[], None] | None = None,
            timeout_s: float | None = None) -> None:
        """Cycle until the given workflows (default: all active ones) have finished."""
        wanted = set(wf_ids) if wf_ids is not None else self.store.active_ids()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            changed = self.cycle(wanted)
            if on_cycle:
                on_cycle()
            if not self.store.active_ids(wanted):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("workflows still running after the timeout")
            time.sleep(0.01 if changed else idle_s or self._idle())

    def _idle(self) -> float:
        """Pause between quiet cycles: the shortest ``marker_interval`` of the clusters in use
        (reading exit-code files costs no controller RPC; squeue has its own rate limit)."""
        intervals = [self.cluster(n).slurm.marker_interval for n in self._lanes]
        return min(intervals, default=0.25)


__all__ = ["Bridge", "SubmissionError"]
