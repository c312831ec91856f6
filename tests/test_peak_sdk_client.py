"""The REAL peak-sdk 1.29.0 client against a real ``akobridge serve`` with a token: every call
of seeds/peak-workflows-sdk.txt with the seed's bodies as written (tests/peak_sdk/seed_calls.py,
run in peak-sdk's own virtualenv, made once and reused), pointed at the daemon by
bridge/peak/sdk.py's shim; its telemetry reaches the daemon and nothing else is looked up.
Also the signed ``downloadUrl`` links: no token needed, forged or expired ones are 403, the
link key survives a restart, and nothing else under the link prefix is public."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import Daemon, running_daemon
from test_peak_definition import CRON, MANUAL, PATCH_BODY, SEED, UPDATED, WEBHOOK
from test_peak_definitions_api import BASE, SHIPPED_PEAK, TOKEN

from bridge.peak import signed

PEAK_SDK = "1.29.0"
VENV = Path(os.environ.get("AKB_PEAK_SDK_VENV", "/var/tmp/akb-peak-sdk-venv"))
SCRIPT = Path(__file__).resolve().parent / "peak_sdk" / "seed_calls.py"
LOG_LINES = [f"peak-log-{i}" for i in range(1, 5)]
LOGS_BODY = {"name": "logs-workflow", "steps": {
    "talk": {"type": "standard", "imageId": 123, "imageVersionId": 1,
             "resources": {"instanceTypeId": 21},
             "command": "for i in 1 2 3 4; do echo peak-log-$i; sleep 0.4; done"},
    "wait": {"type": "standard", "imageId": 123, "imageVersionId": 1,
             "resources": {"instanceTypeId": 21}, "command": "sleep 60", "parents": ["talk"]}}}


def seed_execute_body() -> dict[str, Any]:
    """The seed's ``body = {...}`` for execute_workflow (the one without an annotation)."""
    found = re.findall(r"^body = (\{.*?^\})$", SEED.read_text(), re.M | re.S)
    assert len(found) == 1, "the seed should hold one execute body"
    body: dict[str, Any] = ast.literal_eval(found[0])
    return body


def _installed(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-c", "import importlib.metadata as m, "
                        "peak.resources.workflows; print(m.version('peak-sdk'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode:
        pytest.fail(f"{what} failed ({' '.join(cmd)}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def peak_sdk_python() -> Path:
    """The python of a virtualenv holding peak-sdk==1.29.0: reused when it has that version,
    else made afresh (``python -m venv`` + pip from the package index this machine uses).
    A failure is a test failure naming the step, never a skip."""
    if sys.version_info >= (3, 13):
        pytest.fail("peak-sdk 1.29 needs Python < 3.13 for its virtualenv")
    python = VENV / "bin" / "python"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if _installed(python) == PEAK_SDK:
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(VENV)],
             "making peak-sdk's virtualenv (needs Python's venv module and ensurepip)")
        _run([str(python), "-m", "pip", "install", "--quiet", f"peak-sdk=={PEAK_SDK}"],
             f"installing peak-sdk=={PEAK_SDK} into {VENV}")
        got = _installed(python)
        if got != PEAK_SDK:
            pytest.fail(f"{VENV} holds peak-sdk {got}, not {PEAK_SDK}")
    return python


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that wants a token on its loopback listener too (so the bare download is
    really tokenless), with the shipped catalogue."""
    tmp = tmp_path_factory.mktemp("peak-sdk")
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tokens.chmod(0o600)
    secrets = tmp / "peak.secrets"  # the seed's steps name secret-1, secret-2 and github
    secrets.write_text("secret-1=one\nsecret-2=two\ngithub=gh-token\n")
    secrets.chmod(0o600)
    with running_daemon(tmp, {"api": {"token_file": str(tokens),
                                      "allow_loopback_without_token": False},
                              "peak": {**SHIPPED_PEAK, "secrets_file": str(secrets)}}) as d:
        yield d


def _metric(daemon: Daemon, route: str, method: str) -> float:
    text = httpx.get(f"{daemon.url}/metrics", headers={"Authorization": TOKEN}).text
    pattern = (rf'^akobridge_api_requests_total\{{[^}}]*method="{method}"[^}}]*'
               rf'route="{re.escape(route)}"[^}}]*\}} (\S+)$')
    return sum(float(v) for v in re.findall(pattern, text, re.M))


@pytest.fixture(scope="module")
def results(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the seed's calls once with the real client; its JSON record of every outcome."""
    python = peak_sdk_python()
    work = tmp_path_factory.mktemp("peak-sdk-client")
    bodies = {"cron": CRON[0], "webhook": WEBHOOK[0], "manual": MANUAL[0],
              "updated": UPDATED[0], "patch": PATCH_BODY[0], "cron_again": CRON[1],
              "updated_again": UPDATED[1], "execute": seed_execute_body(), "logs": LOGS_BODY}
    (work / "bodies.json").write_text(json.dumps(bodies))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PEAK", "PYTHON", "VIRTUAL_ENV")) and k != "API_KEY"}
    env.update({"PEAK_AUTH_TOKEN": TOKEN, "STAGE": "prod", "NO_PROXY": "*", "HOME": str(work)})
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(proxy, None)
    out = work / "out.json"
    r = subprocess.run([str(python), str(SCRIPT), daemon.url, str(work / "bodies.json"),
                        str(out), str(work)], capture_output=True, text=True, env=env,
                       cwd=work, timeout=600)
    assert r.returncode == 0 and out.exists(), f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    got: dict[str, Any] = json.loads(out.read_text())
    got["_stderr"] = r.stderr
    return got


def ok(results: dict[str, Any], name: str) -> Any:
    outcome = results[name]
    assert "ok" in outcome, f"{name}: {outcome}"
    return outcome["ok"]


def error(results: dict[str, Any], name: str) -> tuple[str, str]:
    outcome = results[name]
    assert "error" in outcome, f"{name} should have failed: {outcome}"
    return outcome["error"], outcome["message"]


def test_creates_describe_and_lists(results: dict[str, Any]) -> None:
    ids = [ok(results, n)["id"] for n in ("create_cron", "create_webhook", "create_manual")]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 3
    webhook = ok(results, "create_webhook")["triggers"][0]["webhook"]
    assert re.fullmatch(r"[0-9a-f-]{36}", webhook)
    # the seed's own filters match nothing here (lastModifiedBy is the daemon's user)
    assert error(results, "list_seed_filters")[0] == "StopIteration"
    iterated = ok(results, "list_iterated")  # page_size=1: the client walks every page
    assert [w["name"] for w in iterated] == ["cron-workflow", "webhook-workflow",
                                             "manual-workflow"]
    assert ok(results, "list_first_of_iterator")["id"] == ids[0]
    manual = ok(results, "describe_manual")
    assert manual["id"] == ids[2] and set(manual) >= {
        "id", "name", "createdAt", "updatedAt", "status", "steps", "lastExecution",
        "triggers", "watchers", "tags"}


def test_update_patch_and_create_or_update(results: dict[str, Any]) -> None:
    cron_id, manual_id = ok(results, "create_cron")["id"], ok(results, "create_manual")["id"]
    assert ok(results, "update_manual")["id"] == manual_id
    patched = ok(results, "describe_after_patch_args")
    assert patched["name"] == "updated-workflow"
    step1, step2 = patched["steps"]["step1"], patched["steps"]["step2"]
    assert (step1["imageId"], step1["imageVersionId"], step1["resources"]["instanceTypeId"]) \
        == (100, 100, 23)
    assert (step2["imageId"], step2["resources"]["instanceTypeId"]) == (456, 21)  # not named
    assert step1["parameters"]["env"] == [{"key": "value"}]
    # As written the seed gives cron-workflow the name manual-workflow took: names are unique.
    kind, message = error(results, "patch_via_body")
    assert kind == "ConflictException" and "updated-workflow" in message
    ok(results, "patch_via_body_own_name")
    cron = ok(results, "describe_after_patch_body")
    assert cron["name"] == "cron-workflow" and set(cron["steps"]) == {"stepName", "step1",
                                                                      "step2"}
    assert cron["steps"]["step2"]["resources"] == {"instanceTypeId": 22, "storage": "20GB"}
    assert cron["steps"]["step1"]["repository"]["url"] == "https://github.com/org/repo"
    assert ok(results, "create_or_update_cron")["id"] == cron_id  # matched by exact name
    assert ok(results, "create_or_update_updated")["id"] == cron_id
    assert ok(results, "describe_paused") == "Paused"
    assert ok(results, "describe_resumed") == "Available"
    assert ok(results, "pause") == {} and ok(results, "resume") == {}


def test_executions_details_and_listing(results: dict[str, Any]) -> None:
    first = ok(results, "execute_plain")["executionId"]
    second = ok(results, "execute_body")["executionId"]
    assert re.fullmatch(r"[0-9a-f-]{36}", first) and first != second
    assert ok(results, "list_executions_seed") == []  # the seed's 2024 window
    listed = ok(results, "list_executions_all")  # page_size=1: walked page by page
    assert {e["executionId"] for e in listed} == {first, second}
    details = ok(results, "details_manual")
    assert details["executionId"] == second
    assert {s["name"] for s in details["steps"]} <= {"step1", "step2"}
    assert details["status"] in {"Running", "Failed", "Success"}


def test_logs_page_with_next_token_and_save_to_a_file(results: dict[str, Any]) -> None:
    pages = results["logs_pages"]
    assert len(pages) >= 2 and pages[-1]["nextToken"] is None
    assert pages[0]["nextToken"] is not None  # the step was still writing
    messages = [line["message"] for page in pages for line in page["logs"]]
    assert messages == LOG_LINES
    assert pages[-1]["stepRunStatus"] == "Success"
    assert ok(results, "logs_save") is None
    assert results["logs_saved_text"] == "".join(f"{line}\n" for line in LOG_LINES)
    steps = {s["name"]: s for s in ok(results, "logs_details")["steps"]}
    assert steps["talk"]["status"] == "Success" and steps["talk"]["children"] == ["wait"]


def test_resources_and_deletes(results: dict[str, Any]) -> None:
    resources = ok(results, "list_resources")
    assert {r["id"] for r in resources} >= {21, 22, 23}
    assert set(resources[0]) == {"id", "cpu", "memory", "gpu", "gpuMemory"}
    assert set(ok(results, "get_default_resource")) == {"instanceTypeId", "storage"}
    assert error(results, "delete_seed_literal")[0] == "NotFoundException"
    assert ok(results, "delete_webhook") == {}
    assert error(results, "describe_deleted")[0] == "NotFoundException"
    assert error(results, "delete_running")[0] == "ConflictException"


def test_telemetry_reached_the_daemon_and_nothing_else(results: dict[str, Any],
                                                       daemon: Daemon) -> None:
    assert results["lookups"] and set(results["lookups"]) <= {"127.0.0.1"}, results["lookups"]
    assert set(results["connects"]) <= {"127.0.0.1"}, results["connects"]
    calls = sum(1 for k, v in results.items() if isinstance(v, dict) and ("ok" in v or (
        "error" in v and v["error"] != "StopIteration")))
    posted = _metric(daemon, "/resource-usage/api/v1/telemetry", "POST")
    assert posted >= calls, (posted, calls)
    assert _metric(daemon, "/tenant-management/api/v1/external/tenants/tenant-metadata",
                   "GET") >= 1


# -- the signed links themselves (plain HTTP, no peak-sdk) ------------------------------------


def _download_url(daemon: Daemon, wf_id: int, ex_id: str, step: str) -> str:
    r = httpx.get(f"{daemon.url}{BASE}/workflows/{wf_id}/executions/{ex_id}/logs/download",
                  params={"stepName": step}, headers={"Authorization": TOKEN})
    assert r.status_code == 200, r.text
    url: str = r.json()["downloadUrl"]
    return url


def _finished_execution(daemon: Daemon, name: str) -> tuple[int, str]:
    auth = {"Authorization": TOKEN}
    body = {"name": name, "steps": {"say": {
        "type": "standard", "imageId": 123, "imageVersionId": 1,
        "resources": {"instanceTypeId": 21}, "command": "echo signed-hello"}}}
    wf_id = httpx.post(f"{daemon.url}{BASE}/workflows/", json=body, headers=auth).json()["id"]
    ex_id = httpx.post(f"{daemon.url}{BASE}/workflows/{wf_id}/execute", json={},
                       headers=auth).json()["executionId"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = httpx.get(f"{daemon.url}{BASE}/workflows/{wf_id}/executions/{ex_id}",
                        headers=auth).json()
        if got["status"] == "Success":
            return wf_id, ex_id
        time.sleep(0.2)
    raise AssertionError(f"execution {ex_id} did not succeed: {got}")


def test_signed_links_need_no_token_and_refuse_forgeries(daemon: Daemon) -> None:
    wf_id, ex_id = _finished_execution(daemon, "signed-links")
    url = _download_url(daemon, wf_id, ex_id, "say")
    assert url.startswith(f"{daemon.url}{BASE}/log-downloads/")
    r = httpx.get(url)
    assert r.status_code == 200 and r.text == "signed-hello\n"
    assert r.headers["content-type"].startswith("text/plain")
    token = url.rsplit("/", 1)[1]
    payload, _, sig = token.partition(".")
    forged = f"{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    for bad in (forged, "x", f"{payload}.", token + "x"):
        refused = httpx.get(f"{daemon.url}{BASE}/log-downloads/{bad}")
        assert refused.status_code == 403, (bad, refused.text)
        assert refused.json()["detail"][0]["field"] == "token"
    key_file = daemon.state / signed.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    expired = signed.sign(key, wf_id, ex_id, "say", now=time.time() - 3600)
    r = httpx.get(f"{daemon.url}{BASE}/log-downloads/{expired}")
    assert r.status_code == 403 and "expired" in r.json()["error"]
    other_step = signed.sign(key, wf_id, ex_id, "nope")
    assert httpx.get(f"{daemon.url}{BASE}/log-downloads/{other_step}").status_code == 404
    # only exactly one segment under the prefix is public; everything else wants the token
    for path in (f"{BASE}/log-downloads/{token}/x", f"{BASE}/log-downloads/",
                 f"{BASE}/workflows/{wf_id}", f"{BASE}/log-downloadsX/{token}"):
        assert httpx.get(f"{daemon.url}{path}").status_code == 401, path
    assert httpx.post(url).status_code == 401 and httpx.head(url).status_code == 401
    no_step = httpx.get(f"{daemon.url}{BASE}/workflows/{wf_id}/executions/{ex_id}/logs/download",
                        params={"stepName": "nope"}, headers={"Authorization": TOKEN})
    assert no_step.status_code == 404 and no_step.json()["detail"][0]["field"] == "stepName"


def test_the_link_key_survives_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tokens.chmod(0o600)
    config = {"api": {"token_file": str(tokens), "allow_loopback_without_token": False},
              "peak": SHIPPED_PEAK}
    with running_daemon(tmp_path, config) as first:
        wf_id, ex_id = _finished_execution(first, "restart-links")
        token = _download_url(first, wf_id, ex_id, "say").rsplit("/", 1)[1]
    with running_daemon(tmp_path, config) as second:
        r = httpx.get(f"{second.url}{BASE}/log-downloads/{token}")
        assert r.status_code == 200 and r.text == "signed-hello\n"


def test_sign_and_verify(tmp_path: Path) -> None:
    key = signed.load_key(tmp_path)
    assert signed.load_key(tmp_path) == key and len(key) == 32
    token = signed.sign(key, 7, "ex-1", "step/ü", now=1000)
    link = signed.verify(key, token, now=1000 + signed.TTL - 1)
    assert (link.workflow_id, link.execution_id, link.step) == (7, "ex-1", "step/ü")
    assert "/" not in token
    with pytest.raises(signed.LinkError, match="expired"):
        signed.verify(key, token, now=1000 + signed.TTL + 1)
    with pytest.raises(signed.LinkError, match="signature"):
        signed.verify(b"k" * 32, token, now=1000)
