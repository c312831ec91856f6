"""The live view: a table for small workflows, counts and recent changes for large ones."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from bridge.progress import LiveView, counts
from bridge.spec import parse_akoflow
from bridge.store import Store


def _render(view: LiveView) -> str:
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(view.render())
    return buf.getvalue()


def _workflow(store: Store, n: int) -> int:
    steps = "".join(f"    - name: s{i:03d}\n      run: 'true'\n" for i in range(n))
    wf = parse_akoflow(f"name: w{n}\nspec:\n  activities:\n{steps}").workflow
    return store.add_workflow(wf)


def _set(store: Store, wf_id: int, names: list[str], state: str, exit_code: int | None = None,
         ) -> None:
    with store.transaction() as db:
        db.executemany("UPDATE activities SET state=?, exit_code=? WHERE workflow_id=? AND name=?",
                       [(state, exit_code, wf_id, n) for n in names])


def test_a_large_workflow_shows_counts_and_recent_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    wf_id = _workflow(store, 300)
    view = LiveView(store, [wf_id])
    first = _render(view)
    assert "0 done · 0 running · 0 queued · 0 failed · 300 pending (of 300)" in first
    assert "s000" not in first  # no table of 300 rows
    _set(store, wf_id, [f"s{i:03d}" for i in range(100)], "COMPLETED", 0)
    _set(store, wf_id, ["s100", "s101"], "RUNNING")
    _set(store, wf_id, ["s102"], "FAILED", 3)
    text = _render(view)
    assert "100 done · 2 running · 0 queued · 1 failed · 197 pending (of 300)" in text
    assert "failed: s102" in text
    changes = [line for line in text.splitlines() if "→" in line]
    assert len(changes) == 8  # the most recent ones only
    assert changes[-1].endswith("s102: PENDING → FAILED (exit 3)")
    assert len(text.splitlines()) < 15
    assert counts(store.activities(wf_id))["pending"] == 197


def test_a_small_workflow_is_a_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    wf_id = _workflow(store, 5)
    text = _render(LiveView(store, [wf_id]))
    assert all(f"s{i:03d}" in text for i in range(5)) and "PENDING" in text
