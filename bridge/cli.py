"""The ``akobridge`` command line: run, resume, retry, cancel, logs, status, artifacts,
validate, render, cluster check (``serve`` and ``submit``: :mod:`bridge.cli_daemon`).

Bad input and bad set-ups exit with status 2 and a message that names the problem (never a
traceback); a run exits 0 only when every activity completed, 1 otherwise, 130 on Ctrl-C.
One process drives a state directory at a time (``bridge.owner``): ``run``, ``resume``,
``retry`` and an owner-less ``cancel`` hold it; the other commands only read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from bridge import __version__, config, logs
from bridge.cli_daemon import ApiLogReader, daemon_client, fail_api, follow_daemon, register
from bridge.cli_workflows import workflows
from bridge.client import ApiError, Client, Unreachable
from bridge.engine import WorkflowState
from bridge.events import DeliveryLoop, make_due, next_try, pending_by_destination
from bridge.jobs import render_step
from bridge.logview import LogReader
from bridge.owner import StateDirBusy, StateDirLock, read_owner
from bridge.progress import (
    FINAL_STATES,
    LiveView,
    final_view,
    styled,
    workflow_json,
    workflow_summary_json,
)
from bridge.runner import Bridge, SubmissionError
from bridge.spec import SpecError, Workflow, parse_akoflow
from bridge.store import ActivityRow, Store, WorkflowRow, now_utc
from runtimes.config import ClusterConfigError, Clusters, UnknownCluster
from runtimes.render import RenderError, job_token


def _console(stderr: bool) -> Console:
    """Piped output is not hard-wrapped at 80 columns (COLUMNS still wins when set)."""
    probe = Console(stderr=stderr)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(stderr=stderr, width=10_000)


out = _console(stderr=False)
err = _console(stderr=True)

MAX_ID = 2**63 - 1


def say(label: str, text: str) -> None:
    """One message on stderr: ``text`` is shown as is (not markup) and never wrapped."""
    err.print(f"{label} {escape(text)}" if label else escape(text), highlight=False,
              soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    say("[red]error:[/red]", message)
    sys.exit(code)


class WorkflowIdType(click.ParamType):  # type: ignore[type-arg]
    """A workflow id: a positive integer SQLite can hold."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            if not text.isdigit():
                self.fail(f"{value!r} is not a workflow id (ids are positive whole numbers, "
                          "see `akobridge status`)", param, ctx)
            number = int(text)
        if not 1 <= number <= MAX_ID:
            self.fail(f"{value} is not a workflow id (ids are from 1 to {MAX_ID})", param, ctx)
        return number


WF_ID = WorkflowIdType()


class AkobridgeGroup(click.Group):
    """Turns what escapes a command into a message: Ctrl-C → 130, a file or store problem →
    2, anything else → 70 (a bug; ``-vv`` shows the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            say("[yellow]interrupted[/yellow]", "(Ctrl-C): stopped; jobs already submitted keep "
                "running, `akobridge status` shows them and `akobridge resume` follows them")
            sys.exit(130)
        except (OSError, sqlite3.Error) as exc:
            fail(_describe(exc))
        except Exception as exc:
            if (ctx.obj or {}).get("verbose", 0) >= 2:
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (a bug in akobridge; run with -vv "
                 "for the details)", 70)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, sqlite3.Error):
        return f"state store: {exc}"
    return str(exc)


def load_workflow(path: Path, runtime: str | None) -> Workflow:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: cannot read: {exc}")
    try:
        parsed = parse_akoflow(text, source=str(path))
    except SpecError as exc:
        for problem in exc.problems:
            say("[red]error:[/red]", f"{path}: {problem}")
        sys.exit(2)
    for warning in parsed.warnings:
        say("[yellow]warning:[/yellow]", f"{path}: {warning}")
    wf = parsed.workflow
    return wf.model_copy(update={"runtime": runtime}) if runtime else wf


def load_clusters(clusters_dir: str | None) -> Clusters:
    try:
        return Clusters.from_dir(config.clusters_dir(clusters_dir))
    except ClusterConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"clusters dir: {_describe(exc)}")


@click.group(cls=AkobridgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="akobridge")
@click.option("--state-dir", envvar=config.STATE_ENV, type=click.Path(file_okay=False),
              help="Where the SQLite store and local job directories live.")
@click.option("--clusters-dir", envvar=config.CLUSTERS_ENV, type=click.Path(file_okay=False),
              help="Directory of cluster config files (one YAML per cluster).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, state_dir: str | None, clusters_dir: str | None,
         verbose: int) -> None:
    """Run AkoFlow workflows on Slurm (or as local processes) and report by webhooks."""
    logs.configure(["WARNING", "INFO", "DEBUG"][min(verbose, 2)])
    ctx.obj = {"state_dir": config.state_dir(state_dir), "clusters_dir": clusters_dir,
               "verbose": verbose, "state_dir_given": bool(state_dir)}


def _clusters_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--clusters-dir", "clusters_dir_local", type=click.Path(file_okay=False),
                        help="Directory of cluster config files.")(f)


def _webhook_wait_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--webhook-wait", default=30.0, show_default=True,
                        type=click.FloatRange(min=0),
                        help="Seconds to wait at the end for webhooks to be delivered.")(f)


def _clusters(ctx: click.Context, local: str | None) -> Clusters:
    return load_clusters(local or ctx.obj["clusters_dir"])


# -- the state directory -----------------------------------------------------------------------


def _state(ctx: click.Context) -> Path:
    path: Path = ctx.obj["state_dir"]
    return path


def _no_file_in_the_way(state: Path) -> None:
    for parent in [state, *state.parents]:
        if parent.exists():
            if not parent.is_dir():
                fail(f"state dir {state}: {parent} is a file, not a directory")
            break


def _check_state_dir(state: Path) -> None:
    """A usable state dir, or exit 2 naming the problem (a file in the way, read-only)."""
    _no_file_in_the_way(state)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"state dir {state}: cannot create it: {exc.strerror or exc}")
    if not os.access(state, os.W_OK | os.X_OK):
        fail(f"state dir {state} is not writable (akobridge keeps its store and lock there); "
             "use another --state-dir")


def open_store(state: Path, must_exist: bool = True) -> Store:
    path = state / config.DB_NAME
    _no_file_in_the_way(state)
    if must_exist and not path.exists():
        fail(f"no state at {path} yet: nothing has run with this --state-dir")
    try:
        return Store(path)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        hint = ""
        if isinstance(exc, sqlite3.OperationalError) and (
                "unable to open" in str(exc) or "readonly" in str(exc)):
            hint = " (is the state dir read-only? akobridge writes there even to read it)"
        fail(f"cannot open the store at {path}: {exc}{hint}")


@contextmanager
def owning(state: Path) -> Iterator[StateDirLock]:
    """Hold the state dir for this command, or exit 2 naming the process that holds it."""
    _check_state_dir(state)
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except StateDirBusy as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"state dir {state}: cannot lock it: {_describe(exc)}")
    try:
        yield lock
    finally:
        lock.release()


def _remote(clusters: Clusters | None) -> Callable[[str], bool]:
    def remote(name: str) -> bool:
        cfg = clusters.get(name) if clusters else None
        return bool(cfg is not None and cfg.transport == "ssh")
    return remote


# -- validate, render --------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--runtime", help="Run on this cluster instead of spec.runtime.")
@_clusters_option
@click.pass_context
def validate(ctx: click.Context, file: Path, runtime: str | None,
             clusters_dir_local: str | None) -> None:
    """Check a workflow file; print every problem with its field and line."""
    wf = load_workflow(file, runtime)
    clusters = _clusters(ctx, clusters_dir_local)
    for name in sorted({s.runtime or wf.runtime for s in wf.steps}):
        if clusters.get(name) is None:
            say("[yellow]warning:[/yellow]",
                f"{file}: spec.runtime: no cluster config named {name!r} yet (known: "
                f"{', '.join(clusters.names())}); submitting will fail until one exists")
    out.print(f"{escape(str(file))}: valid workflow {wf.name!r} with {len(wf.steps)} activities",
              highlight=False, soft_wrap=True)


@main.command(name="render")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--runtime", help="Render for this cluster instead of spec.runtime.")
@_clusters_option
@click.pass_context
def render_cmd(ctx: click.Context, file: Path, runtime: str | None,
               clusters_dir_local: str | None) -> None:
    """Print the sbatch script of every activity; submit nothing."""
    wf = load_workflow(file, runtime)
    clusters = _clusters(ctx, clusters_dir_local)
    for i, step in enumerate(wf.steps, start=1):
        try:
            cluster = clusters.require(step.runtime or wf.runtime).resolved(_state(ctx))
            workdir = cluster.workdir
            rendered = render_step(wf, step, cluster, workflow_id=0, attempt=1,
                                   token=job_token("render", 0, i, 1),
                                   jobdir=f"{workdir}/{wf.name}-0/{step.name}/1")
        except (UnknownCluster, RenderError) as exc:
            fail(str(exc))
        click.echo(f"# ---- {step.name} ----")
        click.echo(rendered.script, nl=False)


# -- run, resume, retry ------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--runtime", help="Run on this cluster instead of spec.runtime.")
@_webhook_wait_option
@_clusters_option
@click.pass_context
def run(ctx: click.Context, file: Path, runtime: str | None, webhook_wait: float,
        clusters_dir_local: str | None) -> None:
    """Submit a workflow and follow it (only it) to the end with live progress."""
    from runtimes.base import RuntimeFailure

    wf = load_workflow(file, runtime)
    state = _state(ctx)
    client = daemon_client(state)
    if client is not None:
        sys.exit(_run_through(client, state, file, wf, runtime, webhook_wait))
    clusters = _clusters(ctx, clusters_dir_local)
    with owning(state):
        store = open_store(state, must_exist=False)
        bridge = Bridge(store, clusters, state)
        try:
            for name in sorted({s.runtime or wf.runtime for s in wf.steps}):
                bridge.runtime(name)  # refuse before storing, e.g. a pyslurm not built for Slurm
            wf_id = bridge.submit(wf)
        except (SubmissionError, RuntimeFailure) as exc:
            bridge.close()
            fail(str(exc))
        err.print(f"workflow {escape(repr(wf.name))} is #{wf_id} on [bold]{escape(wf.runtime)}"
                  f"[/bold] (state: {escape(str(store.path))})", highlight=False,
                  soft_wrap=True)
        code = follow(store, bridge, [wf_id], webhook_wait, clusters)
    sys.exit(code)


def _run_through(client: Client, state: Path, file: Path, wf: Workflow, runtime: str | None,
                 webhook_wait: float) -> int:
    """``run`` when a daemon owns the state dir: it stores and drives the workflow."""
    try:
        reply = client.submit(wf.raw, runtime)
    except (ApiError, Unreachable) as exc:
        fail_api(exc)
    store = open_store(state)
    wf_id = int(reply["id"])
    err.print(f"workflow {escape(repr(wf.name))} is #{wf_id} on [bold]{escape(wf.runtime)}"
              f"[/bold] (state: {escape(str(store.path))})", highlight=False,
              soft_wrap=True)
    return follow_daemon(store, client, [wf_id], webhook_wait)


@main.command()
@click.argument("workflow_id", required=False, type=WF_ID)
@_webhook_wait_option
@_clusters_option
@click.pass_context
def resume(ctx: click.Context, workflow_id: int | None, webhook_wait: float,
           clusters_dir_local: str | None) -> None:
    """Follow the unfinished workflows of the store (or one of them) to the end, and deliver
    the webhooks still pending.

    After an interrupted ``run`` or a crash: submissions that were in flight are matched to
    their jobs by name, so nothing is submitted twice.
    """
    state = _state(ctx)
    open_store(state).close()  # exits when there is no store yet
    client = daemon_client(state)
    if client is not None:
        store = open_store(state)
        wanted = [workflow_id] if workflow_id is not None else sorted(store.active_ids())
        say("", f"the daemon at {client.address} drives this state dir; following "
            f"{len(wanted)} workflow(s)")
        sys.exit(follow_daemon(store, client, wanted, webhook_wait) if wanted else 0)
    with owning(state):
        store = open_store(state)
        active = sorted(store.active_ids())
        if workflow_id is not None and workflow_id not in active:
            row = store.workflow(workflow_id)
            if row is None:
                fail(f"no workflow with id {workflow_id}")
            fail(f"workflow {workflow_id} is not running ({row.state.value}); "
                 f"`akobridge retry {workflow_id}` runs what did not complete")
        wanted = [workflow_id] if workflow_id is not None else active
        if not wanted:
            if store.pending_deliveries():
                sys.exit(deliver_pending(store, webhook_wait))
            out.print("nothing to resume: no workflow is running")
            return
        clusters = _clusters(ctx, clusters_dir_local)
        code = follow(store, Bridge(store, clusters, state), wanted, webhook_wait, clusters)
    sys.exit(code)


@main.command()
@click.argument("workflow_id", type=WF_ID)
@_webhook_wait_option
@_clusters_option
@click.pass_context
def retry(ctx: click.Context, workflow_id: int, webhook_wait: float,
          clusters_dir_local: str | None) -> None:
    """Run the failed, cancelled and skipped activities of a finished workflow again (what
    completed is kept), and follow it to the end."""
    state = _state(ctx)
    open_store(state).close()
    client = daemon_client(state)
    if client is not None:
        store = open_store(state)
        name = _workflow(store, workflow_id).name
        try:
            names = client.retry(workflow_id)["activities"]
        except (ApiError, Unreachable) as exc:
            fail_api(exc)
        say("retrying", f"workflow #{workflow_id} {name}: {', '.join(names)}")
        sys.exit(follow_daemon(store, client, [workflow_id], webhook_wait))
    clusters = _clusters(ctx, clusters_dir_local)
    with owning(state):
        store = open_store(state)
        row = store.workflow(workflow_id)
        if row is None:
            fail(f"no workflow with id {workflow_id}")
        if row.state is WorkflowState.RUNNING:
            fail(f"workflow {workflow_id} is still running: `akobridge resume {workflow_id}` "
                 "follows it")
        names = store.retry_workflow(workflow_id)
        if not names:
            fail(f"nothing to retry: every activity of workflow {workflow_id} completed")
        say("retrying", f"workflow #{workflow_id} {row.name}: {', '.join(names)}")
        code = follow(store, Bridge(store, clusters, state), [workflow_id], webhook_wait,
                      clusters)
    sys.exit(code)


def follow(store: Store, bridge: Bridge, wf_ids: list[int], webhook_wait: float,
           clusters: Clusters | None = None) -> int:
    """Drive the workflows to their end with a live view; then wait for the webhooks and print
    the final tables. 0 only if all completed."""
    from runtimes.base import RuntimeFailure

    delivery = DeliveryLoop(store.path)
    delivery.start()
    view = LiveView(store, wf_ids)
    try:
        with logs.above(err), Live(view.render(), console=err, refresh_per_second=4,
                                   transient=True, redirect_stderr=False) as live:
            bridge.run(wf_ids, on_cycle=lambda: live.update(view.render()))
    except KeyboardInterrupt:
        delivery.stop(timeout=1)
        bridge.close()
        err.print("interrupted: jobs keep running; `akobridge status` shows them and "
                  "`akobridge resume` follows them again", highlight=False, soft_wrap=True)
        return 130
    except (RuntimeFailure, SubmissionError) as exc:  # e.g. pyslurm without a matching Slurm
        delivery.stop(timeout=1)
        bridge.close()
        say("[red]error:[/red]", str(exc))
        return 2
    reader = LogReader(bridge.runtime, _remote(clusters))
    finals = [final_view(store, wf_id, reader) for wf_id in wf_ids]
    bridge.close()
    settle_deliveries(store, delivery, webhook_wait)
    return print_finals(store, wf_ids, finals)


def print_finals(store: Store, wf_ids: list[int], finals: list[Any]) -> int:
    """The final tables and line of each workflow; 0 only if all completed."""
    code = 0
    for wf_id, (parts, line, _fails) in zip(wf_ids, finals, strict=True):
        for part in parts:
            out.print(part, soft_wrap=not isinstance(part, Table))
        row = store.workflow(wf_id)
        assert row is not None
        head, _, rest = line.partition(": ")
        state, _, more = rest.partition(" ")
        out.print(f"{escape(head)}: [bold]{state}[/bold] {escape(more)}", soft_wrap=True,
                  highlight=False)
        code = code or (0 if row.state is WorkflowState.COMPLETED else 1)
    return code


def _destinations(pending: dict[str, int]) -> str:
    return ", ".join(sorted(pending))


def settle_deliveries(store: Store, delivery: DeliveryLoop, wait_s: float,
                      grace_s: float = 1.0) -> int:
    """Wait up to ``wait_s`` for the pending webhook deliveries (saying so after ``grace_s``);
    Ctrl-C stops the wait, not the command. Returns how many are still pending."""
    told = False
    started = time.monotonic()
    deadline = started + wait_s
    try:
        while True:
            pending = pending_by_destination(store)
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            due = next_try(store)
            if due is not None and (due - now_utc()).total_seconds() > deadline - now:
                break  # nothing is due again before the deadline
            if not told and now - started >= min(grace_s, wait_s):
                say("", f"waiting up to {wait_s:.0f} s for {sum(pending.values())} webhook "
                    f"deliveries to {_destinations(pending)}… (Ctrl-C stops waiting; they "
                    "stay queued)")
                told = True
            delivery.poke()
            time.sleep(0.05)
    except KeyboardInterrupt:
        say("", "stopped waiting for webhooks")
    delivery.stop(timeout=1)
    pending = pending_by_destination(store)
    left = sum(pending.values())
    if left:
        say("[yellow]warning:[/yellow]",
            f"{left} webhook deliveries to {_destinations(pending)} still pending; "
            "`akobridge resume` (or the daemon) delivers them")
    return left


def deliver_pending(store: Store, wait_s: float) -> int:
    """``resume`` with no workflow to drive: deliver what the outbox still holds now."""
    pending = pending_by_destination(store)
    total = sum(pending.values())
    say("", f"no workflow is running; delivering {total} pending webhook deliveries to "
        f"{_destinations(pending)}")
    make_due(store)
    delivery = DeliveryLoop(store.path)
    delivery.start()
    left = settle_deliveries(store, delivery, wait_s, grace_s=0.0 if wait_s else 0.0)
    out.print(f"delivered {total - left} of {total} webhook deliveries", highlight=False)
    return 0 if not left else 1


# -- cancel, logs ------------------------------------------------------------------------------


class _Done(Exception):
    """The cancelled activities have all ended (stops ``bridge.run`` from ``on_cycle``)."""


def _activity(store: Store, wf_id: int, name: str) -> ActivityRow:
    acts = store.activities(wf_id)
    for a in acts:
        if a.name == name:
            return a
    fail(f"no activity {name!r} in workflow {wf_id} (activities: "
         f"{', '.join(a.name for a in acts[:30])}{', …' if len(acts) > 30 else ''})")


def _workflow(store: Store, wf_id: int) -> WorkflowRow:
    row = store.workflow(wf_id)
    if row is None:
        fail(f"no workflow with id {wf_id}")
    return row


@main.command()
@click.argument("workflow_id", type=WF_ID)
@click.argument("activities", nargs=-1)
@_webhook_wait_option
@_clusters_option
@click.pass_context
def cancel(ctx: click.Context, workflow_id: int, activities: tuple[str, ...],
           webhook_wait: float, clusters_dir_local: str | None) -> None:
    """Cancel a workflow's activities (all of them by default): their jobs are stopped
    (scancel / kill), they end CANCELLED and their webhooks are sent.

    When another akobridge process drives the state dir, it carries the request out; else
    this command does, and leaves the other activities for ``resume``.
    """
    state = _state(ctx)
    store = open_store(state)
    _workflow(store, workflow_id)
    for name in activities:
        _activity(store, workflow_id, name)
    _check_state_dir(state)
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except StateDirBusy as busy:
        client = daemon_client(state)
        if client is not None:
            try:
                hit = client.cancel(workflow_id, list(activities) or None)["activities"]
            except (ApiError, Unreachable) as exc:
                fail_api(exc)
        else:
            hit = store.request_cancel(workflow_id, list(activities) or None)
        if not hit:
            out.print(f"nothing to cancel: the activities of workflow {workflow_id} have ended")
            return
        out.print(f"cancel requested for {len(hit)} activities of workflow {workflow_id}: "
                  f"{escape(', '.join(hit))}; {escape(busy.owner.describe())} stops them "
                  f"(`akobridge status {workflow_id}` shows when)", highlight=False,
                  soft_wrap=True)
        return
    try:
        hit = store.request_cancel(workflow_id, list(activities) or None)
        if not hit:
            out.print(f"nothing to cancel: the activities of workflow {workflow_id} have ended")
            return
        clusters = _clusters(ctx, clusters_dir_local)
        sys.exit(_carry_out_cancel(store, Bridge(store, clusters, state), workflow_id, hit,
                                   webhook_wait))
    finally:
        lock.release()


def _carry_out_cancel(store: Store, bridge: Bridge, wf_id: int, names: list[str],
                      webhook_wait: float) -> int:
    bridge.hold = True  # start nothing new: only stop what was asked to stop
    wanted = set(names)

    def ended() -> None:
        acts = store.activities(wf_id)
        if any(a.state.value not in FINAL_STATES for a in acts if a.name in wanted):
            return
        if all(a.state.value in FINAL_STATES for a in acts):
            row = store.workflow(wf_id)
            if row is not None and row.state is WorkflowState.RUNNING:
                return  # its WORKFLOW_DONE is queued in the next cycle
        raise _Done

    say("cancelling", f"{len(names)} activities of workflow {wf_id}: {', '.join(names)}")
    delivery = DeliveryLoop(store.path)
    delivery.start()
    try:
        ended()
        bridge.run([wf_id], on_cycle=ended)
    except _Done:
        pass
    except KeyboardInterrupt:
        delivery.stop(timeout=1)
        bridge.close()
        say("interrupted:", "the cancel request is stored; the next `akobridge resume` "
            "carries it out")
        return 130
    bridge.close()
    settle_deliveries(store, delivery, webhook_wait)
    acts = [a for a in store.activities(wf_id) if a.name in wanted]
    table = Table(title=f"#{wf_id} cancelled", title_justify="left")
    for col in ("activity", "state", "job", "reason"):
        table.add_column(col)
    for a in acts:
        table.add_row(escape(a.name), styled(a.state.value), escape(a.job_id or ""),
                      escape(a.reason or ""))
    out.print(table)
    row = store.workflow(wf_id)
    assert row is not None
    if row.state is WorkflowState.RUNNING:
        out.print(f"workflow #{wf_id} is still RUNNING: `akobridge resume {wf_id}` runs its "
                  "other activities", highlight=False, soft_wrap=True)
    else:
        out.print(f"workflow #{wf_id} {escape(row.name)}: [bold]{row.state.value}[/bold]",
                  highlight=False, soft_wrap=True)
    return 0


@main.command(name="logs")
@click.argument("workflow_id", type=WF_ID)
@click.argument("activity")
@click.option("--err", "stderr", is_flag=True, help="Show the job's stderr instead of stdout.")
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep printing what the job writes until the activity ends.")
@click.option("--attempt", type=click.IntRange(1, MAX_ID), metavar="N",
              help="The Nth attempt (default: the last one).")
@_clusters_option
@click.pass_context
def logs_cmd(ctx: click.Context, workflow_id: int, activity: str, stderr: bool, follow_: bool,
             attempt: int | None, clusters_dir_local: str | None) -> None:
    """Print the stdout (or --err: stderr) of an activity's job."""
    state = _state(ctx)
    store = open_store(state)
    _workflow(store, workflow_id)
    act = _activity(store, workflow_id, activity)
    stream = "err" if stderr else "out"
    attempts = store.attempts(act.id)
    chosen = attempts[-1] if attempts else None
    if attempt is not None:
        matching = [t for t in attempts if t.number == attempt]
        if not matching:
            fail(f"activity {activity!r} of workflow {workflow_id} has no attempt {attempt} "
                 f"(attempts: {', '.join(str(t.number) for t in attempts) or 'none yet'})")
        chosen = matching[0]
    client = daemon_client(state)
    bridge: Bridge | None = None
    reader: Any
    if client is not None:  # the daemon holds the cluster's connection
        reader = ApiLogReader(client, store)
    else:
        clusters = _clusters(ctx, clusters_dir_local)
        bridge = Bridge(store, clusters, state)
        reader = LogReader(bridge.runtime, _remote(clusters))
    sink = sys.stdout.buffer
    try:
        if not follow_:
            if chosen is None:
                fail(f"activity {activity!r} of workflow {workflow_id} has no job yet "
                     f"({act.state.value}): nothing to show", 1)
            data = reader(chosen, stream)
            if data is None:
                fail(f"cannot read the {stream} log of {activity!r}: "
                     f"{'; '.join(reader.problems.values()) or 'job dir not found'}", 1)
            _write(sink, data)
            return
        _follow_log(store, reader, act, chosen, attempt is not None, stream, sink, state)
    finally:
        if bridge is not None:
            bridge.close()


def _write(sink: Any, data: bytes) -> None:
    try:
        sink.write(data)
        sink.flush()
    except BrokenPipeError:  # piped into `head`
        sys.exit(0)


def _follow_log(store: Store, reader: Any, act: ActivityRow, current: Any, pinned: bool,
                stream: str, sink: Any, state: Path) -> None:
    offset = 0
    warned = False
    while True:
        act = store.activity(act.id)
        ended = act.state.value in FINAL_STATES
        if current is None or not pinned:
            attempts = store.attempts(act.id)
            newest = attempts[-1] if attempts else None
            if newest is not None and (current is None or newest.number != current.number):
                if current is not None:
                    data = reader(current, stream) or b""
                    _write(sink, data[offset:])
                current, offset = newest, 0
                say("", f"--- attempt {current.number} (job {current.job_id or '?'}, "
                    f"{current.jobdir}) ---")
        if current is not None:
            data = reader(current, stream) or b""
            if len(data) < offset:
                offset = 0  # rewritten from the start
            if len(data) > offset:
                _write(sink, data[offset:])
                offset = len(data)
            if pinned:
                fresh = [t for t in store.attempts(act.id) if t.number == current.number]
                ended = ended or bool(fresh and fresh[0].state.value in FINAL_STATES)
        if ended:
            return
        if not warned and read_owner(state) is None:
            say("[yellow]warning:[/yellow]", "no akobridge process drives this state dir: the "
                "activity's state will not change until `akobridge resume` runs")
            warned = True
        time.sleep(0.3)


# -- status, artifacts -------------------------------------------------------------------------


@main.command()
@click.argument("workflow_id", required=False, type=WF_ID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_clusters_option
@click.pass_context
def status(ctx: click.Context, workflow_id: int | None, as_json: bool,
           clusters_dir_local: str | None) -> None:
    """List recent workflows, or the activities of one (with the failures' details)."""
    state = _state(ctx)
    store = open_store(state)
    if workflow_id is None:
        rows = store.workflows()
        if as_json:
            click.echo(json.dumps([workflow_summary_json(w) for w in rows], indent=2))
        else:
            out.print(workflow_table(rows))
        return
    row = _workflow(store, workflow_id)
    client = daemon_client(state)
    bridge: Bridge | None = None
    reader: Any
    if client is not None:
        reader = ApiLogReader(client, store)
    else:
        try:
            clusters: Clusters | None = Clusters.from_dir(
                config.clusters_dir(clusters_dir_local or ctx.obj["clusters_dir"]))
        except (ClusterConfigError, OSError):
            clusters = None  # the logs of local job dirs can still be read
        bridge = Bridge(store, clusters, state) if clusters is not None else None
        reader = LogReader(bridge.runtime if bridge else None, _remote(clusters))
    try:
        if as_json:
            click.echo(json.dumps(workflow_json(store, row, reader), indent=2))
            return
        parts, line, _ = final_view(store, workflow_id, reader, big=10**9)
        for part in parts:
            out.print(part, soft_wrap=not isinstance(part, Table))
        out.print(escape(line), highlight=False, soft_wrap=True)
    finally:
        if bridge is not None:
            bridge.close()


@main.command()
@click.argument("workflow_id", type=WF_ID)
@click.option("--get", "get_path", metavar="PATH",
              help="Download this file or directory (relative to a listed root, or absolute).")
@click.option("--to", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Where --get puts it (default: the current directory).")
@click.option("--json", "as_json", is_flag=True, help="List as JSON.")
@_clusters_option
@click.pass_context
def artifacts(ctx: click.Context, workflow_id: int, get_path: str | None, to: Path,
              as_json: bool, clusters_dir_local: str | None) -> None:
    """List a workflow's files on its cluster, or download one file or directory."""
    from bridge.artifacts import ArtifactError, WorkflowFiles, table
    from runtimes.transport import TransportError

    store = open_store(_state(ctx))
    bridge = Bridge(store, _clusters(ctx, clusters_dir_local), _state(ctx))
    try:
        files = WorkflowFiles(store, bridge, workflow_id)
        if get_path is None:
            listed = files.list()
            if as_json:
                click.echo(json.dumps([
                    {"cluster": a.cluster, "path": a.path, "size": a.info.size,
                     "mtime": a.info.mtime, "mode": f"{a.info.mode:o}"} for a in listed],
                    indent=2))
            else:
                out.print(table(listed, f"#{workflow_id} files"))
            return
        count, size = files.get(get_path, to)
    except ArtifactError as exc:
        fail(str(exc))
    except (OSError, TransportError) as exc:  # unreachable cluster, tar or disk errors
        fail(str(exc), 1)
    finally:
        bridge.close()
    say("fetched", f"{count} file(s), {size} bytes into {to}")


def workflow_table(rows: list[WorkflowRow]) -> Table:
    table = Table()
    for col in ("id", "name", "runtime", "state", "created", "finished"):
        table.add_column(col)
    for w in rows:
        table.add_row(str(w.id), escape(w.name), escape(w.runtime), styled(w.state.value),
                      w.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      w.finished_at.strftime("%H:%M:%S") if w.finished_at else "")
    return table


@main.group()
def cluster() -> None:
    """Cluster configs: check that a cluster is ready for the bridge."""


@cluster.command("check")
@click.argument("name")
@_clusters_option
@click.pass_context
def cluster_check(ctx: click.Context, name: str, clusters_dir_local: str | None) -> None:
    """Connect to cluster NAME and check what its config needs, in one batch of commands.

    Exits 0 when every required check passed (warnings "!" allowed), 1 otherwise.
    """
    from runtimes.check import ClusterCheck, open_transport, passed

    clusters = _clusters(ctx, clusters_dir_local)
    cfg = clusters.get(name)
    if cfg is None:
        fail(f"no cluster config named {name!r} (known: {', '.join(clusters.names())})")
    if not cfg.workdir:
        cfg = cfg.model_copy(update={"workdir": str(ctx.obj["state_dir"] / "jobs")})
    transport = open_transport(cfg)
    check = ClusterCheck(cfg, transport)
    try:
        rows = check.run()
    finally:
        transport.close()
    table = Table(title=f"cluster {cfg.name} ({cfg.transport})", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    marks = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[yellow]![/yellow]"}
    for check_name, ok, detail in rows:
        table.add_row(check_name, marks[ok], escape(detail))
    out.print(table)
    for check_name, ok, detail in rows:
        if ok is False:
            say("[red]✗[/red]", f"{check_name}: {detail}")
    out.print(escape(check.summary()), highlight=False, soft_wrap=True)
    sys.exit(0 if passed(rows) else 1)


register(main)
main.add_command(workflows)
