"""Execution history: 90 days are listed, older ones pruned (bridge.peak.executions)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_peak_convert import Catalogue, body

from bridge.peak import executions
from bridge.peak import store as peak_store
from bridge.peak.definition import parse_definition
from bridge.runner import Bridge
from bridge.store import Store, iso, now_utc
from runtimes.config import Clusters


def test_old_executions_are_not_listed_and_are_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "akobridge.db")
    bridge = Bridge(store, Clusters([]), tmp_path)
    defn = parse_definition(body({"a": {}}))
    wf, _ = peak_store.create(store, defn, modified_by="t")
    made = [executions.execute(store, lambda w, key: bridge.submit(w, key), Catalogue(),
                               wf.id, defn, {}) for _ in range(3)]
    with store.transaction() as db:  # one of them 91 days old, one 89
        for ex_id, age in zip(made, (91, 89), strict=False):
            db.execute("UPDATE peak_executions SET created_at=? WHERE id=?",
                       (iso(now_utc() - timedelta(days=age)), ex_id))
    listed = executions.listing(store, wf.id, statuses=[], since=None, until=None)
    assert sorted(e.id for e in listed) == sorted(made[1:])
    assert executions.prune(store) == 1
    left = store.db.execute("SELECT id FROM peak_executions").fetchall()
    assert sorted(r[0] for r in left) == sorted(made[1:])
    assert executions.prune(store) == 0
    store.close()
