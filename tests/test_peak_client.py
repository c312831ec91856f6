"""bridge.client.WorkflowClient and ``akobridge workflows …`` against a real ``akobridge serve``
that wants a token: every client method once with the seed's bodies, page iterators over
several pages, a retry after a lost reply (one execution, one definition: the same
x-peak-requestId), 503s retried, errors naming their fields, and the CLI commands as
subprocesses with their exit codes and output."""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_peak_definition import CRON, MANUAL, PATCH_BODY, SEED, UPDATED, WEBHOOK
from test_peak_definitions_api import TOKEN, Api, peak_daemon
from test_peak_executions_api import definition

from bridge.client import WorkflowClient
from bridge.peak import DefinitionError
from bridge.peak.client import PeakApiError

REPO = Path(__file__).resolve().parents[1]
EXECUTE_BODY: dict[str, Any] = ast.literal_eval(
    re.findall(r"^body = (\{.*?^\})$", SEED.read_text(), re.M | re.S)[0])
"""The seed's execute body (``body = {...}``, the one without an annotation)."""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("peak-client")
    secrets = tmp / "peak.secrets"  # the seed's steps name secret-1 and secret-2
    secrets.write_text("secret-1=one\nsecret-2=two\ngithub=gh-token\n")
    secrets.chmod(0o600)
    yield from peak_daemon(tmp, {"api": {"allow_loopback_without_token": False},
                                 "peak": {"secrets_file": str(secrets)}})


@pytest.fixture()
def client(api: Api) -> Iterator[WorkflowClient]:
    with WorkflowClient(api.daemon.url, TOKEN, backoff=0.05) as c:
        yield c


def wait(client: WorkflowClient, wf_id: int, ex: str, until: set[str],
         timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = client.get_execution_details(wf_id, ex)
        if got["status"] in until:
            return got
        assert time.monotonic() < deadline, f"execution {ex} still {got['status']}"
        time.sleep(0.2)


# --- the client --------------------------------------------------------------------------


def test_definitions_with_the_seeds_bodies(client: WorkflowClient) -> None:
    cron = client.create_workflow(copy.deepcopy(CRON[0]))
    hooked = client.create_workflow(copy.deepcopy(WEBHOOK[0]))
    manual_id = client.create_workflow(copy.deepcopy(MANUAL[0]))["id"]
    assert isinstance(cron["id"], int) and len(hooked["triggers"][0]["webhook"]) == 36
    described = client.describe_workflow(workflow_id=manual_id)
    assert described["name"] == "manual-workflow" and described["status"] in {"Available",
                                                                             "Draft"}
    assert client.update_workflow(workflow_id=manual_id, body=UPDATED[0])["id"] == manual_id
    client.patch_workflow(workflow_id=manual_id, name="updated-workflow", image_id=100,
                          image_version_id=100, instance_type_id=23, step_names=["step1"])
    steps = client.describe_workflow(manual_id)["steps"]
    assert (steps["step1"]["imageId"], steps["step1"]["resources"]["instanceTypeId"]) == (
        100, 23)
    assert steps["step2"]["imageId"] == 456  # not named in step_names
    assert steps["step1"]["parameters"]["env"] == [{"key": "value"}]
    with pytest.raises(PeakApiError) as taken:  # as written the seed reuses that name
        client.patch_workflow(workflow_id=cron["id"], body=PATCH_BODY[0])
    assert taken.value.status == 409 and "updated-workflow" in str(taken.value)
    client.patch_workflow(workflow_id=cron["id"], body={**PATCH_BODY[0], "name": "cron-workflow"})
    patched = client.describe_workflow(cron["id"])
    assert set(patched["steps"]) == {"stepName", "step1", "step2"}
    assert patched["steps"]["step2"]["resources"] == {"instanceTypeId": 22, "storage": "20GB"}
    with pytest.raises(DefinitionError):  # refused before anything is sent
        client.patch_workflow(cron["id"], image_id=100, step_names=["nope"])
    assert client.create_or_update_workflow(CRON[1])["id"] == cron["id"]  # exact name
    assert client.create_or_update_workflow(UPDATED[1])["id"] == cron["id"]
    fresh = client.create_or_update_workflow({**CRON[1], "name": "cron"})  # a prefix only
    assert fresh["id"] not in {cron["id"], manual_id}
    assert client.pause_workflow(cron["id"]) == {}
    assert client.describe_workflow(cron["id"])["status"] == "Paused"
    assert client.resume_workflow(cron["id"]) == {}
    assert client.describe_workflow(cron["id"])["status"] == "Available"
    assert client.delete_workflow(workflow_id=hooked["id"]) == {}
    with pytest.raises(PeakApiError) as gone:
        client.describe_workflow(hooked["id"])
    assert gone.value.status == 404 and "workflowId" in str(gone.value)
    assert gone.value.detail[0]["field"] == "workflowId"


def test_list_workflows_walks_every_page(client: WorkflowClient) -> None:
    ids = [client.create_workflow(definition(f"paged-{i}", {"s": {"command": "true"}}))["id"]
           for i in range(3)]
    pages = list(client.list_workflows(name="paged-", page_size=1))
    assert [p["pageNumber"] for p in pages] == [1, 2, 3]
    assert [w["id"] for p in pages for w in p["workflows"]] == ids
    assert {p["pageCount"] for p in pages} == {3} and pages[0]["workflowsCount"] == 3
    assert [p["pageNumber"] for p in client.list_workflows(name="paged-", page_size=1,
                                                           page_number=2)] == [2, 3]
    empty = list(client.list_workflows(name="no-such-workflow"))
    assert len(empty) == 1 and empty[0]["pageCount"] == 0 and empty[0]["workflows"] == []
    first = next(client.list_workflows(name="test", workflow_status=["Available"],
                                       last_execution_status=["Running"],
                                       last_modified_by=["test@peak.ai"]))
    assert first["workflows"] == []  # the seed's filters, with repeated keys


def test_executions_details_logs_and_stop(client: WorkflowClient, tmp_path: Path) -> None:
    wf_id = client.create_workflow(definition("client-exec", {
        "step1": {"command": "for i in 1 2 3; do echo line-$i; sleep 0.3; done"},
        "step2": {"command": "echo two", "parents": ["step1"]}}))["id"]
    first = client.execute_workflow(workflow_id=wf_id)["executionId"]
    wait(client, wf_id, first, {"Success", "Failed"})
    second = client.execute_workflow(workflow_id=wf_id, body=EXECUTE_BODY)["executionId"]
    got = wait(client, wf_id, second, {"Success", "Failed"})
    assert got["executionId"] == second and {s["name"] for s in got["steps"]} == {"step1",
                                                                                  "step2"}
    pages = list(client.list_executions(workflow_id=wf_id, page_size=1))
    assert [p["pageNumber"] for p in pages] == [1, 2] and pages[0]["executionCount"] == 2
    assert [e["executionId"] for p in pages for e in p["executions"]] == [second, first]
    seed_window = list(client.list_executions(
        workflow_id=wf_id, status=["Running", "Success"], count=10,
        date_from="2024-01-07T18:00:00.000Z", date_to="2024-01-07T19:00:00.000Z"))
    assert seed_window[0]["executions"] == []
    lines: list[str] = []
    token: str | None = None
    status = ""
    for _ in range(50):
        page = client.get_execution_logs(workflow_id=wf_id, execution_id=first,
                                         step_name="step1", next_token=token)
        assert page is not None
        lines += [line["message"] for line in page["logs"]]
        token, status = page["nextToken"], page["stepRunStatus"]
        if token is None:
            break
    assert lines == ["line-1", "line-2", "line-3"] and status == "Success"
    target = tmp_path / "step1.log"
    assert client.get_execution_logs(wf_id, first, "step1", save=True,
                                     file_name=str(target)) is None
    assert target.read_text() == "line-1\nline-2\nline-3\n"

    long_id = client.create_workflow(definition("client-stop", {
        "long": {"command": "sleep 120"}}))["id"]
    ex = client.execute_workflow(long_id)["executionId"]
    wait(client, long_id, ex, {"Running"})
    assert client.stop_execution(workflow_id=long_id, execution_id=ex) == {}
    assert wait(client, long_id, ex, {"Stopped"})["status"] == "Stopped"


def test_resources(client: WorkflowClient) -> None:
    resources = client.list_resources()
    assert {r["id"] for r in resources} >= {21, 22, 23}
    assert set(client.get_default_resource()) == {"instanceTypeId", "storage"}


def test_a_wrong_token_is_an_error_naming_the_status(api: Api) -> None:
    with WorkflowClient(api.daemon.url, "wrong-token-" + "y" * 20) as c, \
            pytest.raises(PeakApiError) as refused:
        c.list_resources()
    assert refused.value.status == 401 and str(refused.value).startswith("HTTP 401")


# --- retries with the same request id -----------------------------------------------------


class Proxy:
    """Forwards to the daemon; the first request whose path ends with one of ``drop`` is
    forwarded and its reply dropped (the connection closes unanswered), the first ending with
    one of ``busy`` is answered 503 without forwarding."""

    def __init__(self, upstream: str, drop: tuple[str, ...] = (),
                 busy: tuple[str, ...] = ()) -> None:
        self.upstream, self.drop, self.busy = upstream, set(drop), set(busy)
        self.seen: list[tuple[str, str, str | None]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append((self.command, self.path, self.headers["x-peak-requestId"]))
                path = self.path.split("?")[0]
                hit = next((s for s in proxy.busy if path.endswith(s)), None)
                if hit:
                    proxy.busy.discard(hit)
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                r = httpx.request(self.command, proxy.upstream + self.path, content=body,
                                  headers=headers, timeout=30)
                hit = next((s for s in proxy.drop if path.endswith(s)), None)
                if hit:
                    proxy.drop.discard(hit)
                    self.close_connection = True  # the reply is lost
                    return
                self.send_response(r.status_code)
                for key in ("Content-Type", "Retry-After"):
                    if key in r.headers:
                        self.send_header(key, r.headers[key])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_lost_reply_is_retried_with_the_same_request_id(api: Api) -> None:
    proxy = Proxy(api.daemon.url, drop=("/workflows/", "/execute"))
    try:
        with WorkflowClient(proxy.url, TOKEN, backoff=0.05) as c:
            wf_id = c.create_workflow(definition("retried", {"s": {"command": "true"}}))["id"]
            ex = c.execute_workflow(wf_id)["executionId"]
            assert [w["id"] for p in c.list_workflows(name="retried") for w in p["workflows"]
                    ] == [wf_id]  # one definition
            listed = [e["executionId"] for p in c.list_executions(wf_id)
                      for e in p["executions"]]
            assert listed == [ex]  # exactly one execution
    finally:
        proxy.close()
    creates = [rid for m, p, rid in proxy.seen if m == "POST" and p == "/workflows/api/v1/"
               "workflows/"]
    executes = [rid for m, p, rid in proxy.seen if p.endswith("/execute")]
    assert len(creates) == 2 and len(set(creates)) == 1 and creates[0]
    assert len(executes) == 2 and len(set(executes)) == 1 and executes[0]
    others = [rid for m, p, rid in proxy.seen if not p.endswith("/execute") and m == "GET"]
    assert len(set(others)) == len(others)  # a fresh id for every other call


def test_a_503_is_retried_and_the_last_answer_kept(api: Api) -> None:
    proxy = Proxy(api.daemon.url, busy=("/resources",))
    try:
        with WorkflowClient(proxy.url, TOKEN, backoff=0.05) as c:
            assert {r["id"] for r in c.list_resources()} >= {21}
        with WorkflowClient(proxy.url, TOKEN, retries=0) as c:
            proxy.busy.add("/resources")
            with pytest.raises(PeakApiError) as busy:
                c.list_resources()
            assert busy.value.status == 503
    finally:
        proxy.close()
    rids = [rid for _, p, rid in proxy.seen if p.endswith("/resources")]
    assert len(rids) == 3 and rids[0] == rids[1] != rids[2]
    with WorkflowClient("http://127.0.0.1:9", TOKEN, retries=1, backoff=0.01) as dead, \
            pytest.raises(PeakApiError) as unreachable:
        dead.list_resources()
    assert unreachable.value.status == 0 and "no reply" in str(unreachable.value)


# --- the CLI ------------------------------------------------------------------------------


def cli(api: Api, *args: str, env: dict[str, str] | None = None,
        server: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m bridge workflows ARGS`` finding the daemon through its state dir (or
    ``--server`` when ``server``), the token from AKOBRIDGE_TOKEN."""
    base = [sys.executable, "-m", "bridge", "--state-dir", str(api.daemon.state),
            "workflows", *args]
    if server:
        base += ["--server", api.daemon.url]
    full_env = {**os.environ, "AKOBRIDGE_TOKEN": TOKEN, "COLUMNS": "200", **(env or {})}
    r = subprocess.run(base, capture_output=True, text=True, env=full_env, timeout=120,
                       cwd=REPO)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def ok_json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_definitions(api: Api, tmp_path: Path) -> None:
    manual = tmp_path / "manual.json"
    manual.write_text(json.dumps({**MANUAL[0], "name": "cli-manual"}))
    wf_id = ok_json(cli(api, "create", str(manual)))["id"]
    updated = tmp_path / "updated.yaml"
    updated.write_text(json.dumps({**UPDATED[0], "name": "cli-updated"}))  # JSON is YAML
    assert ok_json(cli(api, "update", str(wf_id), str(updated), server=True))["id"] == wf_id
    assert ok_json(cli(api, "describe", str(wf_id)))["name"] == "cli-updated"
    listed = ok_json(cli(api, "list", "--name", "cli-", "--status", "Available"))
    assert [w["id"] for w in listed] == [wf_id]
    table = cli(api, "list", "--name", "cli-", "--table")
    assert table.returncode == 0 and "cli-updated" in table.stdout
    assert ok_json(cli(api, "pause", str(wf_id))) == {}
    assert ok_json(cli(api, "list", "--status", "Paused", "--name", "cli-"))[0]["id"] == wf_id
    assert ok_json(cli(api, "resume", str(wf_id))) == {}
    resources = ok_json(cli(api, "resources"))
    assert {r["id"] for r in resources} >= {21, 22, 23}
    assert set(ok_json(cli(api, "resources", "--defaults"))) == {"instanceTypeId", "storage"}
    assert ok_json(cli(api, "delete", str(wf_id))) == {}
    gone = cli(api, "describe", str(wf_id))
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr and "workflowId" in gone.stderr


def test_cli_executions_logs_and_stop(api: Api, tmp_path: Path) -> None:
    wf_id = ok_json(cli(api, "create", str(_file(tmp_path, definition("cli-exec", {
        "step1": {"command": "echo one; echo two"},
        "step2": {"command": "echo $key", "parents": ["step1"]}})))))["id"]
    params = _file(tmp_path, {"global": {"key": "from-params"}})
    ex = ok_json(cli(api, "execute", str(wf_id), "--params", str(params), "--step",
                     "step1:dag"))["executionId"]
    client = WorkflowClient(api.daemon.url, TOKEN)
    wait(client, wf_id, ex, {"Success", "Failed"})
    details = ok_json(cli(api, "execution", str(wf_id), ex))
    assert details["status"] == "Success" and len(details["steps"]) == 2
    listed = ok_json(cli(api, "executions", str(wf_id), "--status", "Success"))
    assert [e["executionId"] for e in listed] == [ex]
    assert ex in cli(api, "executions", str(wf_id), "--table").stdout
    logs = ok_json(cli(api, "logs", str(wf_id), ex, "step2"))
    assert [line["message"] for line in logs["logs"]] == ["from-params"]
    assert logs["nextToken"] is None and logs["stepRunStatus"] == "Success"
    follow = cli(api, "logs", str(wf_id), ex, "step1", "--follow")
    assert follow.returncode == 0 and follow.stdout == "one\ntwo\n"
    saved = tmp_path / "saved.log"
    assert cli(api, "logs", str(wf_id), ex, "step1", "--save", str(saved)).returncode == 0
    assert saved.read_text() == "one\ntwo\n"

    long_id = ok_json(cli(api, "create", str(_file(tmp_path, definition("cli-stop", {
        "long": {"command": "sleep 120"}})))))["id"]
    run = ok_json(cli(api, "execute", str(long_id)))["executionId"]
    wait(client, long_id, run, {"Running"})
    assert ok_json(cli(api, "stop", str(long_id), run)) == {}
    assert wait(client, long_id, run, {"Stopped"})["status"] == "Stopped"
    client.close()


def _file(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(("args", "field"), [
    (["describe", "abc"], "ID"),
    (["describe", "0"], "ID"),
    (["list", "--status", "Sleeping"], "--status"),
    (["execution", "1", "not-a-uuid"], "EXEC"),
    (["execute", "1", "--step", "s:all"], "--step"),
    (["execute", "1", "--params", "{missing}"], "--params"),
    (["create", "{missing}"], "FILE"),
    (["create", "{list}"], "FILE"),
    (["create", "{nameless}"], "name"),
    (["create", "{badparent}"], "steps.s.parents"),
])
def test_cli_bad_input_exits_2_naming_the_field(api: Api, tmp_path: Path, args: list[str],
                                                field: str) -> None:
    files = {"{missing}": str(tmp_path / "missing.json"),
             "{list}": str(_file_text(tmp_path, "[1, 2]")),
             "{nameless}": str(_file(tmp_path, {"steps": {"s": {"command": "true"}}})),
             "{badparent}": str(_file(tmp_path, definition("bad", {
                 "s": {"command": "true", "parents": ["nobody"]}})))}
    r = cli(api, *[files.get(a, a) for a in args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert field in r.stderr and r.stdout == ""


def _file_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "text.json"
    path.write_text(text)
    return path


def test_cli_api_errors_and_daemon_lookup_exit_1_or_2(api: Api, tmp_path: Path) -> None:
    catalogue = cli(api, "create", str(_file(tmp_path, {
        "name": "unknown-image", "steps": {"s": {"type": "standard", "imageId": 999,
                                                 "imageVersionId": 9, "command": "true"}}})))
    assert catalogue.returncode == 1 and "steps.s.imageId" in catalogue.stderr
    no_token = cli(api, "resources", env={"AKOBRIDGE_TOKEN": ""})
    assert no_token.returncode == 1 and "HTTP 401" in no_token.stderr
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    with_file = cli(api, "resources", "--token-file", str(token_file),
                    env={"AKOBRIDGE_TOKEN": ""}, server=True)
    assert with_file.returncode == 0
    nobody = subprocess.run([sys.executable, "-m", "bridge", "--state-dir",
                             str(tmp_path / "empty"), "workflows", "list"],
                            capture_output=True, text=True, cwd=REPO)
    assert nobody.returncode == 2 and "--server" in nobody.stderr
    dead = cli(api, "list", "--server", "http://127.0.0.1:9")
    assert dead.returncode == 1 and "no reply" in dead.stderr
