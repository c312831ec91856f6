"""State changes as a feed (for ``GET /events`` and the monitoring page).

The owner of the state dir calls :meth:`ChangeFeed.poll` after each cycle while a client
listens (none: no reads at all, a busy intake pays nothing for it); it compares the
activities of the running (and just finished) workflows with what it saw last and returns
one event per change. No extra table: the store stays the one truth.
Only workflows whose revision moved (``workflows.rev``, bumped by any change to their
activities or attempts) have their activities read again, and after the first poll only the
workflows that changed at all are read (``workflows.seq``, the store's change sequence): a
page open on a daemon with thousands of queued workflows costs a cycle one indexed query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bridge.store import Store, iso, now_utc


class ChangeFeed:
    """Diffs of workflow and activity states since the last :meth:`poll`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._acts: dict[int, tuple[int, str, int, str | None]] = {}
        """activity id → (workflow id, state, attempt, job id) last seen."""
        self._wfs: dict[int, str] = {}
        self._acts_of: dict[int, list[int]] = {}
        """workflow id → the ids of its activities in ``_acts``."""
        self._revs: dict[int, int] = {}
        """workflow id → its revision when its activities were last read."""
        self._since: datetime = now_utc()
        self._seq: int | None = None
        """The change sequence read up to (None: the next poll reads the whole window)."""

    def watch_from(self, since: datetime) -> None:
        """Nobody listened until ``since``: changes before it are not reported (the owner
        stops polling while there is no subscriber, and calls this when one comes)."""
        if since > self._since:
            self._since, self._seq = since, None

    def poll(self) -> list[dict[str, Any]]:
        now = now_utc()
        db = self.store.db
        since = iso(self._since)
        full = self._seq is None
        if self._seq is None:  # the window: what runs, and what ended or came since it opened
            top = db.execute("SELECT coalesce(max(seq), 0) FROM workflows").fetchone()[0]
            wf_rows = db.execute(
                "SELECT id, name, state, rev FROM workflows WHERE state='RUNNING'"
                " OR finished_at>=? OR created_at>=?", (since, since)).fetchall()
            read_to = int(top)  # a change between the two reads is read again: harmless
        else:  # what changed since the last poll (its id, state or revision moved)
            wf_rows = db.execute("SELECT id, name, state, rev, seq FROM workflows WHERE seq > ?"
                                 " ORDER BY seq", (self._seq,)).fetchall()
            read_to = int(wf_rows[-1]["seq"]) if wf_rows else self._seq
        events: list[dict[str, Any]] = []
        ids = [int(r["id"]) for r in wf_rows]
        moved = [int(r["id"]) for r in wf_rows if self._revs.get(r["id"]) != r["rev"]]
        for r in wf_rows:
            self._revs[r["id"]] = r["rev"]
            if self._wfs.get(r["id"]) != r["state"]:
                self._wfs[r["id"]] = r["state"]
                events.append({"type": "workflow", "workflow_id": r["id"], "name": r["name"],
                               "state": r["state"]})
        for start in range(0, len(moved), 500):
            chunk = moved[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for a in db.execute(
                    "SELECT id, workflow_id, name, state, attempt, job_id, exit_code, reason"
                    f" FROM activities WHERE workflow_id IN ({marks})", chunk):
                seen = (a["workflow_id"], a["state"], a["attempt"], a["job_id"])
                if self._acts.get(a["id"]) != seen:
                    if a["id"] not in self._acts:
                        self._acts_of.setdefault(a["workflow_id"], []).append(a["id"])
                    self._acts[a["id"]] = seen
                    events.append({"type": "activity", "workflow_id": a["workflow_id"],
                                   "activity": a["name"], "state": a["state"],
                                   "attempt": a["attempt"], "job_id": a["job_id"],
                                   "exit_code": a["exit_code"], "reason": a["reason"]})
        if full:  # out of the window: finished before it opened, they can no longer change
            gone = self._wfs.keys() - set(ids)
        else:  # ended now (reported above): nothing more will come unless it is retried
            gone = {int(r["id"]) for r in wf_rows if r["state"] != "RUNNING"}
        for i in gone:
            self._wfs.pop(i, None)
            self._revs.pop(i, None)
            for act_id in self._acts_of.pop(i, []):
                self._acts.pop(act_id, None)
        self._since, self._seq = now, read_to  # only once all of it was read
        return events
