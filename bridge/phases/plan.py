"""The planning phase: for each workflow being driven, ask the engine what comes next and
apply it — skip what cannot run, cancel what was asked to stop before it reached a cluster,
create the next attempts (SUBMITTING, committed before anything reaches a cluster), finish.

Every change claims its rows inside its own transaction (``UPDATE … WHERE state=…``), so a
decision made on a stale read changes nothing.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from bridge import engine
from bridge.engine import WorkflowState
from bridge.outbox import emit_activities, finish_workflow
from bridge.phases.record import view
from bridge.store import TERMINAL_STATES, ActivityRow, Store, WorkflowHead, WorkflowRow, iso
from runtimes.config import ClusterConfig
from runtimes.render import job_token

log = structlog.get_logger("akobridge.plan")



@dataclass
class Bucket:
    """Submissions per minute for one cluster (a token bucket)."""

    rate_per_min: int
    tokens: float
    at: float

    def peek(self, now: float) -> float:
        """The tokens there would be now (nothing taken)."""
        return min(self.rate_per_min, self.tokens + (now - self.at) * self.rate_per_min / 60)

    def take(self, want: int, now: float) -> int:
        self.tokens = min(self.rate_per_min, self.tokens + (now - self.at) * self.rate_per_min / 60)
        self.at = now
        got = min(want, int(self.tokens))
        self.tokens -= got
        return got


@dataclass(frozen=True)
class Quiet:
    """A workflow whose last pass changed nothing: planning it again changes nothing either
    while its signature stays, before ``wake_at`` (its earliest retry), and while the
    clusters it waits for have no room."""

    signature: tuple[Any, ...]
    wake_at: datetime | None
    blocked_on: frozenset[str]

    def still(self, signature: tuple[Any, ...], now: datetime) -> bool:
        return signature == self.signature and (self.wake_at is None or now < self.wake_at)


@dataclass
class PlanResult:
    """What one planning pass did and what it wants the cluster workers to do."""

    changed: bool = False
    prepare: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """Cluster → workflows to stage in and check images for."""
    stage_out: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """Cluster → finished workflows whose volumes are to be brought back."""
    created: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """Cluster → attempts created by this pass (nothing sent for them yet)."""


def jobdir(cluster: ClusterConfig, instance: str, wf: WorkflowRow, act: ActivityRow,
           number: int) -> str:
    """``<workdir>/<instance>/<workflow>-<id>/<activity>/<attempt>``: the bridge instance
    keeps two state dirs that share a workdir (or a reset one) apart."""
    return f"{cluster.workdir}/{instance}/{wf.name}-{wf.id}/{act.name}/{number}"


class Planner:
    """Plans the driven workflows; the only place new attempts are created."""

    def __init__(self, store: Store, cluster: Callable[[str], ClusterConfig],
                 staged: Callable[[WorkflowRow], bool], clock: Callable[[], datetime]) -> None:
        self.store = store
        self.cluster = cluster
        self.staged = staged
        """Whether a workflow has volumes to bring back at its end."""
        self.clock = clock
        self.hold = False
        """Create no new attempts (a ``cancel`` pass without an owner only stops things)."""
        self._buckets: dict[str, Bucket] = {}
        self._room_seen: dict[str, bool] = {}
        """Cluster → whether it has room for a new job, as far as this pass knows."""
        self._live: dict[str, int] = {}
        """Cluster → its live jobs as this pass counts them (read once, plus the attempts
        it created; jobs ending meanwhile only make it count high, never over the limit)."""
        self._quiet: dict[int, Quiet] = {}
        """Workflows whose last pass changed nothing, and until when that holds."""
        self._wake_at: dict[int, datetime] = {}
        """Quiet workflows with a retry: when it is due."""
        self._blocked: dict[str, set[int]] = {}
        """Cluster → the quiet workflows that wait for room on it."""
        self._loud: set[int] = set()
        """Workflows seen and not quiet: with ``changed`` a pass looks at these without a
        pass over every driven one (tens of thousands when many queue)."""

    def plan(self, wf_ids: AbstractSet[int], heads: Mapping[int, WorkflowHead] | None = None,
             changed: AbstractSet[int] | None = None) -> PlanResult:
        """One pass over the driven workflows. A workflow whose last pass changed nothing is
        skipped while its signature (revision, phases) stays the same, until its earliest
        retry is due, or — when it waits for room on a cluster — until that cluster has room:
        a pass costs one query for all workflows plus the ones that can move (none when the
        caller passes ``heads``, :meth:`Store.running_heads` read this cycle). ``changed``:
        the workflows whose head moved since the last pass (:attr:`RunningHeads.changed`);
        with it the pass looks only at those, the ones not quiet, the ones whose retry is
        due and the ones waiting for a cluster that has room now — no set operation over
        every driven one either (tens of thousands when many queue: a few milliseconds a
        pass each, ten passes a second under a stream of submissions)."""
        result = PlanResult()
        if heads is None:
            heads = self.store.running_heads()
        now = self.clock()
        room: dict[str, bool] = {}
        self._room_seen = room
        self._live = {}
        for wf_id in sorted(self._candidates(wf_ids, changed, heads, now, room)):
            head = heads.get(wf_id)
            if head is None:
                continue
            if not head.prepared:
                result.prepare[head.runtime].add(wf_id)
                self._loud.add(wf_id)  # asked again each pass until it is prepared
                continue
            quiet = self._quiet.get(wf_id)
            if quiet is not None and quiet.still(head.signature, now) and not any(
                    self._room(name, room) for name in quiet.blocked_on):
                continue
            wf = self.store.workflow(wf_id)
            if wf is None or wf.state.terminal:
                continue
            changed_now, quiet = self._plan_one(wf, result, now)
            result.changed |= changed_now
            if quiet is not None and not changed_now and not self.hold:
                self._hush(wf_id, replace(quiet, signature=head.signature))
            else:
                self._wake(wf_id)
                self._loud.add(wf_id)
        # finished ones are forgotten (every loud one is in heads: just rebuilt from them)
        gone = self._quiet.keys() - heads.keys() if changed is None else (
            {w for w in changed if w not in heads})
        for wf_id in gone:
            self._wake(wf_id)
            self._loud.discard(wf_id)
        return result

    def _candidates(self, wf_ids: AbstractSet[int], changed: AbstractSet[int] | None,
                    heads: Mapping[int, WorkflowHead], now: datetime,
                    room: dict[str, bool]) -> AbstractSet[int]:
        """The driven workflows this pass must look at (all of them without ``changed``);
        with ``changed``, built from the small sets only — the loud ones, the changed ones,
        the retries due, the ones waiting for a cluster that has room now."""
        if changed is None:
            self._loud = set(heads.keys()) - self._quiet.keys()
            return wf_ids
        # every RUNNING one not quiet is loud, driven by this pass or not (a later pass may
        # drive it: `run` of one workflow, then of another)
        self._loud |= {w for w in changed if w in heads and w not in self._quiet}
        picked = self._loud | changed
        picked |= {w for w, at in self._wake_at.items() if at <= now}
        for name, waiting in self._blocked.items():
            if waiting and self._room(name, room):
                # the oldest as many as there are free slots: each takes one at least, and
                # one that does not leaves the room to the next ones next pass (not a pass
                # over every waiting one each time a job ends: tens of thousands may wait)
                picked.update(heapq.nsmallest(self._free(name), waiting))
        return {w for w in picked if w in wf_ids}

    def _hush(self, wf_id: int, quiet: Quiet) -> None:
        """Record a quiet workflow and what would wake it (a retry time, a cluster's room)."""
        self._wake(wf_id)
        self._loud.discard(wf_id)
        self._quiet[wf_id] = quiet
        if quiet.wake_at is not None:
            self._wake_at[wf_id] = quiet.wake_at
        for name in quiet.blocked_on:
            self._blocked.setdefault(name, set()).add(wf_id)

    def _wake(self, wf_id: int) -> None:
        quiet = self._quiet.pop(wf_id, None)
        if quiet is None:
            return
        self._wake_at.pop(wf_id, None)
        for name in quiet.blocked_on:
            self._blocked.get(name, set()).discard(wf_id)

    def _room(self, cluster_name: str, seen: dict[str, bool]) -> bool:
        """Whether a new job could go to this cluster now (asked once per pass)."""
        if cluster_name not in seen:
            seen[cluster_name] = self._free(cluster_name) > 0
        return seen[cluster_name]

    def _free(self, cluster_name: str) -> int:
        """New jobs the cluster could take now: its queue limit less its live jobs, and
        no more than the submission rate allows."""
        cluster = self.cluster(cluster_name)
        free = self._limit(cluster) - self._live_count(cluster.name)
        bucket = self._buckets.get(cluster_name)
        if bucket is not None:
            free = min(free, int(bucket.peek(time.monotonic())))
        return max(0, free)

    def _live_count(self, cluster_name: str) -> int:
        """The cluster's live jobs, read once per pass (see ``_live``)."""
        count = self._live.get(cluster_name)
        if count is None:
            count = self._live[cluster_name] = self.store.live_count(cluster_name)
        return count

    def _plan_one(self, wf: WorkflowRow, result: PlanResult,
                  now: datetime) -> tuple[bool, Quiet | None]:
        """Apply the engine's plan; whether anything changed, and the workflow's quiet
        record (None when it asked the workers for something, so it is planned again)."""
        acts = self.store.activities(wf.id)
        changed = self._cancel_waiting(wf, acts, now)
        if changed:
            acts = self.store.activities(wf.id)
        by_name = {a.name: a for a in acts}
        ready: list[ActivityRow] = []
        skips: list[tuple[ActivityRow, str]] = []
        asked = False
        for action in engine.plan([view(a) for a in acts], now):
            if isinstance(action, engine.Submit):
                ready.append(by_name[action.name])
            elif isinstance(action, engine.Skip):
                skips.append((by_name[action.name], action.reason))
            elif self.staged(wf) and wf.staged_out_at is None:
                result.stage_out[wf.runtime].add(wf.id)
                asked = True
            else:
                changed |= self._finish(wf, action.state, now)
        changed |= self._end_waiting(wf, skips, "SKIPPED", ("PENDING",), now)
        blocked: set[str] = set()
        if not self.hold:
            created, blocked = self._new_attempts(wf, ready, result)
            changed |= created
        retries = [a.retry_at for a in acts
                   if a.state.value == "RETRY_WAIT" and a.retry_at is not None]
        quiet = None if asked else Quiet((), min(retries, default=None), frozenset(blocked))
        return changed, quiet

    def _cancel_waiting(self, wf: WorkflowRow, acts: list[ActivityRow], now: datetime) -> bool:
        """Activities asked to stop that have no job (waiting or between retries): CANCELLED."""
        waiting = [a for a in acts if a.cancel_requested
                   and a.state.value in ("PENDING", "RETRY_WAIT")]
        return self._end_waiting(wf, [(a, "cancelled on request") for a in waiting],
                                 "CANCELLED", ("PENDING", "RETRY_WAIT"), now)

    def _end_waiting(self, wf: WorkflowRow, ending: list[tuple[ActivityRow, str]], state: str,
                     was: tuple[str, ...], now: datetime) -> bool:
        """Activities without a job to ``state`` (with their reasons) and their webhooks, in
        one transaction for all (2,000 cancelled ones took 2,000 transactions and 20 s)."""
        if not ending:
            return False
        marks = ",".join("?" * len(was))
        done: list[tuple[int, str]] = []
        with self.store.transaction() as db:
            for act, reason in ending:
                cur = db.execute(
                    f"UPDATE activities SET state=?, reason=?, finished_at=? WHERE id=?"
                    f" AND state IN ({marks})", (state, reason, iso(now), act.id, *was))
                if cur.rowcount:
                    done.append((act.id, act.spec.runtime or wf.runtime))
            emit_activities(self.store, db, wf.id, done, now)
        return bool(done)

    def _finish(self, wf: WorkflowRow, state: WorkflowState, now: datetime) -> bool:
        reason = None
        if wf.stage_out_error:
            state, reason = WorkflowState.FAILED, wf.stage_out_error
        with self.store.transaction() as db:
            left = db.execute(f"SELECT count(*) FROM activities WHERE workflow_id=? AND state"
                              f" NOT IN {TERMINAL_STATES}", (wf.id,)).fetchone()[0]
            done = not left and finish_workflow(self.store, db, wf.id, state, now, reason)
        if done:
            log.info("workflow done", workflow=wf.id, state=state.value)
        return done

    # -- new attempts -----------------------------------------------------------------------
    @staticmethod
    def _limit(cluster: ClusterConfig) -> int:
        limit = cluster.slurm.max_jobs_in_queue
        if cluster.kind == "process":
            limit = min(limit, cluster.max_running or os.cpu_count() or 1)
        return limit

    def capacity(self, cluster: ClusterConfig, want: int) -> int:
        """How many of ``want`` new jobs the queue limit, ``max_running`` and the submit rate
        allow now."""
        room = max(0, self._limit(cluster) - self._live_count(cluster.name))
        bucket = self._buckets.setdefault(cluster.name, Bucket(
            cluster.slurm.max_submit_per_minute, cluster.slurm.max_submit_per_minute,
            time.monotonic()))
        return bucket.take(min(want, room), time.monotonic())

    def _new_attempts(self, wf: WorkflowRow, ready: list[ActivityRow],
                      result: PlanResult) -> tuple[bool, set[str]]:
        """Claim ready activities and commit their SUBMITTING attempts (token, job dir)
        before anything reaches a cluster; whether any was created, and the clusters that
        had no room for the rest."""
        by_cluster: dict[str, list[ActivityRow]] = defaultdict(list)
        for act in ready:
            by_cluster[act.spec.runtime or wf.runtime].append(act)
        created = 0
        blocked: set[str] = set()
        for name, acts in by_cluster.items():
            cluster = self.cluster(name)
            take = acts[: self.capacity(cluster, len(acts))]
            if len(take) < len(acts):
                blocked.add(cluster.name)
                self._room_seen[cluster.name] = False  # the rest of this pass: no room
            if not take:
                continue
            with self.store.transaction() as db:
                for act in take:
                    number = act.attempt + 1
                    cur = db.execute(
                        "UPDATE activities SET state='SUBMITTING', attempt=?, retry_at=NULL,"
                        " exit_code=NULL, reason=NULL, job_id=NULL WHERE id=? AND attempt=?"
                        " AND state IN ('PENDING','RETRY_WAIT') AND cancel_requested=0",
                        (number, act.id, act.attempt))
                    if not cur.rowcount:
                        continue
                    ins = db.execute(
                        "INSERT INTO attempts(activity_id, number, token, cluster, jobdir,"
                        " state) VALUES (?,?,?,?,?, 'SUBMITTING')",
                        (act.id, number, job_token(self.store.instance, wf.id, act.id, number),
                         cluster.name, jobdir(cluster, self.store.instance, wf, act, number)))
                    result.created[cluster.name].add(int(ins.lastrowid or 0))
                    created += 1
                    self._live[cluster.name] = self._live_count(cluster.name) + 1
        return created > 0, blocked
