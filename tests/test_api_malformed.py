"""Malformed requests against a real ``akobridge serve``: every one gets a 4xx (never a 5xx) with
a JSON ``{error, detail: [{field, message}]}`` naming the field at fault, the daemon stays
healthy, and the store holds exactly the workflows of the valid requests sent in between."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import Daemon, running_daemon

MAX_BODY = 64 * 1024
INTAKE = ["/workflows", "/akoflow-server/workflow/", "/akoflow-api/workflows/"]


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def spec(name: str = "name: ok\n", runtime: str = "local", extra: str = "",
         activity: str = "") -> str:
    """A one-activity workflow on the local cluster, with ``extra`` spec lines and
    ``activity`` lines added to its activity."""
    return (f"{name}spec:\n  runtime: {runtime}\n{extra}  activities:\n"
            f"    - name: a\n      run: 'true'\n{activity}")


CYCLE = """\
name: cyclic
spec:
  runtime: local
  activities:
    - name: a
      run: 'true'
      dependsOn: [b]
    - name: b
      run: 'true'
      dependsOn: [a]
"""
VALID = """\
name: valid-{n}
spec:
  runtime: local
  activities:
    - name: first
      run: 'true'
    - name: second
      run: 'true'
      dependsOn: [first]
"""
VALID_ACTIVITIES = 2


@dataclass
class Case:
    """One request and what must come back: ``status`` (None: any 4xx) and ``names``, a
    fragment of some detail item's ``field`` (None: not checked)."""

    label: str
    method: str
    path: str
    status: int | None = None
    names: str | None = None
    kwargs: dict[str, Any] = dc_field(default_factory=dict)


def _json(label: str, path: str, body: object, status: int | None, fld: str | None,
          **kw: Any) -> Case:
    return Case(label, "POST", path, status, fld, {"json": body, **kw})


def _raw(label: str, path: str, content: bytes, ctype: str | None, status: int | None,
         fld: str | None) -> Case:
    headers = {"content-type": ctype} if ctype else {}
    return Case(label, "POST", path, status, fld, {"content": content, "headers": headers})


def intake_cases(path: str) -> list[Case]:
    """Bad bodies for one intake path (the same list for each)."""
    wf = "workflow"
    ssh = str(Path.home() / ".ssh")
    hook = "  webhooks:\n    - name: h\n      url: {}\n"
    return [
        _raw("bad JSON", path, b"{", "application/json", 400, "body"),
        _raw("JSON missing value", path, b'{"workflow": }', "application/json", 400, "body"),
        _raw("JSON trailing garbage", path, b'{"workflow": "eA=="} x', "application/json",
             400, "body"),
        _raw("JSON not UTF-8", path, b'\xff\xfe{"workflow": 1}', "application/json", None,
             None),
        _raw("empty body, JSON type", path, b"", "application/json", 422, "body"),
        _raw("empty body, no type", path, b"", None, 422, "body"),
        _raw("text/plain", path, json.dumps({wf: b64(spec())}).encode(), "text/plain", None,
             None),
        _raw("form-encoded", path, b"workflow=abc", "application/x-www-form-urlencoded", 422,
             None),
        _raw("multipart", path, b"--x\r\nContent-Disposition: form-data; name=\"workflow\""
             b"\r\n\r\nabc\r\n--x--\r\n", "multipart/form-data; boundary=x", 422, None),
        _raw("YAML body, not JSON", path, spec().encode(), "application/json", 400, "body"),
        _json("JSON list", path, [b64(spec())], 422, "body"),
        _json("JSON string", path, b64(spec()), 422, "body"),
        _json("JSON null", path, None, 422, "body"),
        _json("workflow missing", path, {}, 422, wf),
        _json("workflow misspelt", path, {"Workflow": b64(spec())}, 422, wf),
        _json("workflow null", path, {wf: None}, 422, wf),
        _json("workflow number", path, {wf: 42}, 422, wf),
        _json("workflow list", path, {wf: [b64(spec())]}, 422, wf),
        _json("workflow object", path, {wf: {"name": "x"}}, 422, wf),
        _json("workflow bool", path, {wf: True}, 422, wf),
        _json("base64 bad padding", path, {wf: "bmFtZTogeA"}, 400, wf),
        _json("base64 non-alphabet", path, {wf: "!!!!$$$$"}, 400, wf),
        _json("base64url alphabet", path, {wf: "-_-_"}, 400, wf),
        _json("base64 newline inside", path, {wf: "bmFt\nZTog"}, 400, wf),
        _json("base64 whitespace only", path, {wf: "   \n\t "}, 422, wf),
        _json("base64 empty", path, {wf: ""}, 422, wf),
        _json("base64 of non-UTF-8", path, {wf: b64(b"\xff\xfe\x00name")}, 400, wf),
        _json("base64 of invalid YAML", path, {wf: b64("name: [unclosed\n")}, 422, wf),
        _json("base64 of tabbed YAML", path, {wf: b64("name: x\n\tspec: 1\n")}, 422, wf),
        _json("base64 of NUL in YAML", path, {wf: b64("name: a\x00\n")}, 422, wf),
        _json("YAML is a list", path, {wf: b64("- a\n- b\n")}, 422, wf),
        _json("YAML is a scalar", path, {wf: b64("hello\n")}, 422, wf),
        _json("spec without name", path, {wf: b64(spec(name=""))}, 422, "name"),
        _json("spec without activities", path,
              {wf: b64("name: x\nspec:\n  runtime: local\n")}, 422, "activities"),
        _json("bad cpuLimit", path, {wf: b64(spec(activity="      cpuLimit: lots\n"))}, 422,
              "cpuLimit"),
        _json("negative cpuLimit", path, {wf: b64(spec(activity="      cpuLimit: -1\n"))},
              422, "cpuLimit"),
        _json("cyclic dependsOn", path, {wf: b64(CYCLE)}, 422, "dependsOn"),
        _json("unknown dependsOn", path,
              {wf: b64(spec(activity="      dependsOn: [nosuch]\n"))}, 422, "dependsOn"),
        _json("unknown activity field", path,
              {wf: b64(spec(activity="      cpulimit: 2\n"))}, 422, "cpulimit"),
        _json("unknown runtime", path, {wf: b64(spec(runtime="nosuch"))}, 422,
              "spec.runtime"),
        _json("unknown runtime in body", path, {wf: b64(spec()), "runtime": "nosuch"}, 422,
              "spec.runtime"),
        _json("runtime not a string", path, {wf: b64(spec()), "runtime": 5}, 422, "runtime"),
        _json("webhook to cloud metadata", path,
              {wf: b64(spec(extra=hook.format("http://169.254.169.254/latest/meta-data")))},
              422, "spec.webhooks[0].url"),
        _json("webhook to link-local v4", path,
              {wf: b64(spec(extra=hook.format("http://169.254.10.10/x")))}, 422,
              "spec.webhooks[0].url"),
        _json("webhook to link-local v6", path,
              {wf: b64(spec(extra=hook.format("http://[fe80::1]/x")))}, 422,
              "spec.webhooks[0].url"),
        _json("staging /etc", path, {wf: b64(spec(extra="  volumes: ['/etc:/x']\n"))}, 422,
              "spec.volumes[0]"),
        _json("staging ~/.ssh", path,
              {wf: b64(spec(extra=f"  volumes: ['{ssh}:/x']\n"))}, 422, "spec.volumes[0]"),
        _json("body over max_body", path, {wf: "A" * (MAX_BODY + 16)}, 413, "body"),
        Case("chunked body over max_body", "POST", path, 413, "body",
             {"content": iter([b'{"workflow": "', b"A" * (MAX_BODY + 16), b'"}']),
              "headers": {"content-type": "application/json"}}),
        Case("wrong method", "GET" if path == "/akoflow-server/workflow/" else "DELETE",
             path, 405, None),
    ]


BIG = str(10**30)
IDS = [BIG, str(2**63), "-1", "0", "abc", "1.5", "1e3", "%00"]


def path_cases() -> list[Case]:
    out: list[Case] = []
    for i in IDS:
        for tmpl in ("/workflows/{}", "/akoflow-api/workflows/{}/", "/workflows/{}/artifacts"):
            out.append(Case(f"id {i}", "GET", tmpl.format(i), 422, "workflow_id"))
        out.append(Case(f"cancel id {i}", "POST", f"/workflows/{i}/cancel", 422, "workflow_id"))
    for i in (BIG, "-1", "abc"):
        out += [
            Case(f"retry id {i}", "POST", f"/workflows/{i}/retry", 422, "workflow_id"),
            Case(f"logs id {i}", "GET", f"/workflows/{i}/activities/a/logs", 422,
                 "workflow_id"),
            Case(f"download id {i}", "GET", f"/workflows/{i}/artifacts/download?path=x", 422,
                 "workflow_id"),
            Case(f"redeliver id {i}", "POST", f"/webhooks/dead/{i}/redeliver", 422,
                 "delivery_id"),
            Case(f"events workflow={i}", "GET", f"/events?workflow={i}", 422, "workflow"),
        ]
    for q, fld in [(f"limit={BIG}", "limit"), ("limit=0", "limit"), ("limit=-5", "limit"),
                   ("limit=abc", "limit"), (f"offset={BIG}", "offset"), ("offset=-1", "offset"),
                   ("offset=1.5", "offset"), ("state=bogus", "state"), ("state=", "state"),
                   ("since=notadate", "since"), ("until=2024-13-45", "until"),
                   ("since=2024-02-30T00:00:00", "since"), (f"since={BIG}", "since"),
                   (f"name={'n' * 300}", "name")]:
        out.append(Case(f"/workflows?{q}", "GET", f"/workflows?{q}", 422, fld))
    for q, fld in [(f"limit={BIG}", "limit"), ("limit=0", "limit"), ("offset=-1", "offset"),
                   (f"offset={BIG}", "offset"), ("offset=x", "offset")]:
        out.append(Case(f"engine list ?{q}", "GET", f"/akoflow-api/workflows/?{q}", 422, fld))
        out.append(Case(f"dead letters ?{q}", "GET", f"/webhooks/dead?{q}", 422, fld))
    out += [
        Case("empty download path", "GET", "/workflows/1/artifacts/download?path=", 422,
             "path"),
        Case("missing download path", "GET", "/workflows/1/artifacts/download", 422, "path"),
        Case("unknown workflow", "GET", "/workflows/999999", 404, None),
        Case("unknown engine workflow", "GET", "/akoflow-api/workflows/999999/", 404, None),
        Case("cancel unknown workflow", "POST", "/workflows/999999/cancel", 404, None),
        Case("retry unknown workflow", "POST", "/workflows/999999/retry", 404, None),
        Case("redeliver unknown", "POST", "/webhooks/dead/999999/redeliver", 404,
             "delivery_id"),
    ]
    for method, path, status in [
            ("POST", "/healthz", 405), ("POST", "/readyz", 405), ("POST", "/metrics", 405),
            ("DELETE", "/workflows", 405), ("PUT", "/workflows/1", 405),
            ("GET", "/workflows/1/cancel", 405), ("POST", "/events", 405),
            ("GET", "/nope", 404), ("GET", "/workflows/1/nope", 404),
            ("POST", "/akoflow-api/workflow/", 404), ("POST", "/akoflow-server/workflows/", 404),
            ("GET", "/workflows/..%2F..%2Fetc%2Fpasswd", 404)]:
        out.append(Case(f"{method} {path}", method, path, status))
    return out


def workflow_cases(wf_id: int) -> list[Case]:
    """Requests about an existing workflow that are wrong in their activity or query."""
    base = f"/workflows/{wf_id}"
    return [
        Case("unknown activity logs", "GET", f"{base}/activities/nosuch/logs", 404, "name"),
        Case("activity name too long", "GET", f"{base}/activities/{'x' * 300}/logs", 422,
             "name"),
        Case("bad stream", "GET", f"{base}/activities/first/logs?stream=xx", 422, "stream"),
        Case("stream upper case", "GET", f"{base}/activities/first/logs?stream=OUT", 422,
             "stream"),
        Case("bad log offset", "GET", f"{base}/activities/first/logs?offset=-1", 422, "offset"),
        Case("huge log offset", "GET", f"{base}/activities/first/logs?offset={BIG}", 422,
             "offset"),
        Case("attempt 0", "GET", f"{base}/activities/first/logs?attempt=0", 422, "attempt"),
        Case("attempt not int", "GET", f"{base}/activities/first/logs?attempt=x", 422,
             "attempt"),
        Case("unknown attempt", "GET", f"{base}/activities/first/logs?attempt=9999", 404,
             "attempt"),
        Case("log limit 0", "GET", f"{base}/activities/first/logs?limit=0", 422, "limit"),
        Case("cancel unknown activity", "POST", f"{base}/cancel", 404, "name",
             {"json": {"activities": ["nosuch"]}}),
        Case("cancel activities not a list", "POST", f"{base}/cancel", 422, "activities",
             {"json": {"activities": "first"}}),
        Case("cancel empty activity name", "POST", f"{base}/cancel", 422, "activities",
             {"json": {"activities": [""]}}),
        Case("cancel bad JSON", "POST", f"{base}/cancel", 400, "body",
             {"content": b"{", "headers": {"content-type": "application/json"}}),
        Case("download NUL path", "GET", f"{base}/artifacts/download?path=a%00b", 422, "path"),
    ]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("malformed"),
                        {"api": {"max_body": MAX_BODY}}) as d:
        yield d


def check(client: httpx.Client, case: Case) -> str | None:
    """What is wrong with the reply to ``case`` (None: it is right)."""
    resp = client.request(case.method, case.path, **case.kwargs)
    where = f"{case.label}: {case.method} {case.path[:80]} -> {resp.status_code}"
    if not 400 <= resp.status_code < 500:
        return f"{where} (not a 4xx): {resp.text[:300]}"
    if case.status is not None and resp.status_code != case.status:
        return f"{where} (expected {case.status}): {resp.text[:300]}"
    try:
        body = resp.json()
    except ValueError:
        return f"{where}: not JSON: {resp.text[:300]}"
    if not (isinstance(body, dict) and set(body) == {"error", "detail"}
            and isinstance(body["error"], str) and body["error"]
            and isinstance(body["detail"], list)
            and all(isinstance(d, dict) and isinstance(d.get("field"), str)
                    and isinstance(d.get("message"), str) and d["message"]
                    for d in body["detail"])):
        return f"{where}: not {{error, detail: [{{field, message}}]}}: {body}"
    if case.names is not None and not any(case.names in d["field"] for d in body["detail"]):
        return f"{where}: no detail names {case.names!r}: {body}"
    return None


def submit_valid(client: httpx.Client, n: int, path: str) -> int:
    resp = client.post(path, json={"workflow": b64(VALID.format(n=n))})
    assert resp.status_code in (200, 201), resp.text
    body = resp.json()
    return int(body["id"] if "id" in body else body["workflow_id"])


def test_malformed_requests_get_4xx_naming_the_field(daemon: Daemon) -> None:
    """>= 100 malformed requests on every surface; interleaved valid ones are stored exactly,
    the malformed ones leave nothing behind."""
    cases = [c for p in INTAKE for c in intake_cases(p)] + path_cases()
    failures: list[str] = []
    valid: list[int] = []
    with httpx.Client(base_url=daemon.url, timeout=15) as client:
        for i, path in enumerate(INTAKE):
            valid.append(submit_valid(client, i, path))
        cases += workflow_cases(valid[0])
        assert len(cases) >= 100
        for n, case in enumerate(cases):
            problem = check(client, case)
            if problem:
                failures.append(problem)
            if n % 40 == 39:  # valid requests between the bad ones
                valid.append(submit_valid(client, len(valid), INTAKE[n % 3]))
        assert not failures, f"{len(failures)} of {len(cases)} wrong:\n" + "\n".join(failures)

        assert daemon.proc.poll() is None
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        listed = client.get("/workflows", params={"limit": 1000}).json()
        assert listed["total"] == len(valid)
        assert sorted(w["id"] for w in listed["items"]) == sorted(valid)
        assert {w["name"] for w in listed["items"]} == {f"valid-{n}" for n in range(len(valid))}
    db = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
    try:
        workflows = db.execute("SELECT count(*) FROM workflows").fetchone()[0]
        activities = db.execute("SELECT count(*) FROM activities").fetchone()[0]
    finally:
        db.close()
    assert (workflows, activities) == (len(valid), len(valid) * VALID_ACTIVITIES)
