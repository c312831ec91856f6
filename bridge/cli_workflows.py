"""``akobridge workflows …``: the daemon's Peak-style service from the command line, through
:class:`bridge.peak.client.WorkflowClient`.

The daemon is ``--server URL`` or the one that owns the state dir (its ``owner.json``); the
token comes from ``--token-file`` or ``$AKOBRIDGE_TOKEN``. Replies are printed as JSON
(``--table`` for a table in ``list`` and ``executions``). Bad input exits 2 with a message
naming the field; an error from the service exits 1 with its error and detail.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click
import yaml

from bridge.client import read_token
from bridge.owner import read_owner
from bridge.peak.client import PeakApiError, WorkflowClient
from bridge.peak.problems import DefinitionError

F = TypeVar("F", bound=Callable[..., Any])
WORKFLOW_STATUSES = ("Draft", "Running", "Available", "Paused")
EXECUTION_STATUSES = ("Success", "Running", "Stopped", "Stopping", "Failed")
MAX_ID = 2**63 - 1


class _WorkflowId(click.ParamType):  # type: ignore[type-arg]
    """A Peak workflow id: a positive whole number."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        text = str(value).strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
            self.fail(f"{value!r} is not a workflow id (a whole number from 1, see "
                      "`akobridge workflows list`)", param, ctx)
        return int(text)


class _ExecutionId(click.ParamType):  # type: ignore[type-arg]
    """An execution id: a UUID."""

    name = "EXEC"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            uuid.UUID(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an execution id (a UUID, see `akobridge workflows "
                      "executions ID`)", param, ctx)
        return str(value)


WF_ID, EXEC_ID = _WorkflowId(), _ExecutionId()


def _fail(message: str, code: int = 2) -> NoReturn:
    from bridge.cli import fail

    fail(message, code)


def _print(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _daemon_options(f: F) -> F:
    f = click.option("--server", metavar="URL",
                     help="The daemon (http://host:port or unix:/path; default: the daemon "
                          "that owns --state-dir).")(f)
    f = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Bearer token (default: $AKOBRIDGE_TOKEN).")(f)
    return cast(F, click.pass_context(f))


@contextmanager
def _client(ctx: click.Context) -> Iterator[WorkflowClient]:
    """The client of the daemon the options name; a service error → exit 1, a patch or
    body the client itself refuses → exit 2."""
    params, state = ctx.params, ctx.find_root().obj["state_dir"]
    address = params.get("server")
    if not address:
        owner = read_owner(state)
        if owner is None or not owner.api:
            _fail(f"no daemon owns the state dir {state}: give --server URL, or start one "
                  "with `akobridge serve`")
        address = owner.api
    try:
        token = read_token(params.get("token_file"))
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--token-file: {exc}")
    try:
        client = WorkflowClient(address, token)
    except ValueError as exc:
        _fail(f"--server: {exc}")
    try:
        with client:
            yield client
    except PeakApiError as exc:
        _fail(str(exc), 1)
    except DefinitionError as exc:
        _fail("; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in exc.detail))


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file holding one object; exit 2 naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{what} {path}: cannot read: {exc}")
    except yaml.YAMLError as exc:
        _fail(f"{what} {path}: not JSON or YAML: {exc}")
    if not isinstance(data, dict):
        _fail(f"{what} {path}: must hold one object (a mapping), not {type(data).__name__}")
    return data


def _definition_file(path: Path) -> dict[str, Any]:
    """A definition body, checked as the service checks it (the catalogue aside)."""
    from bridge.peak.definition import parse_definition

    body = _read_mapping(path, "FILE")
    try:
        parse_definition(body)
    except DefinitionError as exc:
        _fail(f"{path}: " + "; ".join(f"{d['field'] or 'body'}: {d['message']}"
                                      for d in exc.detail))
    return body


def _execute_body(params_file: Path | None, steps: tuple[str, ...]) -> dict[str, Any] | None:
    """``{params, stepsToRun}`` from ``--params`` (the ``params`` object, or a whole execute
    body) and each ``--step NAME[:dag]``."""
    body: dict[str, Any] = {}
    if params_file is not None:
        data = _read_mapping(params_file, "--params")
        whole = "params" in data or "stepsToRun" in data
        body = dict(data) if whole else {"params": data}
        for key in body.get("params") or {}:
            if key not in ("global", "stepWise"):
                _fail(f"--params {params_file}: params.{key}: unknown key (global, stepWise)")
    for spec in steps:
        name, _, mode = spec.partition(":")
        if not name or mode not in ("", "dag"):
            _fail(f"--step {spec!r}: give NAME or NAME:dag (dag also runs its dependents)")
        body.setdefault("stepsToRun", []).append(
            {"stepName": name, **({"runDAG": True} if mode else {})})
    return body or None


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bridge.cli import out

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[escape(cell) for cell in row])
    out.print(table)


@click.group()
def workflows() -> None:
    """Peak-style workflows on a daemon: definitions, executions, logs, resources."""


@workflows.command(name="list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(WORKFLOW_STATUSES),
              help="Only workflows in this status (repeatable).")
@click.option("--name", help="Only workflows whose name contains this.")
@click.option("--table", "as_table", is_flag=True, help="A table instead of JSON.")
@_daemon_options
def list_cmd(ctx: click.Context, statuses: tuple[str, ...], name: str | None, as_table: bool,
             **_: Any) -> None:
    """Every definition (all pages), as a JSON list."""
    with _client(ctx) as client:
        found = [wf for page in client.list_workflows(workflow_status=list(statuses) or None,
                                                      name=name, page_size=100)
                 for wf in page["workflows"]]
    if not as_table:
        return _print(found)
    _table("workflows", ["id", "name", "status", "last execution", "triggers"], [
        [str(w["id"]), w["name"], w["status"],
         (w.get("lastExecution") or {}).get("status", "-"),
         ", ".join(k for t in w.get("triggers", []) for k in t if k != "scheduled") or "manual"]
        for w in found])


@workflows.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_daemon_options
def create(ctx: click.Context, file: Path, **_: Any) -> None:
    """Create a definition from FILE (JSON or YAML); prints {id, triggers}."""
    body = _definition_file(file)
    with _client(ctx) as client:
        _print(client.create_workflow(body))


@workflows.command()
@click.argument("workflow_id", metavar="ID", type=WF_ID)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_daemon_options
def update(ctx: click.Context, workflow_id: int, file: Path, **_: Any) -> None:
    """Replace definition ID with FILE (JSON or YAML)."""
    body = _definition_file(file)
    with _client(ctx) as client:
        _print(client.update_workflow(workflow_id, body))


def _simple(name: str, call: Callable[[WorkflowClient, int], Any], doc: str) -> None:
    @workflows.command(name=name, help=doc)
    @click.argument("workflow_id", metavar="ID", type=WF_ID)
    @_daemon_options
    def command(ctx: click.Context, workflow_id: int, **_: Any) -> None:
        with _client(ctx) as client:
            _print(call(client, workflow_id))


_simple("describe", WorkflowClient.describe_workflow, "Show definition ID.")
_simple("delete", WorkflowClient.delete_workflow,
        "Delete definition ID (refused while one of its executions runs).")
_simple("pause", WorkflowClient.pause_workflow, "Pause the triggers of ID.")
_simple("resume", WorkflowClient.resume_workflow, "Resume the triggers of ID.")


@workflows.command()
@click.argument("workflow_id", metavar="ID", type=WF_ID)
@click.option("--params", "params_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON/YAML: {global: {k: v}, stepWise: {step: {k: v}}} (or a whole "
                   "execute body).")
@click.option("--step", "steps", multiple=True, metavar="NAME[:dag]",
              help="Run only this step (:dag also its dependents; repeatable).")
@_daemon_options
def execute(ctx: click.Context, workflow_id: int, params_file: Path | None,
            steps: tuple[str, ...], **_: Any) -> None:
    """Start an execution of ID now; prints {executionId}."""
    body = _execute_body(params_file, steps)
    with _client(ctx) as client:
        _print(client.execute_workflow(workflow_id, body))


@workflows.command()
@click.argument("workflow_id", metavar="ID", type=WF_ID)
@click.option("--status", "statuses", multiple=True, type=click.Choice(EXECUTION_STATUSES),
              help="Only executions in this status (repeatable).")
@click.option("--table", "as_table", is_flag=True, help="A table instead of JSON.")
@_daemon_options
def executions(ctx: click.Context, workflow_id: int, statuses: tuple[str, ...],
               as_table: bool, **_: Any) -> None:
    """The executions of ID (last 90 days, newest first), as a JSON list."""
    with _client(ctx) as client:
        found = [e for page in client.list_executions(workflow_id, status=list(statuses)
                                                      or None, page_size=100)
                 for e in page["executions"]]
    if not as_table:
        return _print(found)
    _table(f"executions of workflow {workflow_id}",
           ["execution", "status", "executed", "finished", "duration"],
           [[e["executionId"], e["status"], e.get("executedAt") or "-",
             e.get("finishedAt") or "-", e.get("duration") or "-"] for e in found])


def _on_execution(name: str, call: Callable[[WorkflowClient, int, str], Any], doc: str) -> None:
    @workflows.command(name=name, help=doc)
    @click.argument("workflow_id", metavar="ID", type=WF_ID)
    @click.argument("execution_id", metavar="EXEC", type=EXEC_ID)
    @_daemon_options
    def command(ctx: click.Context, workflow_id: int, execution_id: str, **_: Any) -> None:
        with _client(ctx) as client:
            _print(call(client, workflow_id, execution_id))


_on_execution("execution", WorkflowClient.get_execution_details,
              "Details of execution EXEC of ID: its steps, their status, times and exit codes.")
_on_execution("stop", WorkflowClient.stop_execution,
              "Stop execution EXEC of ID (Stopping until its jobs are cancelled, then Stopped).")


@workflows.command()
@click.argument("workflow_id", metavar="ID", type=WF_ID)
@click.argument("execution_id", metavar="EXEC", type=EXEC_ID)
@click.argument("step")
@click.option("--follow", "-f", is_flag=True,
              help="Print the lines as they come (text) until the step ends.")
@click.option("--save", "save_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the step's whole log to this file.")
@_daemon_options
def logs(ctx: click.Context, workflow_id: int, execution_id: str, step: str, follow: bool,
         save_to: Path | None, **_: Any) -> None:
    """The log of STEP in execution EXEC of ID: what is there now as JSON {logs,
    nextToken, stepRunStatus}, or with --follow the lines until the step ends."""
    with _client(ctx) as client:
        if save_to is not None:
            client.get_execution_logs(workflow_id, execution_id, step, save=True,
                                      file_name=str(save_to))
            return click.echo(f"saved {save_to}", err=True)
        lines: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = client.get_execution_logs(workflow_id, execution_id, step, token)
            assert page is not None
            lines += page["logs"]
            if follow:
                for line in page["logs"]:
                    click.echo(line["message"])
                sys.stdout.flush()
            if page["nextToken"] is None or (page["nextToken"] == token and not follow):
                break
            if page["nextToken"] == token or not page["logs"]:
                try:
                    time.sleep(0.5)
                except KeyboardInterrupt:
                    sys.exit(130)
            token = page["nextToken"]
    if not follow:
        _print({"logs": lines, "nextToken": page["nextToken"],
                "stepRunStatus": page["stepRunStatus"]})


@workflows.command()
@click.option("--defaults", is_flag=True, help="The default resource instead.")
@_daemon_options
def resources(ctx: click.Context, defaults: bool, **_: Any) -> None:
    """The instance types steps can ask for (resources.instanceTypeId)."""
    with _client(ctx) as client:
        _print(client.get_default_resource() if defaults else client.list_resources())


__all__ = ["workflows"]
