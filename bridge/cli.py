"""The ``akobridge`` command line: run, validate, render, status.

Bad input exits with status 2 and a message that names the field; a run exits 0 only when
every activity completed.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from bridge import __version__, config, logs
from bridge.engine import WorkflowState
from bridge.events import DeliveryLoop
from bridge.runner import Bridge, SubmissionError
from bridge.spec import SpecError, Workflow, parse_akoflow
from bridge.store import ActivityRow, Store, WorkflowRow
from runtimes.config import ClusterConfigError, Clusters, UnknownCluster
from runtimes.render import RenderError, job_token, render

out = Console()
err = Console(stderr=True)

STATE_STYLE = {
    "COMPLETED": "green", "RUNNING": "cyan", "QUEUED": "blue", "SUBMITTING": "blue",
    "PENDING": "dim", "SKIPPED": "yellow", "RETRY_WAIT": "magenta",
}


def say(label: str, text: str) -> None:
    """One message on stderr: ``text`` is shown as is (not markup) and never wrapped."""
    err.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    say("[red]error:[/red]", message)
    sys.exit(code)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = {"state_dir": config.state_dir(state_dir), "clusters_dir": clusters_dir}


def _clusters_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--clusters-dir", "clusters_dir_local", type=click.Path(file_okay=False),
                        help="Directory of cluster config files.")(f)


def _clusters(ctx: click.Context, local: str | None) -> Clusters:
    return load_clusters(local or ctx.obj["clusters_dir"])


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
            cluster = clusters.require(step.runtime or wf.runtime).resolved(ctx.obj["state_dir"])
            workdir = cluster.workdir
            rendered = render(wf, step, cluster, workflow_id=0, attempt=1,
                              token=job_token("render", 0, i, 1),
                              jobdir=f"{workdir}/{wf.name}-0/{step.name}/1")
        except (UnknownCluster, RenderError) as exc:
            fail(str(exc))
        click.echo(f"# ---- {step.name} ----")
        click.echo(rendered.script, nl=False)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--runtime", help="Run on this cluster instead of spec.runtime.")
@click.option("--webhook-wait", default=30.0, show_default=True,
              help="Seconds to wait at the end for webhooks to be delivered.")
@_clusters_option
@click.pass_context
def run(ctx: click.Context, file: Path, runtime: str | None, webhook_wait: float,
        clusters_dir_local: str | None) -> None:
    """Submit a workflow and follow it to the end with live progress."""
    wf = load_workflow(file, runtime)
    clusters = _clusters(ctx, clusters_dir_local)
    state = ctx.obj["state_dir"]
    store = Store(state / config.DB_NAME)
    bridge = Bridge(store, clusters, state)
    from runtimes.base import RuntimeFailure

    try:
        for name in sorted({s.runtime or wf.runtime for s in wf.steps}):
            bridge.runtime(name)  # refuse before storing, e.g. a pyslurm not built for Slurm
        wf_id = bridge.submit(wf)
    except (SubmissionError, RuntimeFailure) as exc:
        fail(str(exc))
    err.print(f"workflow {wf.name!r} is #{wf_id} on [bold]{wf.runtime}[/bold] "
              f"(state: {escape(str(store.path))})", highlight=False)
    sys.exit(follow(store, bridge, [wf_id], webhook_wait))


def follow(store: Store, bridge: Bridge, wf_ids: list[int], webhook_wait: float) -> int:
    """Drive the workflows to their end with a live table; 0 only if all completed."""
    from runtimes.base import RuntimeFailure

    delivery = DeliveryLoop(store.path)
    delivery.start()

    def tables() -> Group:
        return Group(*(activity_table(store, i) for i in wf_ids))

    try:
        with Live(tables(), console=err, refresh_per_second=4, transient=True) as live:
            bridge.run(wf_ids, on_cycle=lambda: live.update(tables()))
    except KeyboardInterrupt:
        err.print("interrupted: jobs keep running; `akobridge status` shows them and "
                  "`akobridge resume` follows them again")
        return 130
    except RuntimeFailure as exc:  # e.g. slurm.backend: pyslurm without a matching pyslurm
        say("[red]error:[/red]", str(exc))
        return 2
    finally:
        bridge.close()
    deadline = time.monotonic() + webhook_wait
    while store.pending_deliveries() and time.monotonic() < deadline:
        delivery.wake.set()
        time.sleep(0.05)
    delivery.stopping.set()
    delivery.wake.set()
    delivery.join(timeout=5)
    left = store.pending_deliveries()
    if left:
        err.print(f"[yellow]warning:[/yellow] {left} webhook deliveries still pending; "
                  "`akobridge resume` or the daemon retries them")
    code = 0
    for wf_id in wf_ids:
        out.print(activity_table(store, wf_id))
        row = store.workflow(wf_id)
        assert row is not None
        out.print(f"workflow #{wf_id} {row.name}: [bold]{row.state.value}[/bold]", soft_wrap=True)
        code = code or (0 if row.state is WorkflowState.COMPLETED else 1)
    return code


@main.command()
@click.argument("workflow_id", required=False, type=int)
@_clusters_option
@click.pass_context
def resume(ctx: click.Context, workflow_id: int | None, clusters_dir_local: str | None) -> None:
    """Follow the unfinished workflows of the store (or one of them) to the end.

    After an interrupted ``run`` or a crash: submissions that were in flight are matched to
    their Slurm jobs by name, so nothing is submitted twice.
    """
    store = _open_store(ctx)
    active = [w.id for w in store.workflows(active_only=True, limit=1_000_000)]
    if workflow_id is not None and workflow_id not in active:
        fail(f"workflow {workflow_id} is not running (see `akobridge status`)")
    wanted = [workflow_id] if workflow_id is not None else active
    if not wanted:
        out.print("nothing to resume: no workflow is running")
        return
    code = follow(store, Bridge(store, _clusters(ctx, clusters_dir_local), ctx.obj["state_dir"]),
                  wanted, webhook_wait=30.0)
    sys.exit(code)


def _open_store(ctx: click.Context) -> Store:
    path = ctx.obj["state_dir"] / config.DB_NAME
    if not path.exists():
        fail(f"no state at {path} yet: nothing has run with this --state-dir")
    return Store(path)


@main.command()
@click.argument("workflow_id", required=False, type=int)
@click.pass_context
def status(ctx: click.Context, workflow_id: int | None) -> None:
    """List recent workflows, or the activities of one."""
    store = _open_store(ctx)
    if workflow_id is None:
        out.print(workflow_table(store.workflows()))
        return
    if store.workflow(workflow_id) is None:
        fail(f"no workflow with id {workflow_id}")
    out.print(activity_table(store, workflow_id))


@main.command()
@click.argument("workflow_id", type=int)
@click.option("--get", "get_path", metavar="PATH",
              help="Download this file or directory (relative to a listed root, or absolute).")
@click.option("--to", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Where --get puts it (default: the current directory).")
@_clusters_option
@click.pass_context
def artifacts(ctx: click.Context, workflow_id: int, get_path: str | None, to: Path,
              clusters_dir_local: str | None) -> None:
    """List a workflow's files on its cluster, or download one file or directory."""
    from bridge.artifacts import ArtifactError, WorkflowFiles, table
    from runtimes.transport import TransportError

    store = _open_store(ctx)
    bridge = Bridge(store, _clusters(ctx, clusters_dir_local), ctx.obj["state_dir"])
    try:
        files = WorkflowFiles(store, bridge, workflow_id)
        if get_path is None:
            out.print(table(files.list(), f"#{workflow_id} files"))
            return
        count, size = files.get(get_path, to)
    except ArtifactError as exc:
        fail(str(exc))
    except (OSError, TransportError) as exc:  # unreachable cluster, tar or disk errors
        fail(str(exc), 1)
    finally:
        bridge.close()
    say("fetched", f"{count} file(s), {size} bytes into {to}")


def _duration(a: ActivityRow) -> str:
    if not a.started_at:
        return ""
    end = a.finished_at or datetime.now(a.started_at.tzinfo)
    seconds = (end - a.started_at).total_seconds()
    return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.0f}s"


def _styled(state: str) -> str:
    style = STATE_STYLE.get(state, "red")
    return f"[{style}]{state}[/{style}]"


def activity_table(store: Store, wf_id: int) -> Table:
    wf = store.workflow(wf_id)
    title = f"#{wf_id} {wf.name} — {wf.state.value}" if wf else f"#{wf_id}"
    table = Table(title=title, title_justify="left")
    for col in ("activity", "state", "exit", "duration", "job", "try", "reason"):
        table.add_column(col)
    for a in store.activities(wf_id):
        table.add_row(a.name, _styled(a.state.value),
                      "" if a.exit_code is None else str(a.exit_code), _duration(a),
                      a.job_id or "", str(a.attempt), escape(a.reason or ""))
    return table


def workflow_table(rows: list[WorkflowRow]) -> Table:
    table = Table()
    for col in ("id", "name", "runtime", "state", "created", "finished"):
        table.add_column(col)
    for w in rows:
        table.add_row(str(w.id), w.name, w.runtime, _styled(w.state.value),
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
