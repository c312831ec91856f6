"""``akobridge serve`` and ``submit``, and the CLI's path through a daemon: when a daemon owns
the state dir, ``run``, ``retry``, ``resume``, ``cancel``, ``logs`` and ``status`` go through
its API (writes and cluster reads) and read the store for the progress view, so the output is
the same as without a daemon and one process drives the workflows."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import NoReturn

import click
from rich.live import Live

from bridge import logs
from bridge.client import ApiError, Client, Unreachable, read_token
from bridge.engine import WorkflowState
from bridge.owner import read_owner
from bridge.progress import LiveView, final_view
from bridge.store import AttemptRow, Store


def daemon_client(state: Path) -> Client | None:
    """A client of the daemon that owns ``state``, if one does."""
    owner = read_owner(state)
    if owner is None or not owner.api:
        return None
    return Client(owner.api, read_token())


class ApiLogReader:
    """:data:`bridge.progress.LogReader` through the daemon (it holds the cluster links)."""

    def __init__(self, client: Client, store: Store) -> None:
        self.client, self.store = client, store
        self.problems: dict[str, str] = {}

    def __call__(self, attempt: AttemptRow, stream: str) -> bytes | None:
        name = self.store.activity(attempt.activity_id).name
        try:
            return self.client.read_all(attempt.workflow_id, name, stream, attempt.number)
        except (ApiError, Unreachable) as exc:
            self.problems[attempt.cluster] = str(exc)
            return None


def follow_daemon(store: Store, client: Client, wf_ids: list[int], webhook_wait: float) -> int:
    """``follow`` for workflows a daemon drives: the same live view, final tables and exit
    code; Ctrl-C stops following, not the workflows."""
    from bridge.cli import err, print_finals, say

    view = LiveView(store, wf_ids)

    def running() -> bool:
        return any((w := store.workflow(i)) is not None and w.state is WorkflowState.RUNNING
                   for i in wf_ids)

    try:
        with logs.above(err), Live(view.render(), console=err, refresh_per_second=4,
                                   transient=True, redirect_stderr=False) as live:
            while running():
                live.update(view.render())
                time.sleep(0.2)
    except KeyboardInterrupt:
        err.print("interrupted: the daemon keeps driving the workflow; `akobridge status` "
                  "shows it", highlight=False, soft_wrap=True)
        return 130
    reader = ApiLogReader(client, store)
    finals = [final_view(store, wf_id, reader) for wf_id in wf_ids]
    deadline = time.monotonic() + webhook_wait
    told = False
    try:
        while sum(store.pending_deliveries(i) for i in wf_ids) and time.monotonic() < deadline:
            if not told and time.monotonic() > deadline - webhook_wait + 1:
                say("", f"waiting up to {webhook_wait:.0f} s for webhook deliveries… "
                    "(Ctrl-C stops waiting; the daemon keeps delivering)")
                told = True
            time.sleep(0.05)
    except KeyboardInterrupt:
        say("", "stopped waiting for webhooks")
    left = sum(store.pending_deliveries(i) for i in wf_ids)
    if left:
        say("[yellow]warning:[/yellow]",
            f"{left} webhook deliveries still pending; the daemon delivers them")
    return print_finals(store, wf_ids, finals)


def fail_api(exc: ApiError | Unreachable) -> NoReturn:
    from bridge.cli import fail

    fail(str(exc), 2 if isinstance(exc, ApiError) and exc.status < 500 else 1)
    raise AssertionError  # fail exits


# -- serve, submit -------------------------------------------------------------------------------


def register(main: click.Group) -> None:
    """Add ``serve`` and ``submit`` to the command group."""

    @main.command()
    @click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                  help="The daemon config (see configs/bridge.yaml).")
    @click.option("--listen", multiple=True, metavar="ADDR",
                  help="Listen here instead of api.listen (unix:/path or host:port; "
                       "repeatable).")
    @click.option("--state-dir", "state_dir_local", type=click.Path(file_okay=False,
                                                                    path_type=Path),
                  help="Override the config's state_dir.")
    @click.option("--clusters-dir", "clusters_dir_local",
                  type=click.Path(file_okay=False, path_type=Path),
                  help="Override the config's clusters_dir.")
    @click.option("--allow-loopback-without-token", is_flag=True,
                  help="Serve loopback listeners without a token (warned).")
    @click.option("--pidfile", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the pid here (refuses to start if a live daemon's is there).")
    @click.pass_context
    def serve(ctx: click.Context, config_file: Path | None, listen: tuple[str, ...],
              state_dir_local: Path | None, clusters_dir_local: Path | None,
              allow_loopback_without_token: bool, pidfile: Path | None) -> None:
        """Run the daemon: the HTTP API and the bridge loops in one process."""
        from bridge.cli import fail
        from bridge.daemon import Daemon, ServeError
        from bridge.daemon.config import (
            DaemonConfigError,
            config_from_mapping,
            load_daemon_config,
            parse_listener,
        )
        from bridge.owner import StateDirBusy

        logs.configure(["INFO", "INFO", "DEBUG"][min(ctx.obj["verbose"], 2)], json=True,
                       stdout=True)
        try:
            cfg = load_daemon_config(config_file) if config_file else config_from_mapping({})
            updates: dict[str, object] = {}
            if clusters_dir_local:
                updates["clusters_dir"] = clusters_dir_local
            elif cfg.clusters_dir is None and ctx.obj["clusters_dir"]:
                updates["clusters_dir"] = Path(ctx.obj["clusters_dir"])
            if allow_loopback_without_token:
                updates["api"] = cfg.api.model_copy(update={
                    "allow_loopback_without_token": True})
            cfg = cfg.model_copy(update=updates)
            listeners = [parse_listener(a) for a in listen] if listen else None
            state = state_dir_local or cfg.state_dir or (
                ctx.obj["state_dir"] if ctx.obj.get("state_dir_given") else None)
            daemon = Daemon(cfg, state, listeners)
        except (DaemonConfigError, ValueError) as exc:
            fail(str(exc))
        daemon.install_signals()
        try:
            code = daemon.run(pidfile)
        except (ServeError, DaemonConfigError, StateDirBusy) as exc:
            fail(str(exc))
        except Exception as exc:
            if type(exc).__name__ == "PidFileBusy":
                fail(str(exc))
            raise
        sys.exit(code)

    @main.command()
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("--server", metavar="URL",
                  help="The daemon (http://host:port or unix:/path; default: the daemon that "
                       "owns --state-dir).")
    @click.option("--runtime", help="Run on this cluster instead of spec.runtime.")
    @click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                  help="Bearer token (default: $AKOBRIDGE_TOKEN).")
    @click.option("--idempotency-key", metavar="KEY",
                  help="Submitting again with the same key returns the same workflow.")
    @click.pass_context
    def submit(ctx: click.Context, file: Path, server: str | None, runtime: str | None,
               token_file: Path | None, idempotency_key: str | None) -> None:
        """Submit a workflow file to a daemon and print its id (follow it with `status`)."""
        from bridge.cli import fail, out

        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{file}: cannot read: {exc}")
        address = server
        if address is None:
            owner = read_owner(ctx.obj["state_dir"])
            if owner is None or not owner.api:
                fail(f"no daemon owns the state dir {ctx.obj['state_dir']}: give --server URL, "
                     "or start one with `akobridge serve`")
            address = owner.api
        try:
            token = read_token(token_file)
        except OSError as exc:
            fail(f"--token-file: {exc}")
        try:
            with Client(address, token) as client:
                reply = client.submit(text, runtime, idempotency_key)
        except ApiError as exc:
            for d in exc.detail:
                line = f" (line {d['line']})" if d.get("line") else ""
                click.echo(f"error: {file}: {d.get('field')}{line}: {d.get('message')}",
                           err=True)
            if not exc.detail:
                click.echo(f"error: {exc.error}", err=True)
            sys.exit(2)
        except Unreachable as exc:
            fail(str(exc), 1)
        out.print(f"workflow {reply['name']!r} is #{reply['id']} ({address})", highlight=False,
                  soft_wrap=True)


__all__ = ["ApiLogReader", "daemon_client", "fail_api", "follow_daemon", "register"]
