"""The bridge's cycle: poll the runtimes, fold observations into the store through the engine,
plan, and submit — each state change one committed transaction.

Crash safety: an attempt is committed as SUBMITTING (with its unique token as the Slurm job
name) before sbatch runs, and its job id is committed right after. On start-up every
SUBMITTING attempt is looked up by token: found → adopted; absent → submitted. No job is lost
or doubled, whatever instant the bridge was killed at.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from bridge import engine
from bridge.engine import ActivityView, WorkflowState
from bridge.events import ACTIVITY_COMPLETED, WORKFLOW_DONE, activity_payload, workflow_payload
from bridge.spec.model import Volume, Workflow
from bridge.store import ActivityRow, AttemptRow, Store, WorkflowRow, iso, now_utc
from runtimes import JobRequest, JobState, JobStatus, Runtime, TrackedJob, open_runtime
from runtimes.config import ClusterConfig, Clusters, UnknownCluster
from runtimes.images import prepare_images
from runtimes.render import RenderError, job_token, render
from runtimes.transport import TransportError

log = structlog.get_logger("akobridge.runner")


SUBMIT_CHUNK = 32
"""Job ids are committed after every chunk of this many submissions."""


class SubmissionError(ValueError):
    """A workflow cannot be accepted for running (unknown cluster, unrenderable step)."""


@dataclass
class _Bucket:
    """Submissions per minute for one cluster (a token bucket)."""

    rate_per_min: int
    tokens: float
    at: float

    def take(self, want: int, now: float) -> int:
        self.tokens = min(self.rate_per_min, self.tokens + (now - self.at) * self.rate_per_min / 60)
        self.at = now
        got = min(want, int(self.tokens))
        self.tokens -= got
        return got


class Bridge:
    """Drives every RUNNING workflow in a store to its end."""

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
        self._buckets: dict[str, _Bucket] = {}
        self._reconciled = False
        self._unreachable: set[str] = set()
        """Clusters with unconfirmed submissions to look up before submitting more."""

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

    # -- the cycle --------------------------------------------------------------------------
    def runtime(self, name: str) -> Runtime:
        if name not in self.runtimes:
            self.runtimes[name] = self._runtime_factory(self.cluster(name))
        return self.runtimes[name]

    def close(self) -> None:
        for rt in self.runtimes.values():
            rt.close()

    def cycle(self) -> bool:
        """One round: reconcile (first time), poll, plan, submit. True if anything changed."""
        if not self._reconciled:
            self._reconciled = self._reconcile()
        changed = self._poll()
        changed |= self._advance()
        changed |= self._submit_pending()
        return changed

    def run(self, wf_ids: Iterable[int] | None = None, *, idle_s: float | None = None,
            on_cycle: Callable[[], None] | None = None,
            timeout_s: float | None = None) -> None:
        """Cycle until the given workflows (default: all active ones) have finished."""
        wanted = set(wf_ids) if wf_ids is not None else None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            changed = self.cycle()
            if on_cycle:
                on_cycle()
            active = {w.id for w in self.store.workflows(active_only=True, limit=1_000_000)}
            if not (active & wanted if wanted is not None else active):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("workflows still running after the timeout")
            time.sleep(0.01 if changed else idle_s or self._idle())

    def _idle(self) -> float:
        """Pause between quiet cycles: the shortest ``marker_interval`` of the clusters in use
        (reading exit-code files costs no controller RPC; squeue has its own rate limit)."""
        intervals = [self.cluster(n).slurm.marker_interval for n in self.runtimes]
        return min(intervals, default=0.25)

    # -- reconcile --------------------------------------------------------------------------
    def _reconcile(self) -> bool:
        """Adopt jobs whose submission was not confirmed (a crash, a lost connection).

        True when every cluster answered; attempts not found stay SUBMITTING and are
        submitted by this cycle.
        """
        self._unreachable.clear()
        unconfirmed = [a for a in self.store.live_attempts() if a.job_id is None]
        for cluster, attempts in _by_cluster(unconfirmed).items():
            try:
                found = self.runtime(cluster).find(
                    [TrackedJob(a.token, a.jobdir) for a in attempts]
                )
            except TransportError as exc:
                log.warning("cannot reach cluster", cluster=cluster, error=str(exc))
                self._unreachable.add(cluster)
                continue
            for a in attempts:
                if a.token in found:
                    log.info("adopted job after restart", token=a.token, job=found[a.token])
                    self._record_submitted([(a, found[a.token])])
        return not self._unreachable

    # -- poll -------------------------------------------------------------------------------
    def _poll(self) -> bool:
        live = [a for a in self.store.live_attempts() if a.job_id]
        changed = False
        for cluster, attempts in _by_cluster(live).items():
            try:
                statuses = self.runtime(cluster).poll(
                    [TrackedJob(a.token, a.jobdir, a.job_id) for a in attempts]
                )
            except TransportError as exc:
                log.warning("cannot reach cluster", cluster=cluster, error=str(exc))
                continue
            for a in attempts:
                status = statuses.get(str(a.job_id))
                if status is not None and (status.state.value != a.state.value
                                           or status.state.terminal):
                    self._observe(a, status)
                    changed = True
        return changed

    def _observe(self, attempt: AttemptRow, status: JobStatus) -> None:
        now = self.clock()
        act = self.store.activity(attempt.activity_id)
        view = _view(act)
        tr = engine.observe(view, status, now)
        started = status.started_at or (now if status.state.value != "QUEUED" else None)
        final = status.state.terminal
        finished = (status.finished_at or now) if final else None
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attempts SET state=?, exit_code=?, reason=?,"
                " started_at=coalesce(?, started_at), finished_at=? WHERE id=?",
                (status.state.value, status.exit_code, status.reason, iso(started),
                 iso(finished), attempt.id),
            )
            db.execute(
                "UPDATE activities SET state=?, exit_code=?, reason=?, retry_at=?,"
                " started_at=coalesce(?, started_at), finished_at=? WHERE id=?",
                (tr.state.value, status.exit_code, status.reason, iso(tr.retry_at),
                 iso(started), iso(finished if tr.state.terminal else None), act.id),
            )
            if tr.state.terminal:
                self._emit_activity(db, act.workflow_id, act.id, attempt.cluster)
        log.info("job state", token=attempt.token, job=attempt.job_id, state=status.state.value,
                 exit_code=status.exit_code, activity=tr.state.value)

    # -- plan -------------------------------------------------------------------------------
    def _advance(self) -> bool:
        changed = False
        now = self.clock()
        for wf in self.store.workflows(active_only=True, limit=1_000_000):
            if wf.prepared_at is None:
                changed |= self._prepare(wf)
                continue
            acts = self.store.activities(wf.id)
            by_name = {a.name: a for a in acts}
            ready: list[ActivityRow] = []
            for action in engine.plan([_view(a) for a in acts], now):
                if isinstance(action, engine.Submit):
                    ready.append(by_name[action.name])
                    continue
                if isinstance(action, engine.Skip):
                    self._skip(wf, by_name[action.name], action.reason)
                elif self._stage_out(wf):
                    self._finish(wf, action.state)
                changed = True
            changed |= self._new_attempts(wf, ready)
        return changed

    # -- before the first and after the last activity ---------------------------------------
    def _staged_volumes(self, wf: WorkflowRow) -> list[Volume]:
        """Volumes whose two sides differ: a remote cluster, or a local copy A → B."""
        cluster = self.cluster(wf.runtime)
        return [v for v in wf.spec.volumes
                if cluster.transport == "ssh" or os.path.normpath(v.source)
                != os.path.normpath(v.target)]

    def _prepare(self, wf: WorkflowRow) -> bool:
        """Stage the volumes in, then check (and pull) the images; fail the workflow early
        when something is missing. False while a cluster cannot be reached."""
        problems: list[str] = []
        try:
            transport = self.runtime(wf.runtime).transport
            for v in self._staged_volumes(wf):
                from runtimes.staging import stage_in

                try:
                    report = stage_in(transport, v.source, v.target)
                except (OSError, ValueError) as exc:
                    problems.append(f"staging {v.source} to {v.target} failed: {exc}")
                    continue
                log.info("staged in", workflow=wf.id, source=v.source, target=v.target,
                         files=report.files_sent, bytes=report.bytes_sent)
            images: dict[str, set[str]] = defaultdict(set)
            for step in wf.spec.steps:
                image = step.image or wf.spec.image
                if image:
                    images[step.runtime or wf.runtime].add(image)
            for name, wanted in images.items():
                problems += prepare_images(self.runtime(name).transport, self.cluster(name),
                                           wanted)
        except TransportError as exc:
            log.warning("cannot prepare workflow yet", workflow=wf.id, error=str(exc))
            return False
        if problems:
            self._fail_before_start(wf, "; ".join(problems))
            return True
        with self.store.transaction() as db:
            db.execute("UPDATE workflows SET prepared_at=? WHERE id=?",
                       (iso(self.clock()), wf.id))
        return True

    def _fail_before_start(self, wf: WorkflowRow, reason: str) -> None:
        """Nothing was submitted: every activity is SKIPPED, the workflow FAILED."""
        now = self.clock()
        with self.store.transaction() as db:
            db.execute("UPDATE activities SET state='SKIPPED', reason=?, finished_at=?"
                       " WHERE workflow_id=?", (f"workflow failed before start: {reason}",
                                                iso(now), wf.id))
            for act_id in self.store.activity_ids(wf.id).values():
                self._emit_activity(db, wf.id, act_id, wf.runtime)
            self._finish_in(db, wf, WorkflowState.FAILED, now, reason)
        log.warning("workflow failed before start", workflow=wf.id, reason=reason)

    def _stage_out(self, wf: WorkflowRow) -> bool:
        """Bring the staged volumes back; False while the cluster cannot be reached."""
        volumes = self._staged_volumes(wf)
        if not volumes or wf.staged_out_at is not None:
            return True
        from runtimes.staging import stage_out

        problems: list[str] = []
        try:
            transport = self.runtime(wf.runtime).transport
            for v in volumes:
                try:
                    stage_out(transport, v.target, v.source)
                except (OSError, ValueError) as exc:
                    problems.append(f"bringing {v.target} back to {v.source} failed: {exc}")
        except TransportError as exc:
            log.warning("cannot stage out yet", workflow=wf.id, error=str(exc))
            return False
        with self.store.transaction() as db:
            db.execute("UPDATE workflows SET staged_out_at=?, reason=coalesce(?, reason)"
                       " WHERE id=?", (iso(self.clock()), "; ".join(problems) or None, wf.id))
        return True

    def _skip(self, wf: WorkflowRow, act: ActivityRow, reason: str) -> None:
        now = iso(self.clock())
        with self.store.transaction() as db:
            db.execute(
                "UPDATE activities SET state='SKIPPED', reason=?, finished_at=? WHERE id=?",
                (reason, now, act.id),
            )
            self._emit_activity(db, wf.id, act.id, act.spec.runtime or wf.runtime)

    def _finish(self, wf: WorkflowRow, state: WorkflowState) -> None:
        with self.store.transaction() as db:
            self._finish_in(db, wf, state, self.clock(), None)
        log.info("workflow done", workflow=wf.id, state=state.value)

    def _finish_in(self, db: sqlite3.Connection, wf: WorkflowRow, state: WorkflowState,
                   now: datetime, reason: str | None) -> None:
        """Mark the workflow done and queue WORKFLOW_DONE (inside the caller's transaction)."""
        db.execute("UPDATE workflows SET state=?, finished_at=?, reason=coalesce(?, reason)"
                   " WHERE id=?", (state.value, iso(now), reason, wf.id))
        row = self.store.workflow(wf.id)
        assert row is not None
        payload = workflow_payload(row, state, self.store.activities(wf.id), now)
        Store.add_event(db, wf.id, WORKFLOW_DONE, payload, _urls(wf), now)

    def _emit_activity(self, db: sqlite3.Connection, wf_id: int, act_id: int,
                       cluster: str) -> None:
        """Write ACTIVITY_COMPLETED to the outbox inside the caller's transaction."""
        wf = self.store.workflow(wf_id)
        assert wf is not None
        payload = activity_payload(wf, self.store.activity(act_id),
                                   self.store.activity_ids(wf_id), cluster)
        Store.add_event(db, wf_id, ACTIVITY_COMPLETED, payload, _urls(wf), self.clock())

    # -- submit -----------------------------------------------------------------------------
    def _capacity(self, cluster: ClusterConfig, want: int) -> int:
        """How many of ``want`` new jobs the queue limit and the submit rate allow now."""
        room = max(0, cluster.slurm.max_jobs_in_queue - self.store.live_count(cluster.name))
        bucket = self._buckets.setdefault(cluster.name, _Bucket(
            cluster.slurm.max_submit_per_minute, cluster.slurm.max_submit_per_minute,
            time.monotonic()))
        return bucket.take(min(want, room), time.monotonic())

    def _new_attempts(self, wf: WorkflowRow, ready: list[ActivityRow]) -> bool:
        """Commit SUBMITTING attempts (token, job dir) before anything reaches Slurm."""
        by_cluster: dict[str, list[ActivityRow]] = defaultdict(list)
        for act in ready:
            by_cluster[act.spec.runtime or wf.runtime].append(act)
        rows: list[tuple[int, int, str, str, str]] = []
        for name, acts in by_cluster.items():
            cluster = self.cluster(name)
            workdir = cluster.workdir
            for act in acts[: self._capacity(cluster, len(acts))]:
                number = act.attempt + 1
                rows.append((act.id, number, job_token(self.store.instance, wf.id, act.id, number),
                             cluster.name, f"{workdir}/{wf.name}-{wf.id}/{act.name}/{number}"))
        if not rows:
            return False
        with self.store.transaction() as db:
            db.executemany(
                "INSERT INTO attempts(activity_id, number, token, cluster, jobdir, state)"
                " VALUES (?,?,?,?,?, 'SUBMITTING')", rows,
            )
            db.executemany(
                "UPDATE activities SET state='SUBMITTING', attempt=?, retry_at=NULL,"
                " exit_code=NULL, reason=NULL, job_id=NULL WHERE id=?",
                [(number, act_id) for act_id, number, *_ in rows],
            )
        return True

    def _submit_pending(self) -> bool:
        pending = [a for a in self.store.live_attempts() if a.job_id is None]
        for cluster_name, attempts in _by_cluster(pending).items():
            if cluster_name in self._unreachable:
                continue  # its unconfirmed submissions must be looked up first
            cluster = self.cluster(cluster_name)
            requests: list[JobRequest] = []
            for a in attempts:
                act = self.store.activity(a.activity_id)
                wf = self.store.workflow(act.workflow_id)
                assert wf is not None  # attempts never outlive their workflow
                try:
                    rendered = render(wf.spec, act.spec, cluster, workflow_id=wf.id,
                                      token=a.token, jobdir=a.jobdir, attempt=a.number)
                except RenderError as exc:
                    self._observe(a, JobStatus(JobState.FAILED, None, str(exc)))
                    continue
                requests.append(JobRequest(a.token, a.jobdir, rendered.script, rendered.files))
            by_token = {a.token: a for a in attempts}
            runtime = self.runtime(cluster_name)
            for start in range(0, len(requests), SUBMIT_CHUNK):
                results = runtime.submit(requests[start:start + SUBMIT_CHUNK])
                done = [(by_token[r.token], str(r.job_id)) for r in results if r.job_id]
                self._record_submitted(done)
                if any(r.lost for r in results):
                    log.warning("connection lost while submitting; looking the jobs up by name",
                                cluster=cluster_name)
                    self._unreachable.add(cluster_name)
                    self._reconciled = False
                    break
                for r in results:
                    if r.job_id is None:
                        log.warning("submission failed", token=r.token, error=r.error)
                        self._observe(by_token[r.token], JobStatus(
                            JobState.FAILED, None, f"submission failed: {r.error}"))
        return bool(pending)

    def _record_submitted(self, submitted: list[tuple[AttemptRow, str]]) -> None:
        """Commit the job ids of attempts that sbatch accepted (one transaction)."""
        if not submitted:
            return
        now = iso(self.clock())
        with self.store.transaction() as db:
            db.executemany(
                "UPDATE attempts SET job_id=?, state='QUEUED', submitted_at=? WHERE id=?",
                [(job_id, now, a.id) for a, job_id in submitted],
            )
            db.executemany(
                "UPDATE activities SET job_id=?, state='QUEUED' WHERE id=?",
                [(job_id, a.activity_id) for a, job_id in submitted],
            )


def _by_cluster(attempts: list[AttemptRow]) -> dict[str, list[AttemptRow]]:
    grouped: dict[str, list[AttemptRow]] = defaultdict(list)
    for a in attempts:
        grouped[a.cluster].append(a)
    return grouped


def _view(act: ActivityRow) -> ActivityView:
    return ActivityView(act.name, act.state, act.spec.parents, act.attempt, act.spec.retry,
                        act.retry_at)


def _urls(wf: WorkflowRow) -> list[str]:
    return [h.url for h in wf.spec.webhooks]


__all__ = ["Bridge", "SubmissionError"]
