"""Every call of seeds/peak-workflows-sdk.txt made with the REAL peak-sdk client against a
bridge daemon. Runs in peak-sdk's own virtualenv (not ours): ``python seed_calls.py URL
BODIES.json OUT.json WORKDIR``, with PEAK_AUTH_TOKEN and STAGE set.

The seed's bodies come from BODIES.json (the test extracts them from the seed as written);
the placeholder ids of the seed (``workflow_id=1``, ``"execution_id"``) are replaced by the
real ids the calls before returned. Each call's outcome (``{"ok": value}`` or ``{"error":
class, "message": text}``) goes into OUT.json with every host name the process looked up and
every address it connected to: a guard refuses anything but loopback, so a missing half of
the shim shows up as a refused lookup instead of a request to the vendor's host.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
LOOKUPS: list[str] = []
CONNECTS: list[str] = []
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else str(host)
    LOOKUPS.append(name)
    if name not in LOOPBACK:
        raise socket.gaierror(f"seed_calls: no route to outside host {name}")
    return _getaddrinfo(host, *args, **kwargs)


def _guarded_connect(self: socket.socket, address: Any) -> None:
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    CONNECTS.append(host)
    if isinstance(address, tuple) and host not in LOOPBACK:
        raise OSError(f"seed_calls: refused connection to {host}")
    _connect(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]


def _shim(url: str) -> None:
    """bridge/peak/sdk.py's point_peak_sdk_at, loaded by path (no bridge import here)."""
    path = Path(__file__).resolve().parents[2] / "bridge" / "peak" / "sdk.py"
    spec = importlib.util.spec_from_file_location("akb_peak_sdk", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.point_peak_sdk_at(url)


def main(url: str, bodies_file: str, out_file: str, workdir: str) -> None:
    _shim(url)
    from peak.resources import workflows

    b = json.loads(Path(bodies_file).read_text())
    out: dict[str, Any] = {}

    def call(name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - StopIteration and peak exceptions
            out[name] = {"error": type(exc).__name__, "message": str(exc)}
            return None
        out[name] = {"ok": value}
        return value

    wf_client = workflows.get_client()
    cron_id = call("create_cron", lambda: wf_client.create_workflow(b["cron"]))["id"]
    webhook_reply = call("create_webhook", lambda: wf_client.create_workflow(b["webhook"]))
    webhook_id = webhook_reply["id"]
    manual_id = call("create_manual", lambda: wf_client.create_workflow(b["manual"]))["id"]

    call("list_seed_filters", lambda: next(wf_client.list_workflows(
        name="test", workflow_status=["Available"], last_execution_status=["Running"],
        last_modified_by=["test@peak.ai"])))
    call("list_iterated", lambda: list(wf_client.list_workflows(
        name="workflow", workflow_status=["Available"], page_size=1)))
    call("list_first_of_iterator", lambda: next(wf_client.list_workflows(
        name="workflow", workflow_status=["Available", "Paused"])))

    call("update_manual", lambda: wf_client.update_workflow(
        workflow_id=manual_id, body=b["updated"]))
    call("patch_via_args", lambda: wf_client.patch_workflow(
        workflow_id=manual_id, name="updated-workflow", image_id=100, image_version_id=100,
        instance_type_id=23, step_names=["step1"]))
    call("describe_after_patch_args", lambda: wf_client.describe_workflow(manual_id))
    # As written the seed renames cron-workflow to the name manual-workflow got above.
    call("patch_via_body", lambda: wf_client.patch_workflow(
        workflow_id=cron_id, body=b["patch"]))
    call("patch_via_body_own_name", lambda: wf_client.patch_workflow(
        workflow_id=cron_id, body={**b["patch"], "name": "cron-workflow"}))
    call("describe_after_patch_body", lambda: wf_client.describe_workflow(cron_id))
    call("create_or_update_cron", lambda: wf_client.create_or_update_workflow(
        b["cron_again"]))
    call("create_or_update_updated", lambda: wf_client.create_or_update_workflow(
        b["updated_again"]))
    call("describe_manual", lambda: wf_client.describe_workflow(workflow_id=manual_id))

    call("pause", lambda: wf_client.pause_workflow(cron_id))
    call("describe_paused", lambda: wf_client.describe_workflow(cron_id)["status"])
    call("resume", lambda: wf_client.resume_workflow(cron_id))
    call("describe_resumed", lambda: wf_client.describe_workflow(cron_id)["status"])

    call("execute_plain", lambda: wf_client.execute_workflow(workflow_id=manual_id))
    call("execute_body", lambda: wf_client.execute_workflow(
        workflow_id=manual_id, body=b["execute"]))
    call("list_executions_seed", lambda: list(islice(wf_client.list_executions(
        workflow_id=manual_id, status=["Running", "Success"], count=10,
        date_from="2024-01-07T18:00:00.000Z", date_to="2024-01-07T19:00:00.000Z"), 50)))
    call("list_executions_all", lambda: list(wf_client.list_executions(
        workflow_id=manual_id, page_size=1)))
    executed = out["execute_body"].get("ok") or {}
    call("details_manual", lambda: wf_client.get_execution_details(
        workflow_id=manual_id, execution_id=executed["executionId"]))

    _logs(wf_client, call, b["logs"], out, workdir)

    call("list_resources", wf_client.list_resources)
    call("get_default_resource", wf_client.get_default_resource)
    call("delete_seed_literal", lambda: wf_client.delete_workflow(workflow_id=63153))
    call("delete_webhook", lambda: wf_client.delete_workflow(workflow_id=webhook_id))
    call("describe_deleted", lambda: wf_client.describe_workflow(webhook_id))
    call("delete_running", lambda: wf_client.delete_workflow(workflow_id=out["logs_wf"]["ok"]))

    out["lookups"], out["connects"] = sorted(set(LOOKUPS)), sorted(set(CONNECTS))
    Path(out_file).write_text(json.dumps(out, default=str, indent=1))


def _logs(wf_client: Any, call: Callable[[str, Callable[[], Any]], Any], body: dict[str, Any],
          out: dict[str, Any], workdir: str) -> None:
    """The seed's three get_execution_logs calls on an execution whose step ``talk`` prints
    lines slowly (the seed's steps run ``python script.py``, which has no script here); its
    step ``wait`` keeps the execution running for the delete that must be refused."""
    wf_id = call("logs_wf", lambda: wf_client.create_workflow(body)["id"])
    ex_id = call("logs_execute", lambda: wf_client.execute_workflow(wf_id))["executionId"]
    first = call("logs_first", lambda: wf_client.get_execution_logs(
        workflow_id=wf_id, execution_id=ex_id, step_name="talk"))
    pages, token = [first], (first or {}).get("nextToken")
    deadline = time.monotonic() + 60
    while token is not None and time.monotonic() < deadline:
        time.sleep(0.3)
        def next_page(t: str = token) -> Any:
            return wf_client.get_execution_logs(workflow_id=wf_id, execution_id=ex_id,
                                                step_name="talk", next_token=t)

        page = call("logs_next", next_page)
        if page is None:
            break
        pages.append(page)
        token = page.get("nextToken")
    out["logs_pages"] = pages
    saved = Path(workdir) / "workflow_execution_logs.log"
    call("logs_save", lambda: wf_client.get_execution_logs(
        workflow_id=wf_id, execution_id=ex_id, step_name="talk", save=True,
        file_name=str(saved)))
    out["logs_saved_text"] = saved.read_text() if saved.exists() else None
    call("logs_details", lambda: wf_client.get_execution_details(
        workflow_id=wf_id, execution_id=ex_id))


if __name__ == "__main__":
    main(*sys.argv[1:5])
