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

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime
from pathlib import Path

import structlog

from bridge import logs, metrics
from bridge.jobs import render_step
from bridge.phases.plan import Planner, PlanResult
from bridge.phases.prepare import staged_volumes, volumes_to_stage
from bridge.spec.model import Workflow
from bridge.store import RunningHeads, Store, WorkflowRow, now_utc
from bridge.worker import ClusterWorker, RoundOrder
from runtimes import Runtime, open_runtime
from runtimes.config import ClusterConfig, Clusters, UnknownCluster
from runtimes.render import RenderError
from runtimes.transport import TransportError, TransportRefused

log = structlog.get_logger("akobridge.runner")

USAGE_TAIL_S = 6.0
"""How long a run whose workflows ended waits for the last jobs' resource use (sacct)."""
ROUND_WAIT_S = 1.0
"""How long a cycle waits for the clusters' rounds before it plans again (a slow cluster's
round goes on in the background; it is not started twice)."""
CLOSE_WAIT_S = 15.0
REFUSED_PAUSE_S = 60.0
"""How long the daemon leaves a cluster alone after it refused the login."""
"""How long :meth:`Bridge.close` waits for the rounds in flight."""


class SubmissionError(ValueError):
    """A workflow cannot be accepted for running (unknown cluster, unrenderable step)."""


class _Lane:
    """A cluster's worker and its round in flight, on a daemon thread of its own (a round
    stuck on a hung cluster never keeps the process from exiting)."""

    def __init__(self, worker: ClusterWorker, store: Store) -> None:
        self.worker = worker
        self.store = store
        self.thread: threading.Thread | None = None
        self.outcome: bool | BaseException = False

    def start(self, order: RoundOrder) -> None:
        def go() -> None:
            started = time.monotonic()
            try:
                self.outcome = self.worker.round(order)
            except BaseException as exc:  # noqa: BLE001 - handed to the cycle's thread
                self.outcome = exc
            metrics.POLL_SECONDS.labels(self.worker.name).observe(time.monotonic() - started)

        self.thread = threading.Thread(target=go, name=f"akb-{self.worker.name}", daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self.thread is not None

    def finished(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


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
        self._runtime_locks: dict[str, threading.Lock] = {}
        self._lanes: dict[str, _Lane] = {}
        self.planner = Planner(store, self.cluster, self._staged, clock)
        self.heads = RunningHeads(store)
        """The RUNNING workflows' heads, read incrementally each cycle."""
        self.unreachable: dict[str, str] = {}
        """Cluster → why its last round could not reach it."""
        self.raise_refusals = True
        """A refused login (bad key, changed host key) ends :meth:`run` (the CLI); the daemon
        sets False: the cluster is noted unreachable and left alone for
        :data:`REFUSED_PAUSE_S` (or until :meth:`reload`)."""
        self._refused_until: dict[str, float] = {}
        self._stale: set[str] = set()
        """Clusters whose config changed while a round was using their runtime."""
        self._resolved: dict[str, tuple[Clusters, ClusterConfig]] = {}
        self.secrets: Mapping[str, str] = {}
        """Secret name → value, for steps that name secrets (the daemon's secrets file);
        read at each submission, never stored."""

    @property
    def hold(self) -> bool:
        """Create and submit no new attempts (only look up, cancel and follow)."""
        return self.planner.hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self.planner.hold = value

    # -- intake -----------------------------------------------------------------------------
    def cluster(self, name: str) -> ClusterConfig:
        """The config of the cluster (or alias) ``name``, resolved against the state dir;
        built once per name and config set (every phase asks, many times a cycle)."""
        clusters = self.clusters
        cached = self._resolved.get(name)
        if cached is not None and cached[0] is clusters:
            return cached[1]
        try:
            cfg = clusters.require(name).resolved(self.state_dir)
            self._resolved[name] = (clusters, cfg)
            return cfg
        except UnknownCluster as exc:
            raise SubmissionError(str(exc)) from None

    def submit(self, wf: Workflow, intake_key: str | None = None,
               store: Store | None = None) -> int:
        """Check that every step can run where it asks to, then store the workflow with the
        retry defaults of each step's cluster where the file set none (the stored policy is
        the one applied, whatever the cluster config says later). ``store``: the calling
        thread's connection (default: the bridge's own)."""
        ((wf_id, _),) = self.store_checked([(self.check(wf), intake_key)], store)
        return wf_id

    def check(self, wf: Workflow) -> Workflow:
        """The workflow as it will be stored: every step renders on its cluster (else a
        :class:`SubmissionError`), retry defaults from each step's cluster filled in."""
        for step in wf.steps:
            cfg = self.cluster(step.runtime or wf.runtime)
            try:
                render_step(wf, step, cfg, workflow_id=0, token="akb-check", jobdir="/check",
                            attempt=1)
            except RenderError as exc:
                raise SubmissionError(str(exc)) from None
        return wf.with_retry_defaults(lambda name: self.cluster(name).retry.policy())

    def store_checked(self, items: list[tuple[Workflow, str | None]],
                      store: Store | None = None) -> list[tuple[int, bool]]:
        """Store workflows that passed :meth:`check` (with their intake keys) in ONE
        transaction; per workflow its id and whether it is new (False: its key was known)."""
        stored = (store or self.store).add_workflows(
            [(wf, key, not self._to_prepare(wf)) for wf, key in items])
        with logs.together():
            for (wf, _), (wf_id, new) in zip(items, stored, strict=True):
                if new:
                    log.info("workflow accepted", workflow=wf_id, name=wf.name,
                             activities=len(wf.steps))
        return stored

    # -- runtimes and workers -----------------------------------------------------------------
    def runtime(self, name: str) -> Runtime:
        """The (one, shared) runtime of a cluster, opened on first use."""
        with self._runtime_lock:  # one lock per cluster: a slow connect blocks no other
            lock = self._runtime_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self.runtimes:
                self.runtimes[name] = self._runtime_factory(self.cluster(name))
            return self.runtimes[name]

    def _lane(self, name: str) -> _Lane:
        if name not in self._lanes:
            store = Store(self.store.path, handed_over=True)  # the worker's own connection
            worker = ClusterWorker(name, store, self.runtime, self.cluster, self.clock,
                                   secrets=lambda: self.secrets)
            self._lanes[name] = _Lane(worker, store)
        return self._lanes[name]

    def _to_prepare(self, wf: Workflow) -> bool:
        """Whether a workflow has volumes to stage in or images to check before it starts
        (what :func:`~bridge.phases.prepare.prepare` does on its cluster's worker)."""
        return bool(wf.image or any(s.image for s in wf.steps)
                    or volumes_to_stage(wf, self.cluster(wf.runtime)))

    def _staged(self, wf: WorkflowRow) -> bool:
        return bool(staged_volumes(wf, self.cluster(wf.runtime)))

    def reload(self, clusters: Clusters) -> list[str]:
        """Use new cluster configs; the runtimes (SSH connections) of clusters whose config
        changed or went away are closed (after their round in flight), the others kept.
        Returns the names of the clusters that changed."""
        old, self.clusters = self.clusters, clusters
        changed = []
        for name in sorted(set(self.runtimes) | set(self._refused_until)):
            before, after = old.get(name), clusters.get(name)
            if before is None or after is None or before != after:
                changed.append(name)
        for name in changed:
            self._refused_until.pop(name, None)
            self.unreachable.pop(name, None)
            lane = self._lanes.get(name)
            if lane is not None and lane.busy:
                self._stale.add(name)
            else:
                self._drop_runtime(name)
        return changed

    def _drop_runtime(self, name: str) -> None:
        rt = self.runtimes.pop(name, None)
        if rt is not None:
            try:
                rt.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken link is best effort
                log.info("closing a runtime failed", cluster=name, error=str(exc))

    def close(self) -> None:
        """Let rounds in flight finish (up to :data:`CLOSE_WAIT_S`), then close connections.
        A round still stuck on a hung cluster is left behind: every change it made is
        committed, and what it was doing is looked up again on the next start."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        stuck = set()
        for name, lane in self._lanes.items():
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
                if lane.thread.is_alive():
                    stuck.add(name)
                    log.warning("leaving a cluster round unfinished", cluster=name)
                    continue
            lane.store.close()
        self._lanes.clear()
        for name, rt in self.runtimes.items():
            if name not in stuck:
                rt.close()

    # -- the cycle ----------------------------------------------------------------------------
    def cycle(self, wf_ids: Iterable[int] | None = None) -> bool:
        """Plan, run one round per cluster (waiting up to :data:`ROUND_WAIT_S`); True if
        anything changed. ``wf_ids``: the workflows to drive (default: all active ones)."""
        changed = self._collect()
        heads = self.heads.read()  # the changed RUNNING rows; serves both
        # all RUNNING ones: the heads' own keys, not a copy of tens of thousands each cycle
        driven = heads.keys() if wf_ids is None else heads.keys() & set(wf_ids)
        try:
            plan = self.planner.plan(driven, heads, self.heads.changed)
        except BaseException:  # the changes it was given are unplanned: plan all next time
            self.heads.forget()
            raise
        changed |= plan.changed
        for name, ids in plan.created.items():
            self._lane(name).worker.mark_absent(ids)
        snapshot: frozenset[int] | None = None  # a round may outlast this cycle's heads
        for name in self._clusters_wanted(driven, plan):
            lane = self._lane(name)
            if not lane.busy:
                snapshot = frozenset(driven) if snapshot is None else snapshot
                lane.start(RoundOrder(snapshot, plan.prepare.get(name, set()),
                                      plan.stage_out.get(name, set()), self.hold))
        deadline = time.monotonic() + ROUND_WAIT_S
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
        return self._collect() or changed

    def _clusters_wanted(self, driven: AbstractSet[int], plan: PlanResult) -> set[str]:
        names = {a.cluster for a in self.store.live_attempts(driven)}
        names |= {n for n, ids in plan.prepare.items() if ids}
        names |= {n for n, ids in plan.stage_out.items() if ids}
        now = time.monotonic()
        return {n for n in names if self._refused_until.get(n, 0.0) <= now}

    def _collect(self) -> bool:
        """Results of finished rounds; a cluster that could not be reached is noted (and
        tried again next cycle), anything else is a bug and is raised."""
        changed = False
        for name, lane in self._lanes.items():
            if not lane.finished():
                continue
            lane.thread, outcome = None, lane.outcome
            if name in self._stale:
                self._stale.discard(name)
                self._drop_runtime(name)
            if isinstance(outcome, bool):
                changed |= outcome
                self.unreachable.pop(name, None)
            elif isinstance(outcome, TransportRefused) and self.raise_refusals:
                raise outcome
            elif isinstance(outcome, TransportRefused):
                if self.unreachable.get(name) != str(outcome):
                    log.error("cluster refused the login; trying again later", cluster=name,
                              error=str(outcome), pause_s=REFUSED_PAUSE_S)
                self.unreachable[name] = f"refused: {outcome}"
                self._refused_until[name] = time.monotonic() + REFUSED_PAUSE_S
                self._drop_runtime(name)
            elif isinstance(outcome, TransportError):
                if self.unreachable.get(name) != str(outcome):
                    log.warning("cannot reach cluster", cluster=name, error=str(outcome))
                self.unreachable[name] = str(outcome)
            else:
                raise outcome
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
                self._await_usage(USAGE_TAIL_S)
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("workflows still running after the timeout")
            time.sleep(0.01 if changed else idle_s or self.idle_s())

    def _await_usage(self, wait_s: float) -> None:
        """The resource use of the last jobs, which accounting reports a moment after their
        end (a daemon gets it in its next rounds; a run that ends waits up to ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self._collect()
            idle = [lane for lane in self._lanes.values()
                    if not lane.busy and lane.worker.awaiting_usage]
            if not idle:
                return
            for lane in idle:
                try:
                    lane.worker.closing_usage()
                except TransportError as exc:  # it stays unknown; the run's result stands
                    log.info("no usage from the cluster", cluster=lane.worker.name,
                             error=str(exc))
                    return
            time.sleep(0.25)

    def idle_s(self) -> float:
        """Pause between quiet cycles: the shortest ``marker_interval`` of the clusters in use
        (reading exit-code files costs no controller RPC; squeue has its own rate limit)."""
        intervals = [self.cluster(n).slurm.marker_interval for n in self._lanes]
        return min(intervals, default=0.25)


__all__ = ["Bridge", "SubmissionError"]
