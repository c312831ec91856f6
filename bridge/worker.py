"""One worker per cluster: the phases of a cycle that talk to that cluster.

A round, in order: prepare the workflows that start (stage in, images) → look up the
submissions whose fate is unknown → cancel what was asked to stop → poll the live jobs and
record what changed (and the resource use that accounting reports late for jobs that already
ended) → submit the new attempts → bring back the volumes of finished workflows.

Each worker runs its rounds on its own thread with its own store connection, so a cluster
that hangs or cannot be reached delays only its own workflows. Every change is one committed
transaction that claims its row (see :mod:`bridge.phases.record`).

Exactly once: an attempt is submitted only when it is *known absent* from the cluster —
created by this process and never handed to sbatch, or looked up by its token and not found.
Whenever a submission's fate is unknown (the bridge was restarted, the connection broke, sbatch
timed out or failed on the controller link), the attempt is looked up again before anything
else happens to it; after an ambiguous sbatch the lookup waits :data:`AMBIGUOUS_SETTLE_S` so
the controller has time to show a job it did accept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from bridge.jobs import render_step, secret_env_name
from bridge.phases.prepare import prepare, stage_out
from bridge.phases.record import (
    record_never_submitted,
    record_observation,
    record_submitted,
    record_usage,
)
from bridge.spec.model import Step
from bridge.store import AttemptRow, Store
from runtimes import JobRequest, JobState, Runtime, TrackedJob
from runtimes.config import ClusterConfig
from runtimes.render import RenderError
from runtimes.repository import check_out
from runtimes.transport import TransportError, TransportRefused

log = structlog.get_logger("akobridge.worker")

SUBMIT_CHUNK = 32
"""Job ids are committed after every chunk of this many submissions."""
AMBIGUOUS_SETTLE_S = 5.0
"""After an ambiguous sbatch, wait this long before a lookup may conclude "not submitted"."""
AMBIGUOUS_TRIES = 5
"""Ambiguous sbatch answers in a row after which an attempt is FAILED."""
USAGE_WAIT_S = 600.0
"""How long an ended attempt waits for its resource use from accounting before it is given
up on (it then keeps what was known at its end, e.g. its wall time)."""


@dataclass
class RoundOrder:
    """What the planner asks of one cluster this round."""

    wf_ids: AbstractSet[int]
    """The workflows being driven (attempts of other workflows are left alone)."""
    prepare: set[int] = field(default_factory=set)
    stage_out: set[int] = field(default_factory=set)
    hold: bool = False
    """Submit nothing (only look up, cancel, poll)."""


class ClusterWorker:
    """The rounds for one cluster; only ever called from one thread at a time."""

    def __init__(self, name: str, store: Store, runtime: Callable[[str], Runtime],
                 cluster: Callable[[str], ClusterConfig], clock: Callable[[], datetime],
                 secrets: Callable[[], Mapping[str, str]] = dict) -> None:
        self.name = name
        self._secrets = secrets
        self.store = store
        self._runtime = runtime
        self.cluster = cluster
        self.clock = clock
        self.absent: set[int] = set()
        """Attempt ids known not to exist on the cluster (safe to submit)."""
        self._ambiguous: dict[int, tuple[float, int, str]] = {}
        """Attempt id → (when sbatch answered ambiguously, how many times in a row, error)."""
        self._cancel_sent: set[str] = set()
        self._awaiting_usage: dict[int, tuple[AttemptRow, float]] = {}
        """Attempt id → (the ended attempt, since when) whose usage accounting owes."""

    @property
    def awaiting_usage(self) -> int:
        """How many ended attempts still wait for their resource use from accounting (a
        round collects them; none come once the rounds stop)."""
        return len(self._awaiting_usage)

    def mark_absent(self, attempt_ids: set[int]) -> None:
        """Attempts the planner just created: nothing was sent for them yet."""
        self.absent |= attempt_ids

    # -- a round ----------------------------------------------------------------------------
    def round(self, order: RoundOrder) -> bool:
        """One round; True if anything changed. TransportError: the cluster is unreachable
        now (what was done before it is committed; the next round goes on from there)."""
        runtime = self._runtime(self.name)
        changed = False
        for wf_id in sorted(order.prepare):
            wf = self.store.workflow(wf_id)
            if wf is not None and wf.prepared_at is None and not wf.state.terminal:
                prepare(self.store, wf, self._runtime, self.cluster, self.clock)
                changed = True
        live = self.store.live_attempts(order.wf_ids, self.name)
        changed |= self._look_up(runtime, [a for a in live if a.job_id is None])
        live = self.store.live_attempts(order.wf_ids, self.name)
        changed |= self._cancel(runtime, live)
        changed |= self._poll(runtime, [a for a in live if a.job_id])
        self._usage(runtime)
        if not order.hold:
            changed |= self._submit(runtime, order.wf_ids)
        for wf_id in sorted(order.stage_out):
            wf = self.store.workflow(wf_id)
            if wf is not None and wf.staged_out_at is None:
                stage_out(self.store, wf, runtime, self.cluster(self.name), self.clock)
                changed = True
        return changed

    # -- look up ------------------------------------------------------------------------------
    def _look_up(self, runtime: Runtime, unconfirmed: list[AttemptRow]) -> bool:
        """Find by token the SUBMITTING attempts whose fate is unknown; adopt what exists."""
        now = time.monotonic()
        unknown = [a for a in unconfirmed if a.id not in self.absent
                   and now - self._ambiguous.get(a.id, (float("-inf"), 0, ""))[0]
                   >= AMBIGUOUS_SETTLE_S]
        if not unknown:
            return False
        found = runtime.find([TrackedJob(a.token, a.jobdir) for a in unknown])
        adopted = [(a, found[a.token]) for a in unknown if a.token in found]
        if adopted:
            record_submitted(self.store, adopted, self.clock())
            for a, job_id in adopted:
                self._ambiguous.pop(a.id, None)
                log.info("adopted job", cluster=self.name, token=a.token, job=job_id)
        gave_up = False
        for a in unknown:
            if a.token in found:
                continue
            _, tries, error = self._ambiguous.get(a.id, (0.0, 0, ""))
            if tries >= AMBIGUOUS_TRIES:  # not there after the last unclear answer either
                self._ambiguous.pop(a.id, None)
                record_never_submitted(
                    self.store, a, JobState.FAILED,
                    f"submission failed {tries} times without a clear answer: {error}",
                    self.clock())
                gave_up = True
            else:
                self.absent.add(a.id)
        return bool(adopted) or gave_up

    # -- cancel -------------------------------------------------------------------------------
    def _cancel(self, runtime: Runtime, live: list[AttemptRow]) -> bool:
        """Stop the jobs of activities asked to stop; a never-submitted attempt ends here."""
        changed = False
        stop = [a for a in live if a.cancel_requested and a.job_id
                and a.job_id not in self._cancel_sent]
        if stop:
            runtime.cancel([str(a.job_id) for a in stop])
            self._cancel_sent |= {str(a.job_id) for a in stop}
            log.info("cancelled jobs", cluster=self.name, jobs=[a.job_id for a in stop])
        for a in live:
            if a.cancel_requested and a.job_id is None and a.id in self.absent:
                self.absent.discard(a.id)
                record_never_submitted(self.store, a, JobState.CANCELLED,
                                       "cancelled on request before submission", self.clock())
                changed = True
        return changed

    # -- poll ---------------------------------------------------------------------------------
    def _poll(self, runtime: Runtime, live: list[AttemptRow]) -> bool:
        if not live:
            return False
        statuses = runtime.poll([TrackedJob(a.token, a.jobdir, a.job_id) for a in live])
        changed = False
        for a in live:
            status = statuses.get(str(a.job_id))
            if status is None:
                continue
            if status.state.value != a.state.value or status.state.terminal:
                outputs = self._outputs(runtime, a) if status.state.terminal else None
                recorded = record_observation(self.store, a, status, self.clock(), outputs)
                changed = True
                if status.state.terminal:
                    self._cancel_sent.discard(str(a.job_id))
                    if (recorded is not None and runtime.deferred_usage
                            and not status.has_usage):
                        self._awaiting_usage[a.id] = (a, time.monotonic())
        return changed

    def closing_usage(self) -> None:
        """Between rounds, when the run is ending: ask for the awaited usage now."""
        self._usage(self._runtime(self.name), closing=True)

    def _outputs(self, runtime: Runtime, attempt: AttemptRow) -> dict[str, str] | None:
        """The output parameters an ended step left (read before its end is recorded)."""
        wanted = self.store.activity(attempt.activity_id).spec.outputs
        if not wanted:
            return None
        found = runtime.read_job_files(
            TrackedJob(attempt.token, attempt.jobdir, attempt.job_id), list(wanted.values()))
        return {name: found[file].decode("utf-8", "replace")
                for name, file in wanted.items() if file in found}

    def _usage(self, runtime: Runtime, closing: bool = False) -> None:
        """Store the resource use accounting now has for attempts that ended without it."""
        if not self._awaiting_usage:
            return
        now = time.monotonic()
        for aid, (_, since) in list(self._awaiting_usage.items()):
            if now - since > USAGE_WAIT_S:
                del self._awaiting_usage[aid]
        waiting = [a for a, _ in self._awaiting_usage.values()]
        got = runtime.usage([TrackedJob(a.token, a.jobdir, a.job_id) for a in waiting],
                            closing=closing)
        found = [(a, got[str(a.job_id)]) for a in waiting if str(a.job_id) in got]
        record_usage(self.store, found)
        for a, _ in found:
            self._awaiting_usage.pop(a.id, None)

    def _inherited(self, wf_id: int, step: Step) -> dict[str, str]:
        """The step's inherited variables, from what its upstream steps left."""
        if not step.inherit:
            return {}
        outputs = {a.name: a.outputs for a in self.store.activities(wf_id)}
        return {var: outputs[src][param].rstrip("\r\n")
                for var, (src, param) in step.inherit.items() if param in outputs.get(src, {})}

    def _check_out(self, runtime: Runtime, step: Step, jobdir: str) -> None:
        """The step's repository into its job directory (RenderError: the attempt fails)."""
        repo = step.repository
        if repo is None:
            return
        token = None
        if repo.token_secret:
            token = self._secrets().get(repo.token_secret)
            if token is None:
                raise RenderError(f"repository token secret {repo.token_secret} is not in "
                                  "the daemon's secrets file (peak.secrets_file)")
        problem = check_out(runtime.transport, repo.url, repo.branch, jobdir, token)
        if problem:
            raise RenderError(problem)

    def _secret_values(self, names: tuple[str, ...]) -> dict[str, str]:
        known = self._secrets()
        missing = [n for n in names if n not in known]
        if missing:
            raise RenderError(f"secret {missing[0]} is not in the daemon's secrets file "
                              "(peak.secrets_file)")
        return {secret_env_name(n): known[n] for n in names}

    # -- submit -------------------------------------------------------------------------------
    def _submit(self, runtime: Runtime, wf_ids: AbstractSet[int]) -> bool:
        ready = [a for a in self.store.live_attempts(wf_ids, self.name)
                 if a.job_id is None and a.id in self.absent and not a.cancel_requested]
        if not ready:
            return False
        cluster = self.cluster(self.name)
        requests: list[tuple[AttemptRow, JobRequest]] = []
        for a in ready:
            act = self.store.activity(a.activity_id)
            wf = self.store.workflow(act.workflow_id)
            assert wf is not None  # attempts never outlive their workflow
            try:
                rendered = render_step(wf.spec, act.spec, cluster, workflow_id=wf.id,
                                       token=a.token, jobdir=a.jobdir, attempt=a.number,
                                       secrets=self._secret_values(act.spec.secrets),
                                       inherited=self._inherited(wf.id, act.spec))
                self._check_out(runtime, act.spec, a.jobdir)
            except RenderError as exc:
                self.absent.discard(a.id)
                record_never_submitted(self.store, a, JobState.FAILED, str(exc), self.clock())
                continue
            requests.append((a, JobRequest(a.token, a.jobdir, rendered.script, rendered.files,
                                           rendered.private_files)))
        for start in range(0, len(requests), SUBMIT_CHUNK):
            chunk = requests[start:start + SUBMIT_CHUNK]
            by_token = {a.token: a for a, _ in chunk}
            for a, _ in chunk:  # from here on their fate is unknown until answered
                self.absent.discard(a.id)
            try:
                results = runtime.submit([r for _, r in chunk])
            except TransportError as exc:
                if not isinstance(exc, TransportRefused):
                    log.warning("connection lost while submitting; the jobs will be looked up"
                                " by name", cluster=self.name, error=str(exc))
                raise
            record_submitted(self.store, [(by_token[r.token], str(r.job_id))
                                          for r in results if r.job_id], self.clock())
            for r in results:
                a = by_token[r.token]
                if r.job_id:
                    self._ambiguous.pop(a.id, None)
                elif r.lost:
                    self._lost(a, r.error or "no answer")
                else:
                    self._ambiguous.pop(a.id, None)
                    log.warning("submission failed", cluster=self.name, token=r.token,
                                error=r.error)
                    record_never_submitted(self.store, a, JobState.FAILED,
                                           f"submission failed: {r.error}", self.clock())
        return True

    def _lost(self, a: AttemptRow, error: str) -> None:
        """An ambiguous answer: look the job up (after a pause) before trying again."""
        _, tries, _ = self._ambiguous.get(a.id, (0.0, 0, ""))
        self._ambiguous[a.id] = (time.monotonic(), tries + 1, error)
        log.warning("sbatch answer unclear; looking the job up by name before retrying",
                    cluster=self.name, token=a.token, error=error)
