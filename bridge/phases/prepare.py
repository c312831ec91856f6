"""Before the first and after the last activity of a workflow: stage the volumes in and check
(pull) the images; bring the volumes back. Runs on the workflow's cluster worker."""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import structlog

from bridge.engine import WorkflowState
from bridge.outbox import emit_activity, finish_workflow
from bridge.spec.model import Volume, Workflow
from bridge.store import Store, WorkflowRow, iso
from runtimes import Runtime
from runtimes.config import ClusterConfig
from runtimes.images import prepare_images

log = structlog.get_logger("akobridge.prepare")


def staged_volumes(wf: WorkflowRow, cluster: ClusterConfig) -> list[Volume]:
    """Volumes whose two sides differ: a remote cluster, or a local copy A → B."""
    return volumes_to_stage(wf.spec, cluster)


def volumes_to_stage(spec: Workflow, cluster: ClusterConfig) -> list[Volume]:
    """:func:`staged_volumes` of a workflow spec (stored or not)."""
    return [v for v in spec.volumes
            if cluster.transport == "ssh"
            or os.path.normpath(v.source) != os.path.normpath(v.target)]


def prepare(store: Store, wf: WorkflowRow, runtime: Callable[[str], Runtime],
            cluster: Callable[[str], ClusterConfig], now: Callable[[], datetime]) -> None:
    """Stage in, check images; fail the workflow before any sbatch when something is missing.

    A :class:`~runtimes.transport.TransportError` propagates (the cluster is unreachable:
    try again later); nothing is recorded then.
    """
    problems: list[str] = []
    transport = runtime(wf.runtime).transport
    from runtimes.staging import stage_in

    for v in staged_volumes(wf, cluster(wf.runtime)):
        try:
            report = stage_in(transport, v.source, v.target)
        except (OSError, ValueError) as exc:
            problems.append(f"staging {v.source} to {v.target} failed: {exc}")
            continue
        log.info("staged in", workflow=wf.id, source=v.source, target=v.target,
                 files=report.files_sent, bytes=report.bytes_sent)
    images: dict[str, set[str]] = defaultdict(set)
    fresh: dict[str, set[str]] = defaultdict(set)
    for step in wf.spec.steps:
        image = step.image or wf.spec.image
        if image:
            images[step.runtime or wf.runtime].add(image)
            if step.fresh_image:
                fresh[step.runtime or wf.runtime].add(image)
    for name, wanted in images.items():
        problems += prepare_images(runtime(name).transport, cluster(name), wanted,
                                   fresh.get(name, ()))
    at = now()
    with store.transaction() as db:
        if problems:
            _fail_before_start(store, db, wf, "; ".join(problems), at)
        else:
            db.execute("UPDATE workflows SET prepared_at=? WHERE id=? AND prepared_at IS NULL",
                       (iso(at), wf.id))


def _fail_before_start(store: Store, db: sqlite3.Connection, wf: WorkflowRow, reason: str,
                       at: datetime) -> None:
    """Nothing was submitted: every activity is SKIPPED, the workflow FAILED."""
    ids = [r[0] for r in db.execute(
        "SELECT id FROM activities WHERE workflow_id=? AND state='PENDING'", (wf.id,))]
    db.execute("UPDATE activities SET state='SKIPPED', reason=?, finished_at=?"
               " WHERE workflow_id=? AND state='PENDING'",
               (f"workflow failed before start: {reason}", iso(at), wf.id))
    for act_id in ids:
        emit_activity(store, db, wf.id, act_id, wf.runtime, at)
    finish_workflow(store, db, wf.id, WorkflowState.FAILED, at, reason)
    log.warning("workflow failed before start", workflow=wf.id, reason=reason)


def stage_out(store: Store, wf: WorkflowRow, runtime: Runtime, cluster: ClusterConfig,
              now: Callable[[], datetime]) -> None:
    """Bring the staged volumes back; a failure is recorded and fails the workflow."""
    from runtimes.staging import stage_out as bring_back

    problems: list[str] = []
    for v in staged_volumes(wf, cluster):
        try:
            bring_back(runtime.transport, v.target, v.source)
        except (OSError, ValueError) as exc:
            problems.append(f"bringing {v.target} back to {v.source} failed: {exc}")
    with store.transaction() as db:
        db.execute("UPDATE workflows SET staged_out_at=?, stage_out_error=? WHERE id=?"
                   " AND staged_out_at IS NULL",
                   (iso(now()), "; ".join(problems) or None, wf.id))
    if problems:
        log.warning("stage-out failed", workflow=wf.id, problems=problems)
