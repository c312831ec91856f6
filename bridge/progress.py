"""What the CLI shows of a workflow: the activity table, failure details, and a live view that
scales (counts by state and the recent changes instead of a 300-row table).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bridge.store import ActivityRow, AttemptRow, Store, WorkflowRow, parse_iso

STATE_STYLE = {
    "COMPLETED": "green", "RUNNING": "cyan", "QUEUED": "blue", "SUBMITTING": "blue",
    "PENDING": "dim", "SKIPPED": "yellow", "RETRY_WAIT": "magenta", "CANCELLED": "yellow",
}
FAILED_STATES = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"})
FINAL_STATES = FAILED_STATES | {"COMPLETED", "CANCELLED", "SKIPPED"}
BIG = 20
"""Workflows with more activities than this are shown as counts and recent changes."""

GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("done", ("COMPLETED",)),
    ("running", ("RUNNING",)),
    ("queued", ("QUEUED", "SUBMITTING")),
    ("failed", tuple(sorted(FAILED_STATES))),
    ("cancelled", ("CANCELLED",)),
    ("skipped", ("SKIPPED",)),
    ("pending", ("PENDING", "RETRY_WAIT")),
]
GROUP_STYLE = {"done": "green", "running": "cyan", "queued": "blue", "failed": "red",
               "cancelled": "yellow", "skipped": "yellow", "pending": "dim"}


def styled(state: str) -> str:
    style = STATE_STYLE.get(state, "red")
    return f"[{style}]{state}[/{style}]"


def seconds(a: ActivityRow) -> float | None:
    if not a.started_at:
        return None
    end = a.finished_at or datetime.now(a.started_at.tzinfo)
    return (end - a.started_at).total_seconds()


def duration(a: ActivityRow) -> str:
    s = seconds(a)
    if s is None:
        return ""
    return f"{s:.2f}s" if s < 10 else f"{s:.0f}s"


def span(total: float) -> str:
    """``3.2 s``, ``4m05s``, ``2h03m``."""
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def counts(acts: Iterable[ActivityRow]) -> dict[str, int]:
    """Activities per group (done, running, queued, failed, cancelled, skipped, pending)."""
    by_state: dict[str, int] = {}
    for a in acts:
        by_state[a.state.value] = by_state.get(a.state.value, 0) + 1
    return grouped(by_state)


def grouped(by_state: dict[str, int]) -> dict[str, int]:
    """:func:`counts` from activity counts by state (``{"COMPLETED": 3, …}``)."""
    where = {state: name for name, states in GROUPS for state in states}
    got = dict.fromkeys((name for name, _ in GROUPS), 0)
    for state, n in by_state.items():
        got[where.get(state, "failed")] += n
    return got


def counts_text(c: dict[str, int], markup: bool = True, zeros: bool = True) -> str:
    """``3 done · 1 running · …``; the main groups are always shown unless not ``zeros``."""
    parts = []
    for name, n in c.items():
        if n or (zeros and name in ("done", "running", "queued", "failed", "pending")):
            part = f"{n} {name}"
            if markup and n:
                style = GROUP_STYLE[name]
                part = f"[{style}]{part}[/{style}]"
            parts.append(part)
    return " · ".join(parts)


def summary(wf: WorkflowRow, acts: list[ActivityRow]) -> str:
    """One line: ``workflow #3 name: FAILED (297 done · 1 failed · 2 skipped) in 4m05s``,
    and the workflow's own reason when it did not complete (a failed stage-out, an image)."""
    took = ""
    if wf.created_at:
        end = wf.finished_at or datetime.now(wf.created_at.tzinfo)
        took = f" in {span((end - wf.created_at).total_seconds())}"
    why = f": {wf.reason}" if wf.reason and wf.state.value != "COMPLETED" else ""
    return (f"workflow #{wf.id} {wf.name}: {wf.state.value} "
            f"({counts_text(counts(acts), markup=False, zeros=False) or 'no activities'})"
            f"{took}{why}")


def activity_table(store: Store, wf_id: int, acts: list[ActivityRow] | None = None,
                   title: str | None = None) -> Table:
    wf = store.workflow(wf_id)
    if title is None:
        title = f"#{wf_id} {escape(wf.name)} — {wf.state.value}" if wf else f"#{wf_id}"
    table = Table(title=title, title_justify="left")
    for col in ("activity", "state", "exit", "duration", "job", "try", "reason"):
        table.add_column(col)
    for a in store.activities(wf_id) if acts is None else acts:
        table.add_row(escape(a.name), styled(a.state.value),
                      "" if a.exit_code is None else str(a.exit_code), duration(a),
                      escape(a.job_id or ""), str(a.attempt), escape(a.reason or ""))
    return table


# -- failures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What a user needs to see about a failed activity."""

    name: str
    state: str
    exit_code: int | None
    reason: str | None
    jobdir: str | None
    job_id: str | None
    attempt: int
    stderr_tail: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"activity": self.name, "state": self.state, "exit_code": self.exit_code,
                "reason": self.reason, "jobdir": self.jobdir, "job_id": self.job_id,
                "attempt": self.attempt, "stderr_tail": self.stderr_tail}


LogReader = Callable[[AttemptRow, str], bytes | None]
"""Reads an attempt's ``out`` or ``err`` (``None``: cannot be read from here)."""


def tail(data: bytes, lines: int = 5) -> list[str]:
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return text.splitlines()[-lines:] if text else []


def failures(store: Store, wf_id: int, read: LogReader | None,
             acts: list[ActivityRow] | None = None, lines: int = 5) -> list[Failure]:
    """The failed activities of a workflow with their last attempt's details."""
    found = []
    for a in store.activities(wf_id) if acts is None else acts:
        if a.state.value not in FAILED_STATES:
            continue
        attempts = store.attempts(a.id)
        last = attempts[-1] if attempts else None
        err_tail: list[str] = []
        if last is not None and read is not None:
            data = read(last, "err")
            err_tail = tail(data, lines) if data else []
        found.append(Failure(
            a.name, a.state.value,
            a.exit_code if a.exit_code is not None else (last.exit_code if last else None),
            a.reason or (last.reason if last else None),
            last.jobdir if last else None, a.job_id or (last.job_id if last else None),
            last.number if last else a.attempt, err_tail))
    return found


def failure_lines(fails: list[Failure]) -> list[Text]:
    """Plain (no markup) lines for the failures, to print under the table."""
    out: list[Text] = []
    for f in fails:
        head = Text(f"✗ {f.name}: {f.state}", style="bold red")
        bits = []
        if f.exit_code is not None:
            bits.append(f"exit code {f.exit_code}")
        if f.job_id:
            bits.append(f"job {f.job_id}")
        bits.append(f"attempt {f.attempt}")
        head.append(f" ({', '.join(bits)})", style="red")
        out.append(head)
        if f.reason:
            out.append(Text(f"  reason: {f.reason}"))
        if f.jobdir:
            out.append(Text(f"  job dir: {f.jobdir}"))
        if f.stderr_tail:
            out.append(Text("  last lines of stderr:"))
            out.extend(Text(f"  │ {line}", style="dim") for line in f.stderr_tail)
    return out


# -- the live view ---------------------------------------------------------------------------


class LiveView:
    """The live progress of some workflows: a table each when small; counts by state, the
    failures so far and the most recent state changes when large."""

    def __init__(self, store: Store, wf_ids: list[int], big: int = BIG,
                 recent: int = 8, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.wf_ids = wf_ids
        self.big = big
        self._seen: dict[int, str] = {}
        self.changes: deque[str] = deque(maxlen=recent)
        self._clock = clock or (lambda: datetime.now().astimezone())

    def observe(self, acts: list[ActivityRow]) -> None:
        stamp = self._clock().strftime("%H:%M:%S")
        for a in acts:
            before = self._seen.get(a.id)
            if before is not None and before != a.state.value:
                extra = f" (exit {a.exit_code})" if a.exit_code not in (None, 0) else ""
                self.changes.append(f"{stamp} {a.name}: {before} → {a.state.value}{extra}")
            self._seen[a.id] = a.state.value

    def render(self) -> RenderableType:
        parts: list[RenderableType] = []
        for wf_id in self.wf_ids:
            wf = self.store.workflow(wf_id)
            acts = self.store.activities(wf_id)
            self.observe(acts)
            if wf is None:
                continue
            if len(acts) <= self.big:
                parts.append(activity_table(self.store, wf_id, acts))
                continue
            parts.append(Text.from_markup(
                f"[bold]#{wf_id} {escape(wf.name)}[/bold] — {wf.state.value}: "
                f"{counts_text(counts(acts))} (of {len(acts)})"))
            failed = [a for a in acts if a.state.value in FAILED_STATES]
            if failed:
                names = ", ".join(a.name for a in failed[:10])
                more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
                parts.append(Text(f"  failed: {names}{more}", style="red"))
            running = [a for a in acts if a.state.value == "RUNNING"]
            if running:
                oldest = sorted(running, key=lambda a: a.started_at or a.created_at)[:5]
                parts.append(Text("  running longest: " + ", ".join(
                    f"{a.name} {duration(a)}" for a in oldest), style="cyan"))
            for change in self.changes:
                parts.append(Text(f"  {change}", style="dim"))
        return Group(*parts)


def final_view(store: Store, wf_id: int, read: LogReader | None,
               big: int = BIG) -> tuple[list[RenderableType], str, list[Failure]]:
    """What ``run`` prints at the end: the table (or for a large workflow, only the activities
    that did not complete), failure details, and the one-line summary."""
    wf = store.workflow(wf_id)
    assert wf is not None
    acts = store.activities(wf_id)
    fails = failures(store, wf_id, read, acts)
    parts: list[RenderableType] = []
    if len(acts) <= big:
        parts.append(activity_table(store, wf_id, acts))
    else:
        rest = [a for a in acts if a.state.value != "COMPLETED"]
        if rest:
            shown = rest[:big]
            more = f", first {big} of {len(rest)}" if len(rest) > big else ""
            parts.append(activity_table(
                store, wf_id, shown,
                title=f"#{wf_id} {escape(wf.name)} — activities not completed{more}"))
    parts.extend(failure_lines(fails))
    return parts, summary(wf, acts), fails


def workflow_json(store: Store, wf: WorkflowRow, read: LogReader | None) -> dict[str, Any]:
    """``status ID --json``: the workflow, its activities and their attempts."""
    acts = store.activities(wf.id)
    fails = {f.name: f for f in failures(store, wf.id, read, acts)}
    activities = [activity_json(store, a, fails.get(a.name)) for a in acts]
    return {**workflow_summary_json(wf), "counts": counts(acts), "activities": activities}


def activity_json(store: Store, a: ActivityRow, failure: Failure | None) -> dict[str, Any]:
    """One activity of :func:`workflow_json`, with its attempts."""
    return {
        "id": a.id, "name": a.name, "state": a.state.value, "exit_code": a.exit_code,
        "reason": a.reason, "job_id": a.job_id, "attempt": a.attempt,
        "created_at": _iso(a.created_at), "started_at": _iso(a.started_at),
        "finished_at": _iso(a.finished_at), "duration_s": seconds(a),
        "cancel_requested": a.cancel_requested,
        "depends_on": list(a.spec.parents),
        "attempts": [{"number": t.number, "cluster": t.cluster, "job_id": t.job_id,
                      "state": t.state.value, "exit_code": t.exit_code,
                      "reason": t.reason, "jobdir": t.jobdir,
                      "submitted_at": _iso(t.submitted_at),
                      "started_at": _iso(t.started_at),
                      "finished_at": _iso(t.finished_at),
                      "max_rss_kb": t.max_rss_kb, "elapsed_s": t.elapsed_s,
                      "cpu_s": t.cpu_s}
                     for t in store.attempts(a.id)],
        "stderr_tail": failure.stderr_tail if failure else None,
    }


SUMMARY_COLUMNS = ("id", "name", "namespace", "runtime", "state", "reason", "stage_out_error",
                   "created_at", "finished_at")
"""The ``workflows`` columns a summary shows (no spec: a list page parses none)."""


def workflow_summary_json(wf: WorkflowRow) -> dict[str, Any]:
    return {"id": wf.id, "name": wf.name, "namespace": wf.namespace, "runtime": wf.runtime,
            "state": wf.state.value, "reason": wf.reason,
            "stage_out_error": wf.stage_out_error, "created_at": _iso(wf.created_at),
            "finished_at": _iso(wf.finished_at)}


def summary_row_json(row: Any) -> dict[str, Any]:
    """:func:`workflow_summary_json` of a row holding :data:`SUMMARY_COLUMNS` (timestamps
    written the same way)."""
    out = {c: row[c] for c in SUMMARY_COLUMNS}
    for c in ("created_at", "finished_at"):
        out[c] = _iso(parse_iso(out[c]))
    return out


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None
